"""The web UI's pages: server-rendered HTML over the same store reads as the API.

Paths (a contract, deep-linkable): ``/`` errors now, ``/traces`` search,
``/traces/{trace_id}`` one trace, ``/requests/{request_id}`` one request,
``/map`` service map, ``/services`` figures per service and operation. Every
handler is a plain ``def`` (store reads block; FastAPI runs it in its thread
pool), takes its viewer from :class:`~crosstrace.server.web.session.WebAuth`
and passes the viewer's scope into every store query. Bad input is a 400 page
naming the problem, an unknown id a 404 page, a failing store a 503 page.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from crosstrace.ids import is_valid_request_id
from crosstrace.server.auth.policy import ADMIN
from crosstrace.server.errors import ServerError
from crosstrace.server.model import LogQuery, LogRecord, SpanRecord, TraceQuery, TraceSummary
from crosstrace.server.query.diagnose import Diagnoser
from crosstrace.server.sampling import SamplingRegistry
from crosstrace.server.scope import Scope
from crosstrace.server.settings import parse_duration_ns as parse_duration
from crosstrace.server.store import Store
from crosstrace.server.web import present, verdicts
from crosstrace.server.web.session import COOKIE_NAME, Viewer, WebAuth, login_form_token, safe_next
from crosstrace.server.web.stats import window_stats
from crosstrace.server.web.waterfall import build_waterfall, exception_of, span_dict

__all__ = ["PageError", "build_router"]

log = logging.getLogger(__name__)

_TRACE_ID_RE: Final = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
_SPAN_ID_RE: Final = re.compile(r"[0-9a-fA-F]{16}", re.ASCII)
_MAX_PARAM: Final = 256
#: Rows the server renders into a trace page before its script takes over.
FIRST_ROWS: Final = 60
FAILED_SHOWN: Final = 25
LOG_LIMIT: Final = 2000
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

T = TypeVar("T")


class PageError(ServerError):
    """A page that cannot be shown: status and a message for the reader."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = self.status_code = status
        self.message = message


