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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from crosstrace import __version__
from crosstrace.ids import is_valid_request_id
from crosstrace.server.auth import TokenSet
from crosstrace.server.auth.access import Access, AuditMiddleware
from crosstrace.server.auth.policy import ADMIN, INGEST, READ, SENSITIVE
from crosstrace.server.errors import Unavailable
from crosstrace.server.logs.follow import FollowedRequest, follow_request
from crosstrace.server.metrics import Metrics
from crosstrace.server.model import (
    LogQuery,
    LogRecord,
    SpanRecord,
    TraceQuery,
    TraceSummary,
)
from crosstrace.server.query.analysis_routes import analysis_router
from crosstrace.server.query.caller import AuditReader, MetricsReader, Reader, caller_dependency
from crosstrace.server.query.diagnose import Diagnoser, scoped_logs
from crosstrace.server.query.models import (
    AuditOut,
    DependenciesOut,
    DependencyOut,
    LogsOut,
    OperationsOut,
    RequestOut,
    ServicesOut,
    TraceOut,
    TracePageOut,
    audit_out,
    hop_out,
    log_out,
    span_out,
    span_tree,
    summary_out,
)
from crosstrace.server.query.sampling_routes import sampling_router
from crosstrace.server.sampling import SamplingRegistry
from crosstrace.server.settings import parse_duration_ns
from crosstrace.server.store.base import Store

