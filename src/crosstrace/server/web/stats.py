"""Rate, errors and latency per service and operation, for ``/services`` and ``/map``.

The store answers trace searches and whole traces; these figures are computed
from the spans of the newest traces of the window, read through the same
search (and so the same scope) as every other page. A window holding more
traces than :data:`MAX_TRACES` is summarised from its newest ones, and the page
says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from crosstrace.server.model import STATUS_ERROR, SpanRecord, TracePage, TraceQuery

__all__ = ["MAX_TRACES", "OperationStats", "ServiceStats", "WindowStats", "window_stats"]

#: Traces read at most for one page of figures.
MAX_TRACES: Final = 500
_PAGE: Final = 200


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(slots=True)
class OperationStats:
    name: str
    durations: list[int] = field(default_factory=list)
    errors: int = 0

    @property
    def calls(self) -> int:
        return len(self.durations)

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def p(self, q: float) -> int:
        return percentile(sorted(self.durations), q)


@dataclass(slots=True)
class ServiceStats:
    name: str
    operations: dict[str, OperationStats] = field(default_factory=dict)
    #: spans that entered the service (a root, or a parent in another service)
    entries: int = 0
    entry_errors: int = 0
    #: spans without a parent in their trace: the requests the service took first
    roots: int = 0
    root_errors: int = 0

    @property
    def total(self) -> OperationStats:
        merged = OperationStats("(all)")
        for op in self.operations.values():
            merged.durations.extend(op.durations)
            merged.errors += op.errors
        return merged

    @property
    def entry_error_rate(self) -> float:
        return self.entry_errors / self.entries if self.entries else 0.0


@dataclass(slots=True)
class WindowStats:
    services: dict[str, ServiceStats]
    traces_read: int
    complete: bool  # every trace of the window was read
    seconds: float  # the window's length, for rates

    def rate_per_minute(self, calls: int) -> float:
        return calls * 60.0 / self.seconds if self.seconds > 0 else 0.0


def _add_trace(services: dict[str, ServiceStats], spans: Iterable[SpanRecord]) -> None:
    spans = list(spans)
    service_of = {s.span_id: s.service for s in spans}
    for span in spans:
        stats = services.get(span.service)
        if stats is None:
            stats = services[span.service] = ServiceStats(span.service)
        op = stats.operations.get(span.name)
        if op is None:
            op = stats.operations[span.name] = OperationStats(span.name)
        op.durations.append(span.duration_ns)
        error = span.status_code == STATUS_ERROR
        op.errors += error
        parent_service = service_of.get(span.parent_span_id) if span.parent_span_id else None
        if parent_service != span.service:
            stats.entries += 1
            stats.entry_errors += error
        if parent_service is None:
            stats.roots += 1
            stats.root_errors += error


def window_stats(
    search: Callable[[TraceQuery], TracePage],
    get_trace: Callable[[bytes], list[SpanRecord]],
    query: TraceQuery,
    seconds: float,
    max_traces: int = MAX_TRACES,
) -> WindowStats:
    """Figures over the newest traces matching *query* (its limit and cursor are
    replaced), at most *max_traces* of them."""
    services: dict[str, ServiceStats] = {}
    read = 0
    cursor: str | None = None
    complete = True
    while True:
        query.limit = min(_PAGE, max_traces - read)
        query.cursor = cursor
        page = search(query)
        for summary in page.traces:
            _add_trace(services, get_trace(summary.trace_id))
            read += 1
        cursor = page.next_cursor
        if cursor is None:
            break
        if read >= max_traces:
            complete = False
            break
    return WindowStats(services, read, complete, seconds)
