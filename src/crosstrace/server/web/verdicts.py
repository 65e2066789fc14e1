"""The analysis as the pages show it: a trace's or a request's verdict, error groups.

The verdicts come from :mod:`crosstrace.server.analysis`, called here on the
server. When this build has no analysis, every function returns ``None`` and
the pages say that no verdict is available: the UI never makes one up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crosstrace.server.model import LogRecord, SpanRecord
from crosstrace.server.web.waterfall import Marks

__all__ = [
    "AVAILABLE",
    "ErrorGroup",
    "Verdict",
    "error_groups",
    "request_verdict",
    "trace_verdict",
]

#: Whether this build has the analysis (the pages show verdicts).
AVAILABLE = False


@dataclass(slots=True)
class Step:
    """One span of a verdict's chain of consequences."""

    span_id: str
    service: str
    name: str
    error: str = ""


@dataclass(slots=True)
class Verdict:
    """What the analysis says about one trace or request."""

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


def trace_verdict(spans: Sequence[SpanRecord], logs: Sequence[LogRecord]) -> Verdict | None:
    """The root cause of one trace, or ``None`` when no analysis is available."""
    return None


def request_verdict(
    spans: Sequence[SpanRecord], logs: Sequence[LogRecord], request_id: str
) -> Verdict | None:
    """The root cause of one request (traces and log lines), or ``None``."""
    return None


def error_groups(store: Any, start_ns: int, end_ns: int, scope: Any) -> list[ErrorGroup] | None:
    """Error groups of the window, or ``None`` when no analysis is available."""
    return None
