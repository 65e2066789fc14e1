"""Response models of the query API (its OpenAPI schema), and the converters
from the store's records to them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, Field

from crosstrace.server.auth.access import NO_MASK, Masker
from crosstrace.server.logs.follow import Hop, host_of
from crosstrace.server.model import AuditEvent, LogRecord, SpanRecord, TraceSummary

__all__ = [
    "DependenciesOut",
    "DependencyOut",
    "HopOut",
    "LogOut",
    "LogsOut",
    "OperationsOut",
    "RequestOut",
    "ServicesOut",
    "SpanOut",
    "TraceOut",
    "TracePageOut",
    "TraceSummaryOut",
    "hop_out",
    "log_out",
    "rfc3339",
    "span_out",
    "span_tree",
    "summary_out",
]

_KIND_NAMES: Final = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS_NAMES: Final = ("unset", "ok", "error")


class TraceSummaryOut(BaseModel):
    trace_id: str = Field(description="32 lowercase hex digits")
    start: str = Field(description="RFC 3339 start of the earliest span")
    start_ns: int
    end_ns: int
    duration_ns: int
    root_service: str
    root_operation: str
    span_count: int
    error_count: int
    services: list[str]
    request_ids: list[str]
    global_request_ids: list[str]
    project_id: str | None
    domain_id: str | None


class TracePageOut(BaseModel):
    traces: list[TraceSummaryOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class SpanOut(BaseModel):
    span_id: str
    parent_span_id: str | None
    depth: int = Field(description="0 for a root (or a span whose parent is missing)")
    children: list[str] = Field(description="span ids of direct children, by start time")
    service: str
    name: str
    kind: int
    kind_name: str
    start: str
    start_ns: int
    end_ns: int
    duration_ns: int
    status_code: int
    status: str
    status_message: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    resource: dict[str, Any]
    scope: str
    trace_state: str


class TraceOut(BaseModel):
    trace_id: str
    summary: TraceSummaryOut | None
    spans: list[SpanOut] = Field(description="depth-first, children after their parent")
    span_total: int = Field(0, description="spans in the whole trace")
    next_span_offset: int | None = Field(
        None, description="pass as ?span_offset= for the next spans of a large trace"
    )


class LogOut(BaseModel):
    time: str
    time_ns: int
    severity_number: int
    severity_text: str
    body: str
    service: str
    logger: str
    trace_id: str | None
    span_id: str | None
    request_id: str | None
    global_request_id: str | None
    user_id: str | None
    project_id: str | None
    domain_id: str | None
    attributes: dict[str, Any]
    resource: dict[str, Any]
    host: str | None = Field(description="the resource's host.name")
    imported_ns: int | None = Field(description="when `crosstrace logs import` stored it")


class LogsOut(BaseModel):
    logs: list[LogOut]


class HopOut(BaseModel):
    kind: str = Field(description="rpc, used_request_id, request_id or global_request_id")
    via: str = Field(description="the id both lines show")
    caller: int = Field(description="index in logs of the caller's line")
    callee: int = Field(description="index in logs of the callee's first line")
    caller_service: str
    caller_host: str | None
    callee_service: str
    callee_host: str | None


class RequestOut(BaseModel):
    request_id: str
    traces: list[TraceSummaryOut] = Field(description="oldest first")
    logs: list[LogOut] = Field(
        description="oldest first: the request's lines, and those of the calls they name"
    )
    hops: list[HopOut] = Field(description="caller -> callee steps the log lines show")
    followed: list[str] = Field(description="callee request ids and RPC message ids followed")
    truncated: bool = Field(description="true when limit cut the log lines short")


class ServicesOut(BaseModel):
    services: list[str]


class OperationsOut(BaseModel):
    service: str
    operations: list[str]


class DependencyOut(BaseModel):
    caller: str
    callee: str
    calls: int
    errors: int


class DependenciesOut(BaseModel):
    dependencies: list[DependencyOut]


class AuditEventOut(BaseModel):
    time: str
    time_ns: int
    who: str = Field(description="identity name ('-' when none was recognised)")
    source: str = Field(description="file, token, keystone or anonymous")
    action: str
    target: str
    scope: str
    outcome: int = Field(description="HTTP status")


class AuditOut(BaseModel):
    events: list[AuditEventOut] = Field(description="newest first")


# ------------------------------------------------------------------------ converters


def rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rest:09d}Z"


def summary_out(s: TraceSummary) -> TraceSummaryOut:
    return TraceSummaryOut(
        trace_id=s.trace_id.hex(),
        start=rfc3339(s.start_ns),
        start_ns=s.start_ns,
        end_ns=s.end_ns,
        duration_ns=s.duration_ns,
        root_service=s.root_service,
        root_operation=s.root_operation,
        span_count=s.span_count,
        error_count=s.error_count,
        services=list(s.services),
        request_ids=list(s.request_ids),
        global_request_ids=list(s.global_request_ids),
        project_id=s.project_id,
        domain_id=s.domain_id,
    )


def log_out(r: LogRecord, masker: Masker = NO_MASK) -> LogOut:
    """*r* for a response; *masker* hides sensitive attribute values."""
    return LogOut(
        time=rfc3339(r.time_ns),
        time_ns=r.time_ns,
        severity_number=r.severity_number,
        severity_text=r.severity_text,
        body=r.body,
        service=r.service,
        logger=r.logger,
        trace_id=r.trace_id.hex() if r.trace_id else None,
        span_id=r.span_id.hex() if r.span_id else None,
        request_id=r.request_id,
        global_request_id=r.global_request_id,
        user_id=r.user_id,
        project_id=r.project_id,
        domain_id=r.domain_id,
        attributes=masker.attributes(r.attributes),
        resource=masker.attributes(r.resource),
        host=host_of(r),
        imported_ns=r.imported_ns,
    )


def hop_out(hop: Hop, lines: list[LogRecord]) -> HopOut:
    caller, callee = lines[hop.caller], lines[hop.callee]
    return HopOut(
        kind=hop.kind,
        via=hop.via,
        caller=hop.caller,
        callee=hop.callee,
        caller_service=caller.service,
        caller_host=host_of(caller),
        callee_service=callee.service,
        callee_host=host_of(callee),
    )


def span_tree(spans: list[SpanRecord]) -> Iterator[tuple[SpanRecord, int, list[SpanRecord]]]:
    """Walk *spans* depth first: yields (span, depth, children by start time).

    Roots are spans without a parent or whose parent is not in the trace; spans
    caught in a parent cycle are emitted as roots too, so every span appears once.
    """
    ordered = sorted(spans, key=lambda s: (s.start_ns, s.span_id))
    index: dict[bytes, int] = {}
    for i, span in enumerate(ordered):
        index.setdefault(span.span_id, i)
    children: list[list[int]] = [[] for _ in ordered]
    roots: list[int] = []
    for i, span in enumerate(ordered):
        parent = index.get(span.parent_span_id) if span.parent_span_id else None
        if parent is None or parent == i:
            roots.append(i)
        else:
            children[parent].append(i)
    seen = [False] * len(ordered)

    def walk(start: int) -> Iterator[tuple[SpanRecord, int, list[SpanRecord]]]:
        stack = [(start, 0)]
        while stack:
            i, depth = stack.pop()
            if seen[i]:
                continue
            seen[i] = True
            kids = [ordered[k] for k in children[i]]
            yield ordered[i], depth, kids
            stack.extend((k, depth + 1) for k in reversed(children[i]))

    for root in roots:
        yield from walk(root)
    for i in range(len(ordered)):  # parent cycles: no root reaches them
        if not seen[i]:
            yield from walk(i)


def span_out(
    span: SpanRecord, depth: int, children: list[SpanRecord], masker: Masker = NO_MASK
) -> SpanOut:
    """*span* for a response; *masker* hides sensitive attribute values."""
    kind = span.kind
    code = span.status_code
    return SpanOut(
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() if span.parent_span_id else None,
        depth=depth,
        children=[c.span_id.hex() for c in children],
        service=span.service,
        name=span.name,
        kind=kind,
        kind_name=_KIND_NAMES[kind] if 0 <= kind < len(_KIND_NAMES) else "unspecified",
        start=rfc3339(span.start_ns),
        start_ns=span.start_ns,
        end_ns=span.end_ns,
        duration_ns=span.duration_ns,
        status_code=code,
        status=_STATUS_NAMES[code] if 0 <= code < len(_STATUS_NAMES) else "unset",
        status_message=span.status_message,
        attributes=masker.attributes(span.attributes),
        events=masker.items(span.events),
        links=masker.items(span.links),
        resource=masker.attributes(span.resource),
        scope=span.scope,
        trace_state=span.trace_state,
    )


def audit_out(e: AuditEvent) -> AuditEventOut:
    return AuditEventOut(time=rfc3339(e.time_ns), **e.as_dict())
