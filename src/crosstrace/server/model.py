"""Records the backend stores and returns, and the queries it answers.

Ids are bytes inside the backend (16-byte trace ids, 8-byte span ids) and hex
strings at the API edge. Times are integer nanoseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from crosstrace.server.scope import Scope

# The span attributes the tracer fills from the request context; the store lifts
# them out of spans and logs into columns.
from crosstrace.spans import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
)

__all__ = [
    "ATTR_DOMAIN_ID",
    "ATTR_GLOBAL_REQUEST_ID",
    "ATTR_PROJECT_DOMAIN_ID",
    "ATTR_PROJECT_ID",
    "ATTR_REQUEST_ID",
    "ATTR_USER_ID",
    "ID_ATTRS",
    "MAX_KIND",
    "MAX_STATUS",
    "RES_HOST_NAME",
    "RES_SERVICE_NAME",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_UNSET",
    "ZERO_SPAN_ID",
    "ZERO_TRACE_ID",
    "AuditEvent",
    "DependencyEdge",
    "ErrorCause",
    "LogQuery",
    "LogRecord",
    "SpanRecord",
    "TracePage",
    "TraceQuery",
    "TraceSummary",
]

#: Resource attributes naming where a span or log record came from.
RES_SERVICE_NAME: Final = "service.name"
RES_HOST_NAME: Final = "host.name"

# OTLP enum values, kept as plain ints.
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

#: Highest OTLP ``SpanKind`` (CONSUMER) and ``StatusCode`` (ERROR); larger values read as 0.
MAX_KIND: Final = 5
MAX_STATUS: Final = 2
#: All-zero ids, which OTLP calls invalid.
ZERO_TRACE_ID: Final = bytes(16)
ZERO_SPAN_ID: Final = bytes(8)
#: Identity attributes with a length limit (they are indexed columns).
ID_ATTRS: Final = (ATTR_PROJECT_ID, ATTR_DOMAIN_ID, ATTR_PROJECT_DOMAIN_ID, ATTR_USER_ID)


@dataclass(slots=True)
class SpanRecord:
    """One span as received (OTLP Span + its resource's service name)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    service: str
    status_code: int = STATUS_UNSET
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    # each: {"time_ns": int, "name": str, "attributes": dict}
    events: list[dict[str, Any]] = field(default_factory=list)
    # each: {"trace_id": hex str, "span_id": hex str, "attributes": dict}
    links: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    trace_state: str = ""

    @property
    def is_error(self) -> bool:
        return self.status_code == STATUS_ERROR

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(slots=True)
class LogRecord:
    """One log record: from OTLP logs ingest or from ``crosstrace logs import``."""

    time_ns: int
    severity_number: int
    severity_text: str
    body: str
    service: str
    trace_id: bytes | None = None
    span_id: bytes | None = None
    request_id: str | None = None
    global_request_id: str | None = None
    user_id: str | None = None
    project_id: str | None = None
    domain_id: str | None = None
    logger: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    # Stable identity of the record at its source (e.g. a hash of file name and
    # line text for imported logs): writing a record whose key is already stored
    # adds nothing. ``None`` means "always insert".
    dedup_key: bytes | None = None
    # When ``crosstrace logs import`` stored it (ns); ``None`` for records sent
    # live. Retention ages an imported record from this time, not from its own.
    imported_ns: int | None = None


@dataclass(slots=True)
class TraceSummary:
    """What the search returns for one trace, merged over every batch received."""

    trace_id: bytes
    start_ns: int
    end_ns: int
    root_service: str
    root_operation: str
    span_count: int
    error_count: int
    services: list[str]
    request_ids: list[str]
    global_request_ids: list[str]
    project_id: str | None = None
    domain_id: str | None = None

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(slots=True)
class TraceQuery:
    """Trace search; every field set narrows the result. Newest first."""

    service: str | None = None
    operation: str | None = None
    error: bool | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    request_id: str | None = None  # matches a global or a local id
    project_id: str | None = None
    domain_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    limit: int = 20
    cursor: str | None = None
    # What the caller may see (applied inside the store query).
    scope: Scope = Scope.ALL
    # Narrows further to these projects (``None``: no such narrowing).
    allowed_projects: frozenset[str] | None = None


@dataclass(slots=True)
class TracePage:
    traces: list[TraceSummary]
    next_cursor: str | None


@dataclass(slots=True)
class LogQuery:
    request_id: str | None = None  # global or local
    trace_id: bytes | None = None
    service: str | None = None
    host: str | None = None  # the resource's host.name
    min_severity: int | None = None  # OTLP severity number, e.g. 17 for ERROR
    text: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    limit: int = 100
    scope: Scope = Scope.ALL
    allowed_projects: frozenset[str] | None = None


@dataclass(slots=True)
class DependencyEdge:
    caller: str
    callee: str
    calls: int
    errors: int


@dataclass(slots=True)
class ErrorCause:
    """The analysed root cause of one failed trace, as the error index keeps it.
    ``group_id`` is ``None`` for a trace with errors but no root cause (a handled
    error inside a successful request)."""

    trace_id: bytes
    start_ns: int
    project_id: str | None
    domain_id: str | None
    span_count: int
    error_count: int
    group_id: str | None
    service: str = ""
    operation: str = ""
    exception_type: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited action."""

    time_ns: int
    who: str  # identity name
    source: str  # file, token, keystone, anonymous
    action: str  # e.g. "GET /api/v1/traces", "token.create"
    target: str  # path with its query, or the object acted on
    scope: str  # Scope.describe()
    outcome: int  # HTTP status, or 0 for a CLI action

    def as_dict(self) -> dict[str, Any]:
        return {
            "time_ns": self.time_ns,
            "who": self.who,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "scope": self.scope,
            "outcome": self.outcome,
        }
