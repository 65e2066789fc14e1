"""Ingest: OTLP over HTTP (:mod:`~crosstrace.server.ingest.http`) and RabbitMQ
(:mod:`~crosstrace.server.ingest.consume`), decoded from protobuf
(:mod:`~crosstrace.server.ingest.decode`) or OTLP/JSON
(:mod:`~crosstrace.server.ingest.json`), in decode worker processes when configured
(:mod:`~crosstrace.server.ingest.pool`), then handed to the store."""
