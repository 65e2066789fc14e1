"""The store interface. SQLite and PostgreSQL implement it, and one test suite
runs against both.

Writes are synchronous from the caller's view: when ``write_spans`` or
``write_logs`` returns, the data is committed (the ingest endpoint answers 200
only after that). Implementations batch several callers into one transaction.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from crosstrace.server.model import (
    DependencyEdge,
    LogQuery,
    LogRecord,
    SpanRecord,
    TracePage,
    TraceQuery,
    TraceSummary,
)

__all__ = ["Store", "open_store"]


class Store(abc.ABC):
    """A trace and log store."""

    @abc.abstractmethod
    def write_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Store *spans* (any traces, any order) and update the trace summaries."""

    @abc.abstractmethod
    def write_logs(self, logs: Sequence[LogRecord]) -> int:
        """Store *logs*; return how many were new (dedup keys already stored add nothing)."""

    @abc.abstractmethod
    def search_traces(self, query: TraceQuery) -> TracePage: ...

    @abc.abstractmethod
    def get_trace(self, trace_id: bytes) -> list[SpanRecord]:
        """Every span of the trace, ordered by start time; empty if unknown."""

    @abc.abstractmethod
    def get_trace_summary(self, trace_id: bytes) -> TraceSummary | None: ...

    @abc.abstractmethod
    def traces_for_request(self, request_id: str, limit: int = 100) -> list[TraceSummary]:
        """Traces that carry *request_id* as a global or a local id."""

    @abc.abstractmethod
    def search_logs(self, query: LogQuery) -> list[LogRecord]:
        """Matching logs in time order (oldest first)."""

    @abc.abstractmethod
    def services(self) -> list[str]: ...

    @abc.abstractmethod
    def operations(self, service: str) -> list[str]: ...

    @abc.abstractmethod
    def dependencies(self, start_ns: int | None, end_ns: int | None) -> list[DependencyEdge]:
        """Caller → callee service edges from parent/child spans in different services."""

    @abc.abstractmethod
    def apply_retention(self, max_age_ns: int | None, max_bytes: int | None = None) -> int:
        """Delete data older than *max_age_ns* (and, where supported, beyond a size);
        return the number of traces removed."""

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics``: spans, traces, logs, bytes on disk, ..."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush pending writes and close connections."""


def open_store(url: str) -> Store:
    """Open ``sqlite:///path`` or ``postgresql://...``."""
    if url.startswith("sqlite:"):
        from crosstrace.server.store.sqlite import SQLiteStore

        store: Store = SQLiteStore.from_url(url)
        return store
    if url.startswith(("postgresql:", "postgres:")):
        from crosstrace.server.store.postgres import PostgresStore

        store = PostgresStore.from_url(url)
        return store
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")
