"""ASGI request-id middleware: the behaviour of :mod:`crosstrace.wsgi` for ASGI apps.

For each ``http`` request it adopts a valid inbound ``X-OpenStack-Request-ID`` as
the global id (an invalid or repeated one is dropped, counted and logged at
debug without its value), makes a fresh local id, stores both in the scope under
the ``openstack.*`` keys, keeps a :class:`~crosstrace.context.RequestContext`
current while the application runs (streamed bodies included), and returns the
local id in ``x-openstack-request-id`` and each compat header unless the
application set it. ``lifespan`` and ``websocket`` scopes pass through untouched.

With tracing configured (or a ``tracer=`` given) it also opens the request's
SERVER span, as :mod:`crosstrace.wsgi` does: the caller's trace continues from
``traceparent``/``tracestate`` (signed trigger and OSProfiler headers
honoured), the name is ``"METHOD /route/{template}"`` when Starlette (or
FastAPI) matched a route, else ``"METHOD /normalised/{id}/path"``; attributes
``http.request.method``, ``url.path``, ``http.route`` (when known),
``http.response.status_code`` and the ``openstack.*`` ids; a 5xx or an escaping
exception sets error status. The span is current while the application runs,
streamed bodies included.

Starlette / FastAPI::

    app.add_middleware(RequestIdMiddleware, compat_headers=("x-compute-request-id",))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from time import thread_time_ns, time_ns
from typing import Any

from crosstrace.context import (
    ENV_GLOBAL_REQUEST_ID,
    ENV_REQUEST_ID,
    RequestContext,
    reset_current,
    set_current,
)
from crosstrace.headers import parse_header_list
from crosstrace.httpnames import (
    ATTR_METHOD,
    ATTR_ROUTE,
    ENV_ROUTE,
    PathNormalizer,
    normalize_path,
    server_span_name,
)
from crosstrace.ids import MAX_REQUEST_ID_LENGTH
from crosstrace.propagation import HEADER_REQUEST_ID_LOWER, extract_context, record_invalid
from crosstrace.tracecontext import TRACEPARENT_HEADER, TRACESTATE_HEADER
from crosstrace.tracing.calibration import churn
from crosstrace.tracing.deferred import Describe
from crosstrace.tracing.model import RemoteContext, SpanKind
from crosstrace.tracing.serve import Served, export_untraced, serve
from crosstrace.tracing.spans import get_current_span, reset_current_span, set_current_span
from crosstrace.tracing.tracer import (
    DISABLED,
    SKIP_MEASURED,
    TRACE_ALL,
    Tracer,
    get_tracer,
    span,
)
from crosstrace.trust import OSPROFILER_HMAC_HEADER, OSPROFILER_INFO_HEADER, TRIGGER_HEADER

__all__ = ["ASGIApp", "RequestIdMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_INBOUND = HEADER_REQUEST_ID_LOWER.encode("ascii")
_SOURCE = "the X-OpenStack-Request-ID header"
_REPEATED = b"<repeated>"

# keystonemiddleware-style identity headers -> the WSGI environ keys
# RequestContext.from_environ reads.
_IDENTITY_HEADERS = {
    b"x-user-id": "HTTP_X_USER_ID",
    b"x-project-id": "HTTP_X_PROJECT_ID",
    b"x-domain-id": "HTTP_X_DOMAIN_ID",
    b"x-user-domain-id": "HTTP_X_USER_DOMAIN_ID",
    b"x-project-domain-id": "HTTP_X_PROJECT_DOMAIN_ID",
    b"x-roles": "HTTP_X_ROLES",
    b"x-is-admin-project": "HTTP_X_IS_ADMIN_PROJECT",
}


# Trace headers read from the scope (lowercase bytes, as ASGI gives them).
_TRACE_HEADERS = frozenset(
    h.lower().encode("ascii")
    for h in (
        TRACEPARENT_HEADER,
        TRACESTATE_HEADER,
        TRIGGER_HEADER,
        OSPROFILER_INFO_HEADER,
        OSPROFILER_HMAC_HEADER,
    )
)
_TRIGGER = TRIGGER_HEADER.lower()
_OSPROFILER_INFO = OSPROFILER_INFO_HEADER.lower()
# Longest trace header value looked at (traceparent is 55, tracestate <= 512 x 32).
_MAX_TRACE_HEADER = 8192


def _add_trace_header(trace_headers: dict[str, str], name: bytes, value: bytes) -> None:
    text = bytes(value).decode("latin-1")
    k = name.decode("ascii")
    # Repeated tracestate headers are one list (RFC 9110 field lines).
    trace_headers[k] = f"{trace_headers[k]},{text}" if k in trace_headers else text


def _trace_headers(scope: Scope) -> dict[str, str]:
    """The trace headers of a request, read from its scope."""
    found: dict[str, str] = {}
    for raw_name, value in scope.get("headers") or ():
        name = bytes(raw_name).lower()
        if name in _TRACE_HEADERS and len(value) <= _MAX_TRACE_HEADER:
            _add_trace_header(found, name, value)
    return found


def _route_template(scope: Scope) -> str | None:
    """The path template of the route Starlette/FastAPI matched, if any."""
    route = scope.get(ENV_ROUTE)
    if isinstance(route, str):
        return route
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        root = scope.get("app_root_path") or ""
        return f"{root}{path}" if isinstance(root, str) else path
    return None


class RequestIdMiddleware:
    """Give each ASGI http request a local id and adopt a valid inbound global id;
    open the request's SERVER span when tracing is on.

    :param app: the ASGI application to wrap.
    :param compat_headers: extra response headers that carry the local id too,
        as names or a space/comma separated string.
    :param tracer: the tracer of this service (default: the configured one,
        looked up per request; with neither, no span).
    :param path_normalizer: turns the path into the span name's path part when
        no route template is known (default: ids become ``{id}``).
    :param trust_identity_headers: whether a keystonemiddleware-like validator
        runs in front, so ``X-Project-Id``, ``X-Roles`` ... are its own; else they
        are removed from the request and counted (``untrusted_identity_headers``).
    """

    __slots__ = (
        "_resp_headers",
        "app",
        "compat_headers",
        "path_normalizer",
        "tracer",
        "trust_identity_headers",
        "untrusted_identity_headers",
    )

    def __init__(
        self,
        app: ASGIApp,
        compat_headers: str | Iterable[str] | None = (),
        tracer: Tracer | None = None,
        path_normalizer: PathNormalizer | None = None,
        trust_identity_headers: bool = False,
    ) -> None:
        if not callable(app):
            raise ValueError("app must be an ASGI application (a callable)")
        self.app = app
        self.trust_identity_headers = trust_identity_headers
        self.untrusted_identity_headers = 0
        self.tracer = tracer
        self.path_normalizer: PathNormalizer = path_normalizer or normalize_path
        self.compat_headers = tuple(
            h for h in parse_header_list(compat_headers) if h != HEADER_REQUEST_ID_LOWER
        )
        self._resp_headers = tuple(
            h.encode("ascii") for h in (HEADER_REQUEST_ID_LOWER, *self.compat_headers)
        )
        if tracer is not None:
            self._price_with(tracer)

    def _price_with(self, tracer: Tracer) -> None:
        """Let *tracer*'s budget price requests through this middleware."""
        if not tracer.costs.has_probe:
            tracer.costs.add_probe(self._probe)

    #: The tracer of a request when none was given (the configured one).
    _default_tracer = staticmethod(get_tracer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (or pass a non-http scope through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        environ: dict[str, Any] = {}
        raw: bytes | None = None
        tracer = self.tracer or self._default_tracer()
        watched: Tracer | None = None
        skip = 0
        if tracer is not None:
            left = tracer.skips_left  # the budget's countdown (see skip_request)
            if left:
                tracer.skips_left = left - 1
                skip = 1
            elif tracer.trace_threshold < TRACE_ALL:
                skip = tracer.skip_request()
            if skip:
                # Over a small budget: this request runs as with tracing off;
                # only a failure or a slow run exports its server span.
                watched, tracer = tracer, None
        trace_headers: dict[str, str] | None = {} if tracer is not None else None
        untrusted = 0
        for raw_name, value in scope.get("headers") or ():
            name = bytes(raw_name).lower()
            if name == _INBOUND:
                raw = value if raw is None else _REPEATED
            else:
                key = _IDENTITY_HEADERS.get(name)
                if key is not None:
                    if not self.trust_identity_headers:
                        untrusted += 1
                    elif len(value) <= 255:
                        environ[key] = bytes(value).decode("latin-1")
                elif (
                    trace_headers is not None
                    and name in _TRACE_HEADERS
                    and len(value) <= _MAX_TRACE_HEADER
                ):
                    _add_trace_header(trace_headers, name, value)
        if untrusted:
            # Dropped: neither the context nor the application sees them.
            self.untrusted_identity_headers += untrusted
            scope["headers"] = [
                (n, v) for n, v in scope["headers"] if bytes(n).lower() not in _IDENTITY_HEADERS
            ]
        # Reuse ids an earlier middleware of this kind left in the scope.
        for key in (ENV_REQUEST_ID, ENV_GLOBAL_REQUEST_ID):
            if key in scope:
                environ[key] = scope[key]
        if raw is not None and ENV_GLOBAL_REQUEST_ID not in environ:
            if raw is not _REPEATED and len(raw) <= MAX_REQUEST_ID_LENGTH:
                environ[ENV_GLOBAL_REQUEST_ID] = bytes(raw).decode("latin-1")
            context = RequestContext.from_environ(environ)
            if context.global_request_id is None:
                record_invalid(_SOURCE if raw is not _REPEATED else "a repeated header", raw)
        else:
            context = RequestContext.from_environ(environ)
        request_id = context.request_id
        scope[ENV_REQUEST_ID] = request_id
        if context.global_request_id is None:
            scope.pop(ENV_GLOBAL_REQUEST_ID, None)
        else:
            scope[ENV_GLOBAL_REQUEST_ID] = context.global_request_id
        id_bytes = request_id.encode("ascii")
        resp_headers = self._resp_headers

        status = 0

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                nonlocal status
                status = message.get("status") or 0
                headers = list(message.get("headers") or ())
                for wanted in resp_headers:
                    for existing, _ in headers:
                        if bytes(existing).lower() == wanted:
                            break
                    else:
                        headers.append((wanted, id_bytes))
                message["headers"] = headers
            await send(message)

        if watched is not None:
            if skip == SKIP_MEASURED:  # the budget's control group
                await self._measured_untraced(scope, receive, send_with_id, context, watched)
                return
            start_ns = time_ns()
            # The application's spans take the tracing-off path, and do nothing.
            context.untraced = True
            token = set_current(context)
            # A span current here (an entry point nested in another) is not this request's.
            span_token = set_current_span(None) if get_current_span() is not None else None
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                self._after_the_fact(scope, context, watched, start_ns, 0, exc)
                raise
            finally:
                if span_token is not None:
                    reset_current_span(span_token)
                reset_current(token)
            if (type(status) is int and status >= 500) or (
                time_ns() - start_ns >= watched.slow_ns > 0
            ):
                self._after_the_fact(scope, context, watched, start_ns, status, None)
            return
        if tracer is None or trace_headers is None:
            token = set_current(context)
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                reset_current(token)
            return
        try:
            served = self._serve(scope, context, tracer, trace_headers)
        except Exception:  # tracing must never break the request
            served = Served(context)
        served.enter()
        span = served.span

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                code = message.get("status")
                if type(code) is int:
                    served.status(code)
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            served.fail(exc)
            raise
        finally:
            served.leave()
            if span._recording:
                route = _route_template(scope)
                if route is not None:
                    span.update_name(f"{span.attributes[ATTR_METHOD]} {route}")  # type: ignore[union-attr]
                    span.set_attribute(ATTR_ROUTE, route)
            served.finish()

    async def _measured_untraced(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext, tracer: Tracer
    ) -> None:
        """An untraced request whose CPU time is measured: the untraced path
        above, step for step; what runs around the application is timed with
        the path's own steps or without them, in turn (what
        :meth:`~crosstrace.tracing.budget.CostModel.skipped_ns` is priced
        from), and the whole request. Under concurrent requests the whole
        request's thread CPU includes other tasks' work: noisier, but alike
        for every group; what runs around the application awaits nothing."""
        if self.tracer is None:  # the configured tracer, which may have changed
            self._price_with(tracer)
        costs = tracer.costs
        with_steps = costs.floor_turn()
        status: Any = 0

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                nonlocal status
                status = message.get("status") or 0
            await send(message)

        t0 = thread_time_ns() if with_steps else 0
        start_ns = time_ns()
        context.untraced = True
        span_token = set_current_span(None) if get_current_span() is not None else None
        if not with_steps:
            t0 = thread_time_ns()
        t1 = thread_time_ns()
        token = set_current(context)
        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            self._after_the_fact(scope, context, tracer, start_ns, 0, exc)
            raise
        finally:
            if span_token is not None:
                reset_current_span(span_token)
            reset_current(token)
        t2 = t3 = thread_time_ns()
        if not with_steps:
            t3 = thread_time_ns()
        late = (type(status) is int and status >= 500) or (
            time_ns() - start_ns >= tracer.slow_ns > 0
        )
        if with_steps:
            t3 = thread_time_ns()
        costs.observe_untraced(with_steps, t1 - t0 + t3 - t2, t3 - t0)
        if late:
            self._after_the_fact(scope, context, tracer, start_ns, status, None)

    def _after_the_fact(
        self,
        scope: Scope,
        context: RequestContext,
        tracer: Tracer,
        start_ns: int,
        code: Any,
        exc: BaseException | None,
    ) -> None:
        """The server span of an untraced request that failed or was slow (the
        trace headers are read only now)."""
        if self.tracer is None:  # the configured tracer, which may have changed
            self._price_with(tracer)
        describe = self._describer(scope, tracer, _trace_headers(scope))
        export_untraced(context, tracer, describe, start_ns, code if type(code) is int else 0, exc)

    def _probe(self, tracer: Tracer | None, children: int) -> Callable[[], None]:
        """One request through a copy of this middleware, for the cost model:
        traced by *tracer*, or with tracing off when it is ``None``; the
        application opens *children* spans of three attributes. It never
        awaits anything that suspends, so one ``send`` runs it to the end."""
        cls = RequestIdMiddleware if tracer is not None else _UntracedCopy
        mw = cls(_probe_app(children, tracer or DISABLED), self.compat_headers, tracer)
        scope = {"type": "http", "method": "GET", "path": "/probe/1", "headers": []}

        def run() -> None:
            coro = mw(dict(scope), _probe_receive, _probe_send)
            try:
                coro.send(None)
            except StopIteration:
                return
            coro.close()  # it suspended after all: not a fair probe, but no leak

        return run

    def _describer(self, scope: Scope, tracer: Tracer, trace_headers: dict[str, str]) -> Describe:
        """What the request's server span is made of, read when asked for."""
        normalize = self.path_normalizer

        def describe() -> tuple[str, dict[str, Any], RemoteContext]:
            name, attrs = server_span_name(
                scope.get("method") or "GET", scope.get("path") or "/", normalize
            )
            remote = extract_context(lambda name: trace_headers.get(name.lower()), tracer)
            return name, attrs, remote

        return describe

    def _serve(
        self, scope: Scope, context: RequestContext, tracer: Tracer, trace_headers: dict[str, str]
    ) -> Served:
        if self.tracer is None:  # the configured tracer, which may have changed
            self._price_with(tracer)
        describe = self._describer(scope, tracer, trace_headers)
        forced = (tracer.trigger_keys and _TRIGGER in trace_headers) or (
            tracer.osprofiler_keys and _OSPROFILER_INFO in trace_headers
        )
        return serve(
            context,
            tracer,
            kind=SpanKind.SERVER,
            describe=describe,
            traceparent=trace_headers.get(TRACEPARENT_HEADER),
            forced=bool(forced),
            budget=False,  # asked already
        )


def _no_tracer(service_name: str | None = None) -> Tracer | None:
    return None


class _UntracedCopy(RequestIdMiddleware):
    """The middleware with tracing off whatever is configured (cost probes)."""

    __slots__ = ()
    _default_tracer = staticmethod(_no_tracer)


async def _probe_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _probe_send(message: Message) -> None:
    return None


def _probe_app(children: int, tracer: Tracer) -> ASGIApp:
    attrs = {"probe.a": 1, "probe.b": "x", "probe.c": True}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        churn()
        for _ in range(children):
            with span("probe.child", SpanKind.INTERNAL, attrs, tracer):
                churn()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app