__all__ = [
    "ATTR_PARAM_PREFIX",
    "LEVELS",
    "MAX_ATTR_FILTERS",
    "MAX_SPANS_PER_PAGE",
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
_TRACE_ID_RE = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
_RELATIVE_RE = re.compile(r"\d+(?:\.\d+)?\s*(?:ns|us|µs|ms|s|m|h|d|w)", re.ASCII)


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
        return now - parse_duration_ns(text)
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


#: Largest nanosecond value a time or duration parameter may have (int64).
_MAX_NS: Final = 2**63 - 1
#: Most spans ``GET /api/v1/traces/{id}`` returns at once (``span_offset`` pages on).
MAX_SPANS_PER_PAGE: Final = 10_000


def _time_param(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        ns = parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise _bad(name, str(exc) or "out of range") from None
    if not 0 <= ns <= _MAX_NS:
        raise _bad(name, "the time is out of range (1970 to 2262)")
    return ns


def _duration_param(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        ns = parse_duration_ns(value)
    except (ValueError, OverflowError) as exc:
        raise _bad(name, str(exc) or "out of range") from None
    if not 0 <= ns <= _MAX_NS:
        raise _bad(name, "the duration is out of range")
    return ns


def _trace_id_param(name: str, value: str) -> bytes:
    if not _TRACE_ID_RE.fullmatch(value):
        raise _bad(name, "a trace id is 32 hex digits")
    return bytes.fromhex(value)


def _request_id_param(name: str, value: str) -> str:
    if not is_valid_request_id(value):
        raise _bad(name, "a request id is req- followed by a lowercase UUID")
    return value


# ------------------------------------------------------------------------------- app


class _StoreUnavailable(Unavailable):
    """A store read failed for a reason that is not the caller's."""


def create_api(
    store: Store,
    metrics: Metrics,
    *,
    tokens: TokenSet | None = None,
    sampling: SamplingRegistry | None = None,
    ingest_tokens: TokenSet | None = None,
    access: Access | None = None,
) -> FastAPI:
    """The FastAPI app of the query API, ``/healthz`` and ``/metrics``. Without
    *access*, the API is open unless *tokens* (legacy API tokens) are given.
    Every route but ``/healthz`` and the docs is audited."""
    access = access or Access(api_tokens=tokens, ingest_tokens=ingest_tokens)
    diagnoser = Diagnoser(store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        diagnoser.start()  # keeps the error index a few seconds behind ingest
        try:
            yield
        finally:
            diagnoser.stop()

    app = FastAPI(
        title="crosstrace",
        version=__version__,
        description="Query API of the crosstrace backend: traces, requests, logs, services, "
        "root cause and error groups.",
        lifespan=lifespan,
    )
    app.state.diagnoser = diagnoser
    app.state.access = access
    app.add_middleware(AuditMiddleware, access=access)

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
            status_code=exc.status_code,
            headers={"Retry-After": "5"},
        )

    # Changes and listings are the admin's; tracers (ingest or read identities)
    # fetch their settings and report their overhead.
    tracer_auth = Depends(caller_dependency(INGEST, READ))
    app.state.sampling = sampling = sampling or SamplingRegistry()
    app.include_router(
        sampling_router(sampling, [Depends(caller_dependency(ADMIN))], [tracer_auth])
    )
    app.include_router(
        analysis_router(
            diagnoser,
            [],  # each route names its rule (query.caller.Reader)
            read,
            bad=_bad,
            time_param=_time_param,
            duration_param=_duration_param,
            trace_id_param=_trace_id_param,
            request_id_param=_request_id_param,
        )
    )

    @app.get("/api/v1/traces", response_model=TracePageOut)
    def search_traces(
        request: Request,
        who: Reader,
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
        hidden = sorted(access.masker(who).keys.intersection(attributes))
        if hidden:
            # A filter on a masked value would tell the value: refuse it.
            raise HTTPException(
                status_code=403,
                detail=f"filtering on {', '.join(hidden)} needs the {SENSITIVE} rule",
            )
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
            scope=who.scope,
        )
        page = read(lambda: store.search_traces(query))
        return TracePageOut(
            traces=[summary_out(s) for s in page.traces], next_cursor=page.next_cursor
        )

    @app.get("/api/v1/traces/{trace_id}", response_model=TraceOut)
    def get_trace(
        trace_id: str,
        who: Reader,
        span_offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
        span_limit: Annotated[int, Query(ge=1, le=MAX_SPANS_PER_PAGE)] = MAX_SPANS_PER_PAGE,
    ) -> TraceOut:
        """One whole trace: its spans depth first with parent links, children and
        depth, at most ``span_limit`` of them from ``span_offset`` on."""
        tid = _trace_id_param("trace_id", trace_id)
        spans: list[SpanRecord] = read(lambda: store.get_trace(tid, who.scope))
        if not spans:
            raise HTTPException(status_code=404, detail=f"trace {tid.hex()} not found")
        summary: TraceSummary | None = read(lambda: store.get_trace_summary(tid, who.scope))
        masker = access.masker(who)
        tree = list(span_tree(spans))
        page = tree[span_offset : span_offset + span_limit]
        end = span_offset + len(page)
        return TraceOut(
            trace_id=tid.hex(),
            summary=summary_out(summary) if summary else None,
            spans=[span_out(s, d, c, masker) for s, d, c in page],
            span_total=len(tree),
            next_span_offset=end if end < len(tree) else None,
        )

    @app.get("/api/v1/requests/{request_id}", response_model=RequestOut)
    def get_request(
        request_id: str, who: Reader, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
    ) -> RequestOut:
        """Everything for a global or local request id: its traces, and its log lines
        with those of the calls they name (RPC message ids, "used request id"), oldest
        first, with the caller -> callee hops the lines show."""
        rid = _request_id_param("request_id", request_id)
        traces: list[TraceSummary] = read(lambda: store.traces_for_request(rid, scope=who.scope))
        followed: FollowedRequest = read(
            lambda: follow_request(scoped_logs(store, who.scope), rid, limit)
        )
        lines = followed.lines
        masker = access.masker(who)
        return RequestOut(
            request_id=rid,
            traces=[summary_out(s) for s in sorted(traces, key=lambda s: s.start_ns)],
            logs=[log_out(r, masker) for r in lines],
            hops=[hop_out(h, lines) for h in followed.hops],
            followed=followed.followed,
            truncated=followed.truncated,
        )

    @app.get("/api/v1/services", response_model=ServicesOut)
    def list_services(who: Reader) -> ServicesOut:
        """Every service name seen in stored spans (of the traces in the caller's scope)."""
        return ServicesOut(services=read(lambda: store.services(who.scope)))

    @app.get("/api/v1/services/{name}/operations", response_model=OperationsOut)
    def list_operations(name: str, who: Reader) -> OperationsOut:
        """Span names (operations) seen for one service."""
        return OperationsOut(
            service=name, operations=read(lambda: store.operations(name, who.scope))
        )

    @app.get("/api/v1/dependencies", response_model=DependenciesOut)
    def dependencies(
        who: Reader, start: str | None = None, end: str | None = None
    ) -> DependenciesOut:
        """Caller -> callee service edges with call and error counts."""
        start_ns = _time_param("start", start)
        end_ns = _time_param("end", end)
        edges = read(lambda: store.dependencies(start_ns, end_ns, who.scope))
        return DependenciesOut(
            dependencies=[
                DependencyOut(caller=e.caller, callee=e.callee, calls=e.calls, errors=e.errors)
                for e in edges
            ]
        )

    @app.get("/api/v1/logs", response_model=LogsOut)
    def search_logs(
        who: Reader,
        request_id: str | None = None,
        trace_id: str | None = None,
        service: str | None = None,
        host: Annotated[str | None, Query(description="the records' host.name")] = None,
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
            host=host or None,
            min_severity=min_severity,
            text=q or None,
            start_ns=_time_param("start", start),
            end_ns=_time_param("end", end),
            limit=limit,
            scope=who.scope,
        )
        records: list[LogRecord] = read(lambda: store.search_logs(query))
        masker = access.masker(who)
        return LogsOut(logs=[log_out(r, masker) for r in records])

    @app.get("/api/v1/audit", response_model=AuditOut)
    def audit_log(
        who: AuditReader,
        start: str | None = None,
        user: Annotated[str | None, Query(max_length=_MAX_PARAM_LENGTH)] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> AuditOut:
        """Who read or changed what, newest first (administrators only)."""
        start_ns = _time_param("start", start)
        events = read(lambda: store.read_audit(start_ns, user or None, limit))
        return AuditOut(events=[audit_out(e) for e in events])

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the store answers, 503 otherwise."""
        try:
            store.stats()
        except Exception as exc:
            log.warning("health check: store failed: %s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics(who: MetricsReader) -> PlainTextResponse:
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
