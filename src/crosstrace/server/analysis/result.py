"""What an analysis returns: typed records with one JSON form each.

The JSON form (``to_json``) is the API contract of
``GET /api/v1/traces/{trace_id}/analysis`` and
``GET /api/v1/requests/{request_id}/analysis``: ids are lowercase hex, times are
integer nanoseconds since the epoch, durations are nanoseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Analysis",
    "Candidate",
    "Consequence",
    "Evidence",
    "LogLine",
    "Reason",
    "SpanRef",
    "Verdict",
]


class Verdict(enum.StrEnum):
    """How the request ended: failed, succeeded slowly, or succeeded."""

    ERROR = "error"
    SLOW = "slow"
    OK = "ok"


class Reason(enum.StrEnum):
    """Why a span (or a log line) is named as a root-cause candidate."""

    #: The deepest failed element below the user-facing error; its callers only
    #: passed its error on.
    DEEPEST_ERROR = "deepest_error"
    #: A caller gave up (timeout); this callee was still running when it did and
    #: accounts for the time, even though its own status may be OK.
    MASKED_TIMEOUT = "masked_timeout"
    #: A call timed out with nothing recorded beneath it: the last element that
    #: can be seen (OSProfiler's "last traced element").
    NEVER_REPLIED = "never_replied"
    #: A slow request that did not fail: this span's own time (not its children's)
    #: makes up much of the critical path.
    SLOW_SELF_TIME = "slow_self_time"
    #: Known from log lines only: the earliest error in the deepest callee.
    LOG_ORIGIN = "log_origin"


_EXPLAIN = {
    Reason.DEEPEST_ERROR: "failed first, deepest in the call chain; its callers passed it on",
    Reason.MASKED_TIMEOUT: "its caller gave up waiting while it ran; it accounts for the time",
    Reason.NEVER_REPLIED: "the call timed out with nothing recorded beneath: last traced element",
    Reason.SLOW_SELF_TIME: "its own time makes up much of the request's critical path",
    Reason.LOG_ORIGIN: "earliest error logged by the deepest callee of the request",
}


def explain(reason: Reason) -> str:
    """One sentence an operator reads beside the reason code."""
    return _EXPLAIN[reason]


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value else None


@dataclass(slots=True)
class LogLine:
    """One log record shown as evidence (or as the origin of a logs-only request)."""

    time_ns: int
    service: str
    severity: str
    body: str
    logger: str = ""
    span_id: bytes | None = None
    trace_id: bytes | None = None
    request_id: str | None = None
    #: Where an imported line came from (``log.file.name`` / ``log.file.line``).
    source: str | None = None
    #: Services that logged the same message later up the call chain (collapsed).
    copies: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "time_ns": self.time_ns,
            "service": self.service,
            "severity": self.severity,
            "logger": self.logger,
            "body": self.body,
            "span_id": _hex(self.span_id),
            "trace_id": _hex(self.trace_id),
            "request_id": self.request_id,
            "source": self.source,
            "copies": list(self.copies),
        }


@dataclass(slots=True)
class SpanRef:
    """A span named by the analysis (chain member, last traced element)."""

    span_id: bytes
    service: str
    name: str
    kind: str
    start_ns: int
    end_ns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "span_id": self.span_id.hex(),
            "service": self.service,
            "name": self.name,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_ns": max(0, self.end_ns - self.start_ns),
        }


@dataclass(slots=True)
class Evidence:
    """What backs a candidate up."""

    kind: str = ""
    status_message: str = ""
    stacktrace: str = ""
    http_status: int | None = None
    duration_ns: int = 0
    #: Time the span spent itself on the critical path (slow requests).
    self_time_ns: int | None = None
    #: The operation's usual duration: p50 over the last day, when known.
    usual_duration_ns: int | None = None
    #: A database statement run by the candidate (folded into it from its span).
    db_statement: str | None = None
    db_span_id: bytes | None = None
    #: The caller that gave up (masked timeout) or whose call was never answered.
    timed_out_span_id: bytes | None = None
    #: Span ids from the user-facing error down to this candidate.
    chain: list[bytes] = field(default_factory=list)
    #: The request's log lines from this service near the span.
    logs: list[LogLine] = field(default_factory=list)

    @property
    def ratio_to_usual(self) -> float | None:
        if not self.usual_duration_ns or self.usual_duration_ns <= 0:
            return None
        return round(self.duration_ns / self.usual_duration_ns, 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status_message": self.status_message,
            "stacktrace": self.stacktrace,
            "http_status": self.http_status,
            "duration_ns": self.duration_ns,
            "self_time_ns": self.self_time_ns,
            "usual_duration_ns": self.usual_duration_ns,
            "ratio_to_usual": self.ratio_to_usual,
            "db_statement": self.db_statement,
            "db_span_id": _hex(self.db_span_id),
            "timed_out_span_id": _hex(self.timed_out_span_id),
            "chain": [s.hex() for s in self.chain],
            "logs": [line.to_json() for line in self.logs],
        }


@dataclass(slots=True)
class Candidate:
    """One root-cause candidate; ``span_id`` is ``None`` when known from logs only."""

    span_id: bytes | None
    service: str
    name: str
    reason: Reason
    exception_type: str = ""
    message: str = ""
    trace_id: bytes | None = None
    start_ns: int = 0
    end_ns: int = 0
    #: When it failed (the exception's time, else the span's end).
    failed_at_ns: int = 0
    evidence: Evidence = field(default_factory=Evidence)
    #: The originating log line (logs-only requests), else ``None``.
    log: LogLine | None = None

    @property
    def operation(self) -> str:
        return self.name

    def to_json(self) -> dict[str, Any]:
        from crosstrace.server.analysis.signature import signature_of

        sig = signature_of(self)
        return {
            "span_id": _hex(self.span_id),
            "trace_id": _hex(self.trace_id),
            "service": self.service,
            "name": self.name,
            "reason": str(self.reason),
            "explanation": explain(self.reason),
            "exception_type": self.exception_type,
            "message": self.message,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "failed_at_ns": self.failed_at_ns,
            "signature": sig.to_json(),
            "group_id": sig.group_id,
            "evidence": self.evidence.to_json(),
            "log": self.log.to_json() if self.log else None,
        }


@dataclass(slots=True)
class Consequence:
    """A failed span that is not a cause: it passed an error on, or it failed in
    the clean-up after the cause (``cause_span_id`` names the cause it follows)."""

    span_id: bytes
    service: str
    name: str
    why: str
    cause_span_id: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {
            "span_id": self.span_id.hex(),
            "service": self.service,
            "name": self.name,
            "why": self.why,
            "cause_span_id": _hex(self.cause_span_id),
        }


@dataclass(slots=True)
class Analysis:
    """The verdict on one trace or one request, with ranked candidates."""

    verdict: Verdict
    candidates: list[Candidate] = field(default_factory=list)
    #: Span ids from the user-facing span down to the root cause.
    chain: list[bytes] = field(default_factory=list)
    consequences: list[Consequence] = field(default_factory=list)
    last_traced_element: SpanRef | None = None
    #: Failed attempts followed by a successful retry: not causes.
    recovered: list[SpanRef] = field(default_factory=list)
    trace_id: bytes | None = None
    request_id: str | None = None
    trace_ids: list[bytes] = field(default_factory=list)
    start_ns: int = 0
    duration_ns: int = 0
    span_count: int = 0
    #: Notes on the input (cycles broken, parents missing, spans left out).
    notes: list[str] = field(default_factory=list)

    @property
    def root_cause(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def to_json(self) -> dict[str, Any]:
        root = self.root_cause
        out: dict[str, Any] = {}
        if self.request_id is not None:
            out["request_id"] = self.request_id
            out["trace_ids"] = [t.hex() for t in self.trace_ids]
        out["trace_id"] = _hex(self.trace_id)
        out.update(
            {
                "verdict": str(self.verdict),
                "root_cause": root.to_json() if root else None,
                "candidates": [c.to_json() for c in self.candidates],
                "chain": [s.hex() for s in self.chain],
                "consequences": [c.to_json() for c in self.consequences],
                "last_traced_element": (
                    self.last_traced_element.to_json() if self.last_traced_element else None
                ),
                "recovered": [r.to_json() for r in self.recovered],
                "start_ns": self.start_ns,
                "duration_ns": self.duration_ns,
                "span_count": self.span_count,
                "notes": list(self.notes),
            }
        )
        return out
