"""The analysis as the pages show it: a trace's or a request's verdict, error groups.

Verdicts come from :mod:`crosstrace.server.analysis`, called here on the server
over the spans and log lines the page already read (through the viewer's
scope). Error groups are the root causes of the window's failed traces, grouped
by signature; a window with more failed traces than :data:`MAX_GROUPED_TRACES`
is grouped from its newest ones and the page says so. The UI never makes a
verdict up: when the analysis names no root cause, the page says that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from crosstrace.server.analysis import (
    Analysis,
    CauseRow,
    analyse_request,
    analyse_trace,
    group_causes,
    signature_of,
)
from crosstrace.server.analysis import Verdict as Outcome
from crosstrace.server.analysis.result import explain
from crosstrace.server.model import LogRecord, SpanRecord, TracePage, TraceQuery
from crosstrace.server.web.waterfall import Marks, first_line

__all__ = [
    "MAX_GROUPED_TRACES",
    "ErrorGroup",
    "Groups",
    "Step",
    "Verdict",
    "error_groups",
    "request_verdict",
    "trace_verdict",
]

#: Failed traces analysed at most for the error groups of one window.
MAX_GROUPED_TRACES: Final = 500
_PAGE: Final = 200


@dataclass(slots=True)
class Step:
    """One span of a verdict's chain, from the user-facing span down to the cause."""

    span_id: str
    service: str
    name: str
    error: str = ""


@dataclass(slots=True)
class Verdict:
    """What the analysis says about one trace or request."""

    outcome: str  # "error", "slow" or "ok"
    summary: str
    root_service: str = ""
    root_operation: str = ""
    exception_type: str = ""
    message: str = ""
    root_span_id: str | None = None
    trace_id: str | None = None
    chain: list[Step] = field(default_factory=list)
    consequences: list[str] = field(default_factory=list)

    def marks(self) -> Marks:
        return Marks(
            root_cause=self.root_span_id,
            chain=frozenset(s.span_id for s in self.chain),
            consequences=frozenset(self.consequences),
        )


@dataclass(slots=True)
class ErrorGroup:
    group_id: str
    count: int
    service: str
    exception_type: str
    message: str
    operation: str
    projects: list[str]
    series: list[int]
    sample_trace_id: str | None
    sample_request_id: str | None
    last_seen_ns: int


@dataclass(slots=True)
class Groups:
    groups: list[ErrorGroup]
    traces_read: int
    complete: bool
    #: trace id -> "service · ExceptionType" of each failed trace read
    causes: dict[bytes, str] = field(default_factory=dict)


def _verdict(analysis: Analysis, spans: Sequence[SpanRecord]) -> Verdict | None:
    root = analysis.root_cause
    if analysis.verdict is Outcome.OK:
        return Verdict("ok", "The request succeeded: no root cause to name.")
    if root is None:
        what = "failed" if analysis.verdict is Outcome.ERROR else "was slow"
        return Verdict(str(analysis.verdict), f"The request {what}; no span could be blamed.")
    by_id = {s.span_id: s for s in spans}
    chain = []
    for sid in analysis.chain:
        span = by_id.get(sid)
        if span is not None:
            error = first_line(span.status_message) if span.status_code == 2 else ""
            chain.append(Step(sid.hex(), span.service, span.name, error))
    kind = root.exception_type or ("slow" if analysis.verdict is Outcome.SLOW else "error")
    if analysis.verdict is Outcome.SLOW:
        summary = f"The request was slow: {root.service} · {root.name} — {explain(root.reason)}."
    else:
        summary = (
            f"The request failed: {kind} in {root.service} · {root.name} — {explain(root.reason)}."
        )
    return Verdict(
        outcome=str(analysis.verdict),
        summary=summary,
        root_service=root.service,
        root_operation=root.name,
        exception_type=root.exception_type,
        message=first_line(root.message) or (root.log.body if root.log else ""),
        root_span_id=root.span_id.hex() if root.span_id else None,
        trace_id=root.trace_id.hex() if root.trace_id else None,
        chain=chain,
        consequences=[c.span_id.hex() for c in analysis.consequences],
    )


def trace_verdict(spans: Sequence[SpanRecord], logs: Sequence[LogRecord]) -> Verdict | None:
    """The root cause of one trace."""
    return _verdict(analyse_trace(spans, logs), spans)


def request_verdict(
    traces: Sequence[Sequence[SpanRecord]], logs: Sequence[LogRecord], request_id: str
) -> Verdict | None:
    """The root cause of one request: its traces and its log lines (or its log
    lines alone)."""
    analysis = analyse_request(request_id, traces, logs)
    return _verdict(analysis, [s for spans in traces for s in spans])


def error_groups(
    search: Callable[[TraceQuery], TracePage],
    get_trace: Callable[[bytes], list[SpanRecord]],
    query: TraceQuery,
    start_ns: int,
    end_ns: int,
) -> Groups:
    """Error groups of the failed traces matching *query* (``error`` is set here;
    its limit and cursor are replaced), most frequent first."""
    query.error = True
    rows: list[CauseRow] = []
    requests: dict[bytes, str] = {}
    causes: dict[bytes, str] = {}
    read = 0
    cursor: str | None = None
    complete = True
    while True:
        query.limit = min(_PAGE, MAX_GROUPED_TRACES - read)
        query.cursor = cursor
        page = search(query)
        for summary in page.traces:
            read += 1
            analysis = analyse_trace(get_trace(summary.trace_id))
            root = analysis.root_cause
            if analysis.verdict is not Outcome.ERROR or root is None:
                continue
            rows.append(
                CauseRow(summary.trace_id, summary.start_ns, signature_of(root), summary.project_id)
            )
            kind = (root.exception_type or "error").rsplit(".", 1)[-1]
            causes[summary.trace_id] = f"{root.service} · {kind}"
            ids = summary.global_request_ids or summary.request_ids
            if ids:
                requests[summary.trace_id] = ids[0]
        cursor = page.next_cursor
        if cursor is None:
            break
        if read >= MAX_GROUPED_TRACES:
            complete = False
            break
    groups = []
    for g in group_causes(rows, start_ns, end_ns):
        sample = g.sample_trace_ids[0] if g.sample_trace_ids else None
        groups.append(
            ErrorGroup(
                group_id=g.group_id,
                count=g.count,
                service=g.signature.service,
                exception_type=g.signature.exception_type,
                message=g.signature.message,
                operation=g.signature.operation,
                projects=list(g.projects),
                series=[c for _, c in g.series],
                sample_trace_id=sample.hex() if sample else None,
                sample_request_id=requests.get(sample) if sample else None,
                last_seen_ns=g.last_seen_ns,
            )
        )
    return Groups(groups, read, complete, causes)
