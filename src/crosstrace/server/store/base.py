"""The store interface. SQLite and PostgreSQL implement it, and one test suite
runs against both.

Writes are handed to the store with ``submit_batch`` (spans as ingest decodes
them, see :mod:`crosstrace.server.batch`), ``submit_spans`` (records, converted to a batch) or
``submit_logs``, which return a future that completes once the data is committed
(the ingest endpoint answers 200 only after that; an asyncio caller awaits
``asyncio.wrap_future``).
Implementations batch several callers into one transaction. ``write_spans`` and
``write_logs`` are the blocking forms.

Every read takes a :class:`~crosstrace.server.scope.Scope` (default: everything)
and applies it inside its SQL: a trace out of scope is not found by id, not listed,
not counted and not paged over; services, operations and dependencies are those
of the traces in scope. A trace's owner (project, domain) is that of its root
span; a later batch cannot change it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from crosstrace.server.batch.scan import from_records
from crosstrace.server.batch.spanbatch import SpanBatch
from crosstrace.server.model import (
    AuditEvent,
    DependencyEdge,
    ErrorCause,
    LogQuery,
    LogRecord,
    SpanRecord,
    TracePage,
    TraceQuery,
    TraceSummary,
)
from crosstrace.server.scope import Scope
from crosstrace.server.store.causes import PendingTrace, SqlScope
from crosstrace.server.store.prepare import Compression, PreparedBatch

__all__ = ["RetentionPass", "Store"]


@dataclass(frozen=True, slots=True)
class RetentionPass:
    """What one retention pass deleted."""

    traces: int
    logs: int


class Store(abc.ABC):
    """A trace and log store."""

    @abc.abstractmethod
    def submit_batch(self, batch: SpanBatch | PreparedBatch) -> Future[None]:
        """Queue *batch* for storage and the trace summaries' update; the future
        completes when it is committed, or fails. A trace's spans that were stored
        before from an identical batch (a redelivery) are not stored again. A
        batch prepared elsewhere (:mod:`crosstrace.server.store.prepare`) should use
        :meth:`compression`."""

    def compression(self) -> Compression:
        """The dictionary a batch prepared outside the store compresses with."""
        return None

    def submit_spans(self, spans: Sequence[SpanRecord]) -> Future[None]:
        """Queue *spans* (any traces, any order), as :meth:`submit_batch` does; a
        record that cannot be stored (invalid ids) fails the future. Secrets in the
        records are masked first (in place)."""
        from crosstrace.server.redaction import default_redactor

        redactor = default_redactor()
        for span in spans:
            redactor.span(span)
        try:
            batch = from_records(spans)
        except ValueError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            return failed
        return self.submit_batch(batch)

    @abc.abstractmethod
    def submit_logs(self, logs: Sequence[LogRecord]) -> Future[int]:
        """Queue *logs*; the future gives how many were new once committed (a
        record whose dedup key is already stored adds nothing)."""

    def write_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Store *spans* and wait until they are committed."""
        self.submit_spans(spans).result()

    def write_logs(self, logs: Sequence[LogRecord]) -> int:
        """Store *logs*, wait until committed; return how many were new."""
        return self.submit_logs(logs).result()

    @abc.abstractmethod
    def search_traces(self, query: TraceQuery) -> TracePage: ...

    @abc.abstractmethod
    def get_trace(self, trace_id: bytes, scope: Scope = Scope.ALL) -> list[SpanRecord]:
        """Every span of the trace, ordered by start time; empty if unknown or
        out of *scope*."""

    @abc.abstractmethod
    def get_trace_summary(
        self, trace_id: bytes, scope: Scope = Scope.ALL
    ) -> TraceSummary | None: ...

    @abc.abstractmethod
    def traces_for_request(
        self, request_id: str, limit: int = 100, scope: Scope = Scope.ALL
    ) -> list[TraceSummary]:
        """Traces in *scope* that carry *request_id* as a global or a local id."""

    @abc.abstractmethod
    def search_logs(self, query: LogQuery) -> list[LogRecord]:
        """Matching logs in time order (oldest first)."""

    @abc.abstractmethod
    def services(self, scope: Scope = Scope.ALL) -> list[str]:
        """Service names of the stored spans (of the traces in *scope*)."""

    @abc.abstractmethod
    def operations(self, service: str, scope: Scope = Scope.ALL) -> list[str]: ...

    @abc.abstractmethod
    def dependencies(
        self, start_ns: int | None, end_ns: int | None, scope: Scope = Scope.ALL
    ) -> list[DependencyEdge]:
        """Caller → callee service edges from parent/child spans in different
        services (of the traces in *scope*)."""

    def append_audit(self, events: Sequence[AuditEvent]) -> Future[None]:
        """Queue audit events for storage (the caller need not wait). The SQL
        stores keep them; a store without an audit table fails the future."""
        failed: Future[None] = Future()
        failed.set_exception(NotImplementedError(f"{type(self).__name__} keeps no audit log"))
        return failed

    def read_audit(
        self, start_ns: int | None = None, who: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """Audit events, newest first."""
        raise NotImplementedError(f"{type(self).__name__} keeps no audit log")

    # -- the error index (see ``causes.py``) ----------------------------------

    def error_traces_to_analyse(
        self, start_ns: int | None, end_ns: int | None, limit: int = 1000
    ) -> list[PendingTrace]:
        """Error traces of the window the error index lacks or that changed since."""
        raise NotImplementedError

    def put_error_causes(self, causes: Sequence[ErrorCause]) -> None:
        """Store (or replace) the analysed root causes of these traces."""
        raise NotImplementedError

    def error_causes(
        self,
        start_ns: int | None,
        end_ns: int | None,
        *,
        service: str | None = None,
        project_id: str | None = None,
        group_id: str | None = None,
        scope: SqlScope | None = None,
        limit: int = 200_000,
    ) -> list[ErrorCause]:
        """Root causes of failed traces that started in the window, newest first."""
        raise NotImplementedError

    def prune_error_causes(self) -> int:
        """Drop root causes of traces retention removed; return how many."""
        raise NotImplementedError

    def operation_durations(
        self, service: str, operation: str, since_ns: int, max_traces: int = 10
    ) -> list[int]:
        """Durations of *operation*'s spans in the newest (at most *max_traces*)
        traces since *since_ns*: a cheap sample for its usual duration."""
        page = self.search_traces(
            TraceQuery(service=service, operation=operation, start_ns=since_ns, limit=max_traces)
        )
        out: list[int] = []
        for summary in page.traces:
            out.extend(
                s.duration_ns
                for s in self.get_trace(summary.trace_id)
                if s.service == service and s.name == operation
            )
        return out

    def retention_pass(self, max_age_ns: int | None, max_bytes: int | None = None) -> RetentionPass:
        """:meth:`apply_retention`, saying what it deleted (log records: 0 where the
        store does not count them)."""
        return RetentionPass(traces=self.apply_retention(max_age_ns, max_bytes), logs=0)

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
