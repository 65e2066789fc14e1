"""The query API (FastAPI): search traces, fetch a trace or a request, list names.

Paths are those of the design's "Public surfaces" table; the OpenAPI schema is
served at ``/openapi.json`` and the interactive docs at ``/docs``. Handlers are
plain ``def`` functions: store reads block, so FastAPI runs them in its thread
pool. Query parameters are parsed strictly; a bad value is a 400 (or FastAPI's
422 for a wrong type) naming the parameter, never a 500.

Ids are hex at this edge and bytes inside; times are returned both as integer
nanoseconds (exact) and as RFC 3339 strings (readable).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from crosstrace import __version__
from crosstrace.ids import is_valid_request_id
from crosstrace.server.auth import TokenSet, bearer_token
from crosstrace.server.metrics import Metrics
from crosstrace.server.model import (
    LogQuery,
    LogRecord,
    SpanRecord,
    TraceQuery,
    TraceSummary,
)
from crosstrace.server.settings import parse_duration
from crosstrace.server.store.base import Store

__all__ = [
    "ATTR_PARAM_PREFIX",
    "LEVELS",
    "MAX_ATTR_FILTERS",
    "create_api",
    "parse_time",
    "span_tree",
]

log = logging.getLogger(__name__)

#: Query parameters ``attr.KEY=VALUE`` filter traces on span attribute equality.
ATTR_PARAM_PREFIX: Final = "attr."
MAX_ATTR_FILTERS: Final = 10
_MAX_PARAM_LENGTH: Final = 1024
#: Log level names -> lowest OTLP severity number of that level.
LEVELS: Final = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warn": 13,
    "warning": 13,
    "error": 17,
    "critical": 21,
    "fatal": 21,
}
_KIND_NAMES: Final = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS_NAMES: Final = ("unset", "ok", "error")
_TRACE_ID_RE = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
_RELATIVE_RE = re.compile(r"\d+(?:\.\d+)?\s*(?:ns|us|µs|ms|s|m|h|d|w)", re.ASCII)


# ------------------------------------------------------------------ response models


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


class LogsOut(BaseModel):
    logs: list[LogOut]


class RequestOut(BaseModel):
    request_id: str
    traces: list[TraceSummaryOut] = Field(description="oldest first")
    logs: list[LogOut] = Field(description="oldest first")


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


# --------------------------------------------------------------------------- parsing


def _bad(param: str, message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=f"{param}: {message}")


def parse_time(text: str, now_ns: int | None = None) -> int:
    """RFC 3339 (``2026-11-22T10:00:00Z``), ``now`` or relative (``1h`` = an hour
    ago) -> nanoseconds since the epoch. A time without zone is taken as UTC.
    Raises ``ValueError``."""
    text = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if text == "now":
        return now
    if _RELATIVE_RE.fullmatch(text):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 time nor a relative one like 15m, 1h or 2d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int(moment.timestamp())
    return seconds * 1_000_000_000 + moment.microsecond * 1000


def _time_param(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None


def _duration_param(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None


def _trace_id_param(name: str, value: str) -> bytes:
    if not _TRACE_ID_RE.fullmatch(value):
        raise _bad(name, "a trace id is 32 hex digits")
    return bytes.fromhex(value)


def _request_id_param(name: str, value: str) -> str:
    if not is_valid_request_id(value):
        raise _bad(name, "a request id is req- followed by a lowercase UUID")
    return value


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rest:09d}Z"


# ------------------------------------------------------------------------ converters


def _summary_out(s: TraceSummary) -> TraceSummaryOut:
    return TraceSummaryOut(
        trace_id=s.trace_id.hex(),
        start=_rfc3339(s.start_ns),
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


def _log_out(r: LogRecord) -> LogOut:
    return LogOut(
        time=_rfc3339(r.time_ns),
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
        attributes=r.attributes,
        resource=r.resource,
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


def _span_out(span: SpanRecord, depth: int, children: list[SpanRecord]) -> SpanOut:
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
        start=_rfc3339(span.start_ns),
        start_ns=span.start_ns,
        end_ns=span.end_ns,
        duration_ns=span.duration_ns,
        status_code=code,
        status=_STATUS_NAMES[code] if 0 <= code < len(_STATUS_NAMES) else "unset",
        status_message=span.status_message,
        attributes=span.attributes,
        events=span.events,
        links=span.links,
        resource=span.resource,
        scope=span.scope,
        trace_state=span.trace_state,
    )


# ------------------------------------------------------------------------------- app


def _auth_dependency(tokens: TokenSet) -> Callable[[Request], None]:
    def require_token(request: Request) -> None:
        if tokens and not tokens.check(bearer_token(request.headers.get("authorization"))):
            raise HTTPException(
                status_code=401,
                detail="a valid API token is required (Authorization: Bearer ...)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


class _StoreUnavailable(Exception):
    pass


def create_api(store: Store, metrics: Metrics, *, tokens: TokenSet | None = None) -> FastAPI:
    """The FastAPI app of the query API, ``/healthz`` and ``/metrics``."""
    tokens = tokens or TokenSet()
    app = FastAPI(
        title="crosstrace",
        version=__version__,
        description="Query API of the crosstrace backend: traces, requests, logs, services.",
    )
    authed = [Depends(_auth_dependency(tokens))]

    def read(call: Callable[[], Any]) -> Any:
        """Run a store read; a ValueError is the caller's (400), anything else 503."""
        try:
            return call()
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except Exception as exc:
            log.warning("store read failed: %s", exc)
            raise _StoreUnavailable from exc

    @app.exception_handler(_StoreUnavailable)
    def store_unavailable(request: Request, exc: _StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": "the store is unavailable, retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get("/api/v1/traces", response_model=TracePageOut, dependencies=authed)
    def search_traces(
        request: Request,
        service: str | None = None,
        operation: str | None = None,
        error: Annotated[
            bool | None, Query(description="only traces with (or without) errors")
        ] = None,
        start: Annotated[str | None, Query(description="RFC 3339 or relative (1h)")] = None,
        end: Annotated[str | None, Query(description="RFC 3339 or relative (15m)")] = None,
        min_duration: Annotated[str | None, Query(description="e.g. 250ms, 2s")] = None,
        max_duration: Annotated[str | None, Query(description="e.g. 250ms, 2s")] = None,
        request_id: Annotated[str | None, Query(description="global or local id")] = None,
        project: str | None = None,
        domain: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        cursor: Annotated[str | None, Query(max_length=_MAX_PARAM_LENGTH)] = None,
    ) -> TracePageOut:
        """Traces matching every given filter, newest first. ``attr.KEY=VALUE``
        parameters (up to 10) match span attributes exactly."""
        attributes: dict[str, str] = {}
        for key, value in request.query_params.multi_items():
            if key.startswith(ATTR_PARAM_PREFIX):
                name = key[len(ATTR_PARAM_PREFIX) :]
                if not name or len(name) > _MAX_PARAM_LENGTH or len(value) > _MAX_PARAM_LENGTH:
                    raise _bad(key, "attribute filters are attr.KEY=VALUE with a non-empty KEY")
                attributes[name] = value
        if len(attributes) > MAX_ATTR_FILTERS:
            raise _bad("attr.*", f"at most {MAX_ATTR_FILTERS} attribute filters")
        query = TraceQuery(
            service=service or None,
            operation=operation or None,
            error=error,
            start_ns=_time_param("start", start),
            end_ns=_time_param("end", end),
            min_duration_ns=_duration_param("min_duration", min_duration),
            max_duration_ns=_duration_param("max_duration", max_duration),
            request_id=_request_id_param("request_id", request_id) if request_id else None,
            project_id=project or None,
            domain_id=domain or None,
            attributes=attributes,
            limit=limit,
            cursor=cursor or None,
        )
        page = read(lambda: store.search_traces(query))
        return TracePageOut(
            traces=[_summary_out(s) for s in page.traces], next_cursor=page.next_cursor
        )

    @app.get("/api/v1/traces/{trace_id}", response_model=TraceOut, dependencies=authed)
    def get_trace(trace_id: str) -> TraceOut:
        """One whole trace: its spans depth first with parent links, children and depth."""
        tid = _trace_id_param("trace_id", trace_id)
        spans: list[SpanRecord] = read(lambda: store.get_trace(tid))
        if not spans:
            raise HTTPException(status_code=404, detail=f"trace {tid.hex()} not found")
        summary: TraceSummary | None = read(lambda: store.get_trace_summary(tid))
        return TraceOut(
            trace_id=tid.hex(),
            summary=_summary_out(summary) if summary else None,
            spans=[_span_out(s, d, c) for s, d, c in span_tree(spans)],
        )

    @app.get("/api/v1/requests/{request_id}", response_model=RequestOut, dependencies=authed)
    def get_request(
        request_id: str, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
    ) -> RequestOut:
        """Everything for a global or local request id: its traces and its logs."""
        rid = _request_id_param("request_id", request_id)
        traces: list[TraceSummary] = read(lambda: store.traces_for_request(rid))
        logs: list[LogRecord] = read(
            lambda: store.search_logs(LogQuery(request_id=rid, limit=limit))
        )
        return RequestOut(
            request_id=rid,
            traces=[_summary_out(s) for s in sorted(traces, key=lambda s: s.start_ns)],
            logs=[_log_out(r) for r in sorted(logs, key=lambda r: r.time_ns)],
        )

    @app.get("/api/v1/services", response_model=ServicesOut, dependencies=authed)
    def list_services() -> ServicesOut:
        """Every service name seen in stored spans."""
        return ServicesOut(services=read(store.services))

    @app.get(
        "/api/v1/services/{name}/operations", response_model=OperationsOut, dependencies=authed
    )
    def list_operations(name: str) -> OperationsOut:
        """Span names (operations) seen for one service."""
        return OperationsOut(service=name, operations=read(lambda: store.operations(name)))

    @app.get("/api/v1/dependencies", response_model=DependenciesOut, dependencies=authed)
    def dependencies(start: str | None = None, end: str | None = None) -> DependenciesOut:
        """Caller -> callee service edges with call and error counts."""
        start_ns = _time_param("start", start)
        end_ns = _time_param("end", end)
        edges = read(lambda: store.dependencies(start_ns, end_ns))
        return DependenciesOut(
            dependencies=[
                DependencyOut(caller=e.caller, callee=e.callee, calls=e.calls, errors=e.errors)
                for e in edges
            ]
        )

    @app.get("/api/v1/logs", response_model=LogsOut, dependencies=authed)
    def search_logs(
        request_id: str | None = None,
        trace_id: str | None = None,
        service: str | None = None,
        level: Annotated[
            str | None, Query(description="lowest level: debug, info, warning, error, critical")
        ] = None,
        q: Annotated[str | None, Query(max_length=_MAX_PARAM_LENGTH, description="text")] = None,
        start: str | None = None,
        end: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> LogsOut:
        """Log records matching every given filter, oldest first."""
        min_severity = None
        if level:
            if level.lower() in LEVELS:
                min_severity = LEVELS[level.lower()]
            elif level.isdigit() and 1 <= int(level) <= 24:
                min_severity = int(level)
            else:
                raise _bad("level", f"one of {', '.join(LEVELS)} or a severity number 1-24")
        query = LogQuery(
            request_id=_request_id_param("request_id", request_id) if request_id else None,
            trace_id=_trace_id_param("trace_id", trace_id) if trace_id else None,
            service=service or None,
            min_severity=min_severity,
            text=q or None,
            start_ns=_time_param("start", start),
            end_ns=_time_param("end", end),
            limit=limit,
        )
        records: list[LogRecord] = read(lambda: store.search_logs(query))
        return LogsOut(logs=[_log_out(r) for r in records])

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the store answers, 503 otherwise."""
        try:
            store.stats()
        except Exception as exc:
            log.warning("health check: store failed: %s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=authed)
    def prometheus_metrics() -> PlainTextResponse:
        """Prometheus text: ingest counters, write queue, latency, store stats."""
        try:
            stats = store.stats()
        except Exception as exc:
            log.warning("metrics: store stats failed: %s", exc)
            stats = {}
        return PlainTextResponse(
            metrics.render(stats), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app