def _param(name: str, value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    if len(value) > _MAX_PARAM:
        raise PageError(400, f"{name}: at most {_MAX_PARAM} characters")
    return value.strip()


def _time(name: str, value: str | None) -> int | None:
    from crosstrace.server.query.api import parse_time

    text = _param(name, value)
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise PageError(400, f"{name}: {exc}") from None


def _duration(name: str, value: str | None) -> int | None:
    text = _param(name, value)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise PageError(400, f"{name}: {exc}") from None


def _window(value: str | None) -> tuple[str, int, int]:
    """(window text, start ns, end ns) ending now."""
    try:
        text, length = present.parse_window(value)
    except ValueError as exc:
        raise PageError(400, f"window: {exc}") from None
    now = time.time_ns()
    return text, now - length, now


def _trace_id(value: str) -> bytes:
    if not _TRACE_ID_RE.fullmatch(value):
        raise PageError(400, "a trace id is 32 hex digits")
    return bytes.fromhex(value)


def _request_id(value: str) -> str:
    if not is_valid_request_id(value):
        raise PageError(400, "a request id is req- followed by a lowercase UUID")
    return value


def _attributes(request: Request) -> dict[str, str]:
    """``attr=KEY=VALUE`` (the form) and ``attr.KEY=VALUE`` (the API's spelling)."""
    found: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key == "attr" and value.strip():
            name, sep, wanted = value.partition("=")
            if not sep or not name.strip():
                raise PageError(400, "attribute filters are written key=value")
            found[name.strip()] = wanted.strip()
        elif key.startswith("attr.") and len(key) > 5:
            found[key[5:]] = value
    if len(found) > 10 or any(len(k) > _MAX_PARAM or len(v) > _MAX_PARAM for k, v in found.items()):
        raise PageError(400, "at most 10 attribute filters of at most 256 characters")
    return found


def _json_script(value: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``."""
    return (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def sql_scope(viewer: Viewer) -> Scope:
    """The viewer's scope as the error index filters by it."""
    return viewer.scope


def _masked(viewer: Viewer, spans: list[SpanRecord]) -> list[SpanRecord]:
    """*spans* (fresh from the store) with sensitive values masked for *viewer*."""
    m = viewer.masker
    if m.keys:
        for s in spans:
            s.attributes = m.attributes(s.attributes)
            s.resource = m.attributes(s.resource)
            s.events = m.items(s.events)
            s.links = m.items(s.links)
    return spans


def build_router(
    store: Store,
    diagnoser: Diagnoser,
    auth: WebAuth,
    templates: Jinja2Templates,
    sampling: SamplingRegistry | None = None,
) -> APIRouter:
    """The UI's routes over *store*; verdicts and error groups from *diagnoser*
    (the query API's); each service's tracing budget and reported overhead from
    *sampling* (shown to admins, as ``GET /api/v1/overhead``)."""
    router = APIRouter(include_in_schema=False)

    def read(call: Callable[[], T]) -> T:
        try:
            return call()
        except ValueError as exc:
            raise PageError(400, str(exc)) from None
        except Exception as exc:
            log.warning("store read failed: %s", exc)
            raise PageError(503, "the store is unavailable, retry in a moment") from exc

    def page(
        request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        context.setdefault("login_required", auth.required)
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def summaries_context(rows: list[TraceSummary]) -> dict[str, Any]:
        longest = max((s.duration_ns for s in rows), default=0)
        return {"rows": rows, "longest": longest}

    def trace_query(viewer: Viewer, **fields: Any) -> TraceQuery:
        return TraceQuery(scope=viewer.scope, **fields)

    # ---------------------------------------------------------------- errors now

    @router.get("/", response_class=HTMLResponse)
    def errors_now(request: Request, window: str | None = None) -> HTMLResponse:
        viewer = auth.viewer(request)
        window_text, start, end = _window(window)
        groups = read(
            lambda: verdicts.error_groups(diagnoser, store, start, end, sql_scope(viewer))
        )
        failed = read(
            lambda: store.search_traces(
                trace_query(viewer, error=True, start_ns=start, end_ns=end, limit=FAILED_SHOWN)
            )
        )
        return page(
            request,
            "errors.html",
            {
                "window": window_text,
                "groups": groups,
                "failed": summaries_context(failed.traces),
                "more_failed": failed.next_cursor is not None,
            },
        )

    # -------------------------------------------------------------------- search

    @router.get("/traces", response_class=HTMLResponse)
    def search(
        request: Request,
        service: str | None = None,
        operation: str | None = None,
        status: str | None = None,
        min_duration: str | None = None,
        start: str | None = None,
        end: str | None = None,
        request_id: str | None = None,
        project: str | None = None,
        cursor: str | None = None,
    ) -> HTMLResponse:
        viewer = auth.viewer(request)
        error = {"error": True, "ok": False}.get(status or "")
        rid = _param("request_id", request_id)
        query = trace_query(
            viewer,
            service=_param("service", service),
            operation=_param("operation", operation),
            error=error,
            start_ns=_time("start", start if start is not None else "1h"),
            end_ns=_time("end", end),
            min_duration_ns=_duration("min_duration", min_duration),
            request_id=_request_id(rid) if rid else None,
            project_id=_param("project", project),
            attributes=_attributes(request),
            limit=50,
            cursor=_param("cursor", cursor),
        )
        hidden = sorted(viewer.masker.keys.intersection(query.attributes))
        if hidden:  # a filter on a masked value would tell the value
            raise PageError(403, f"searching on {', '.join(hidden)} needs the sensitive role")
        result = read(lambda: store.search_traces(query))
        services = read(lambda: store.services(viewer.scope))
        chosen = query.service
        operations = read(lambda: store.operations(chosen, viewer.scope)) if chosen else []
        form = {
            "service": query.service or "",
            "operation": query.operation or "",
            "status": status or "",
            "min_duration": min_duration or "",
            "start": "1h" if start is None else start,
            "end": end or "",
            "request_id": rid or "",
            "project": query.project_id or "",
            "attr": [f"{k}={v}" for k, v in query.attributes.items()],
        }
        next_link = None
        if result.next_cursor:
            params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
            next_link = "/traces?" + urlencode([*params, ("cursor", result.next_cursor)])
        return page(
            request,
            "traces.html",
            {
                "form": form,
                "services": services,
                "operations": operations,
                "found": summaries_context(result.traces),
                "next_link": next_link,
            },
        )

    # --------------------------------------------------------------------- trace

    def load_trace(viewer: Viewer, tid: bytes) -> tuple[list[SpanRecord], TraceSummary | None]:
        spans = read(lambda: store.get_trace(tid, viewer.scope))
        if not spans:
            raise PageError(404, f"trace {tid.hex()} not found")
        summary = read(lambda: store.get_trace_summary(tid, viewer.scope))
        return _masked(viewer, spans), summary

    def trace_logs(viewer: Viewer, tid: bytes) -> list[LogRecord]:
        return read(
            lambda: store.search_logs(LogQuery(trace_id=tid, limit=LOG_LIMIT, scope=viewer.scope))
        )

    @router.get("/traces/{trace_id}", response_class=HTMLResponse)
    def trace(request: Request, trace_id: str, span: str | None = None) -> HTMLResponse:
        viewer = auth.viewer(request)
        tid = _trace_id(trace_id)
        spans, summary = load_trace(viewer, tid)
        logs = trace_logs(viewer, tid)
        verdict = read(lambda: verdicts.trace_verdict(diagnoser, spans, logs))
        waterfall = build_waterfall(
            (span_dict(s) for s in spans), verdict.marks() if verdict else None
        )
        selected = None
        if span and _SPAN_ID_RE.fullmatch(span):
            selected = waterfall.row_of(span.lower())
        if selected is None and verdict and verdict.root_span_id:
            selected = waterfall.row_of(verdict.root_span_id)
        if selected is None and waterfall.rows:
            selected = waterfall.rows[0]
        span_of_row = {r.span_id: r.index for r in waterfall.rows}
        return page(
            request,
            "trace.html",
            {
                "trace_id": tid.hex(),
                "summary": summary,
                "wf": waterfall,
                "first_rows": waterfall.rows[:FIRST_ROWS],
                "data": _json_script(waterfall.compact()),
                "verdict": verdict,
                "selected": selected,
                "selected_logs": _logs_of(logs, selected.span_id if selected else None),
                "logs": logs,
                "span_of_row": span_of_row,
                "exception_of": exception_of,
            },
        )

    @router.get("/traces/{trace_id}/spans/{span_id}", response_class=HTMLResponse)
    def span_panel(request: Request, trace_id: str, span_id: str) -> HTMLResponse:
        """The span panel alone (the trace page's script loads it on selection)."""
        viewer = auth.viewer(request)
        tid = _trace_id(trace_id)
        if not _SPAN_ID_RE.fullmatch(span_id):
            raise PageError(400, "a span id is 16 hex digits")
        spans, _ = load_trace(viewer, tid)
        waterfall = build_waterfall(span_dict(s) for s in spans)
        row = waterfall.row_of(span_id.lower())
        if row is None:
            raise PageError(404, f"span {span_id} is not in trace {tid.hex()}")
        logs = trace_logs(viewer, tid)
        return page(
            request,
            "_span.html",
            {
                "trace_id": tid.hex(),
                "wf": waterfall,
                "selected": row,
                "selected_logs": _logs_of(logs, row.span_id),
                "exception_of": exception_of,
            },
        )

    # ------------------------------------------------------------------- request

    @router.get("/requests/{request_id}", response_class=HTMLResponse)
    def request_view(request: Request, request_id: str) -> HTMLResponse:
        viewer = auth.viewer(request)
        rid = _request_id(request_id)
        traces = read(lambda: store.traces_for_request(rid, scope=viewer.scope))
        traces.sort(key=lambda t: t.start_ns)
        logs = read(
            lambda: store.search_logs(LogQuery(request_id=rid, limit=LOG_LIMIT, scope=viewer.scope))
        )
        logs.sort(key=lambda r: r.time_ns)
        if not traces and not logs:
            raise PageError(404, f"nothing is stored for request {rid}")
        per_trace = [
            _masked(viewer, _read_trace(read, store, t.trace_id, viewer.scope)) for t in traces
        ]
        spans = [s for trace_spans in per_trace for s in trace_spans]
        verdict = read(lambda: verdicts.request_verdict(diagnoser, rid, viewer.scope))
        times = [t.start_ns for t in traces] + [r.time_ns for r in logs]
        ends = [t.end_ns for t in traces] + [r.time_ns for r in logs]
        start, end = min(times), max(ends)
        services = sorted({s for t in traces for s in t.services} | {r.service for r in logs})
        return page(
            request,
            "request.html",
            {
                "request_id": rid,
                "traces": traces,
                "logs": logs,
                "verdict": verdict,
                "services": services,
                "start_ns": start,
                "span_ns": max(1, end - start),
                "lanes": present.request_timeline(spans, logs, start, max(1, end - start)),
                "errors": sum(t.error_count for t in traces),
            },
        )

    # ---------------------------------------------------------------- map, figures

    @router.get("/map", response_class=HTMLResponse)
    def service_map(request: Request, window: str | None = None) -> HTMLResponse:
        viewer = auth.viewer(request)
        window_text, start, end = _window(window)
        edges = read(lambda: store.dependencies(start, end, viewer.scope))
        stats = read(
            lambda: window_stats(
                store.search_traces,
                store.get_trace,
                trace_query(viewer, start_ns=start, end_ns=end),
                (end - start) / 1e9,
            )
        )
        incoming: dict[str, list[int]] = {}
        for e in edges:
            calls_errors = incoming.setdefault(e.callee, [0, 0])
            calls_errors[0] += e.calls
            calls_errors[1] += e.errors
        names = sorted({e.caller for e in edges} | {e.callee for e in edges} | set(stats.services))
        nodes = []
        for name in names:
            s = stats.services.get(name)
            calls, errors = incoming.get(name, (0, 0))
            if not calls and s is not None:  # an entry service: the requests it took first
                calls, errors = s.roots, s.root_errors
            nodes.append(
                {
                    "id": name,
                    "calls": calls,
                    "errors": errors,
                    "rate": errors / calls if calls else 0,
                }
            )
        graph = {
            "window": window_text,
            "nodes": nodes,
            "edges": [
                {"caller": e.caller, "callee": e.callee, "calls": e.calls, "errors": e.errors}
                for e in edges
            ],
        }
        return page(
            request,
            "map.html",
            {
                "window": window_text,
                "graph": graph,
                "data": _json_script(graph),
                "start_param": window_text,
            },
        )

    @router.get("/services", response_class=HTMLResponse)
    def services_view(request: Request, window: str | None = None) -> HTMLResponse:
        viewer = auth.viewer(request)
        window_text, start, end = _window(window)
        stats = read(
            lambda: window_stats(
                store.search_traces,
                store.get_trace,
                trace_query(viewer, start_ns=start, end_ns=end),
                (end - start) / 1e9,
            )
        )
        tracing = None
        if sampling is not None and auth.may(viewer, ADMIN):
            tracing = present.tracing_rows(sampling.overhead(), time.time())
        return page(
            request, "services.html", {"window": window_text, "stats": stats, "tracing": tracing}
        )

    # ------------------------------------------------------------ go, login, out

    @router.get("/go")
    def go(request: Request, q: str = "") -> Response:
        """Jump from a pasted trace id or request id to its page."""
        auth.viewer(request)
        text = q.strip()
        if _TRACE_ID_RE.fullmatch(text):
            return RedirectResponse("/traces/" + text.lower(), status_code=303)
        if is_valid_request_id(text):
            return RedirectResponse("/requests/" + text, status_code=303)
        raise PageError(400, "paste a trace id (32 hex digits) or a request id (req-...)")

    @router.get("/login", response_class=HTMLResponse)
    def login_page(
        request: Request, next_path: Annotated[str | None, Query(alias="next")] = None
    ) -> HTMLResponse:
        return page(request, "login.html", {"next": safe_next(next_path), "failed": False})

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        token, next_path = await login_form_token(request)
        if not auth.required:
            return RedirectResponse(next_path, status_code=303)
        if token is None or not auth.check(token):
            return page(request, "login.html", {"next": next_path, "failed": True}, status=401)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    return router


def _read_trace(
    read: Callable[[Callable[[], list[SpanRecord]]], list[SpanRecord]],
    store: Store,
    tid: bytes,
    scope: Scope = Scope.ALL,
) -> list[SpanRecord]:
    return read(lambda: store.get_trace(tid, scope))


def _logs_of(logs: list[LogRecord], span_id: str | None) -> list[LogRecord]:
    if span_id is None:
        return []
    sid = bytes.fromhex(span_id)
    return [r for r in logs if r.span_id == sid]
