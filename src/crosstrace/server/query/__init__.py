"""The query API: routes (:mod:`~crosstrace.server.query.api`) and the response
models they answer with (:mod:`~crosstrace.server.query.models`)."""
