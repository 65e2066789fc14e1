"""The analysis as the pages show it: a trace's or a request's verdict, error groups.

Everything comes from the query layer's :class:`~crosstrace.server.query.diagnose.Diagnoser`
(the one the API's ``/analysis`` and ``/errors`` routes use): the request
verdict and the error groups through its methods, the trace verdict from the
same rules over the spans and log lines the trace page already read (with the
same usual duration of the root operation, so the page and the API agree). The
UI never makes a verdict up: when the analysis names no root cause, the page
says that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crosstrace.server.analysis import Analysis, analyse_trace
from crosstrace.server.analysis import Verdict as Outcome
from crosstrace.server.analysis.result import explain
from crosstrace.server.model import LogRecord, SpanRecord
from crosstrace.server.scope import Scope
from crosstrace.server.web.waterfall import Marks, first_line

if TYPE_CHECKING:
    from crosstrace.server.query.diagnose import Diagnoser
    from crosstrace.server.store import Store

__all__ = [
    "ErrorGroup",
    "Groups",
    "Step",
    "Verdict",
    "error_groups",
    "request_verdict",
    "trace_verdict",
]


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
    #: trace id -> "service · ExceptionType" of each failed trace of the window
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
    kind = (root.exception_type or "error").rsplit(".", 1)[-1]
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


def trace_verdict(
    diagnoser: Diagnoser, spans: Sequence[SpanRecord], logs: Sequence[LogRecord]
) -> Verdict | None:
    """The root cause of one trace (whose spans and log lines the page read)."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id or s.parent_span_id not in ids]
    usual: dict[tuple[str, str], int] = {}
    if roots:
        root = max(roots, key=lambda s: s.duration_ns)
        usual = diagnoser.usual_durations([(root.service, root.name)])
    return _verdict(analyse_trace(spans, logs, usual=usual), spans)


def request_verdict(
    diagnoser: Diagnoser, request_id: str, scope: Scope = Scope.ALL
) -> Verdict | None:
    """The root cause of one request: its traces and its log lines (or its log
    lines alone) in *scope*; ``None`` when nothing is stored for it."""
    analysis = diagnoser.request(request_id, scope=scope)
    if analysis is None:
        return None
    spans = [s for tid in analysis.trace_ids for s in diagnoser.store.get_trace(tid, scope)]
    return _verdict(analysis, spans)


def _short(kind: str) -> str:
    return (kind or "error").rsplit(".", 1)[-1]


def error_groups(
    diagnoser: Diagnoser, store: Store, start_ns: int, end_ns: int, scope: Any
) -> Groups:
    """Error groups of the window from the error index, most frequent first."""
    found, start, end = diagnoser.groups(start_ns, end_ns, scope=scope)
    causes = {
        c.trace_id: f"{c.service} · {_short(c.exception_type)}"
        for c in store.error_causes(start, end, scope=scope)
        if c.group_id is not None
    }
    groups = []
    for g in found:
        sample = g.sample_trace_ids[0] if g.sample_trace_ids else None
        summary = store.get_trace_summary(sample, scope) if sample else None
        ids = (summary.global_request_ids or summary.request_ids) if summary else []
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
                sample_request_id=ids[0] if ids else None,
                last_seen_ns=g.last_seen_ns,
            )
        )
    return Groups(groups, causes)
