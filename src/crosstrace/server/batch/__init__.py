"""Span batches: the unit ingest hands to the store.

An OTLP request (or a list of records) becomes a
:class:`~crosstrace.server.batch.spanbatch.SpanBatch`, its spans grouped by trace
and kept as the protobuf bytes they arrived in. Both ingest and the store use it,
so it sits below them: this package imports only :mod:`crosstrace.server.model`.

- :mod:`~crosstrace.server.batch.values`: attribute values, limits, cleaning;
- :mod:`~crosstrace.server.batch.spanbatch`: the batch, and a group's stored payload;
- :mod:`~crosstrace.server.batch.scan`: protobuf requests and records into a batch.
"""
