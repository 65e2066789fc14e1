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

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from random import getrandbits
from time import time_ns
from typing import Any

from crosstrace.context import (
    ENV_GLOBAL_REQUEST_ID,
    ENV_REQUEST_ID,
    RequestContext,
    reset_current,
    set_current,
)
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
from crosstrace.tracing.model import RemoteContext, SpanKind
from crosstrace.tracing.serve import Served, serve
from crosstrace.tracing.tracer import TRACE_ALL, Tracer, get_tracer
from crosstrace.trust import OSPROFILER_HMAC_HEADER, OSPROFILER_INFO_HEADER, TRIGGER_HEADER
from crosstrace.wsgi import parse_header_list

__all__ = ["ASGIApp", "RequestIdMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (or pass a non-http scope through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        environ: dict[str, Any] = {}
        raw: bytes | None = None
        tracer = self.tracer or get_tracer()
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
                    text = bytes(value).decode("latin-1")
                    k = name.decode("ascii")
                    # Repeated tracestate headers are one list (RFC 9110 field lines).
                    trace_headers[k] = f"{trace_headers[k]},{text}" if k in trace_headers else text
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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                for wanted in resp_headers:
                    for existing, _ in headers:
                        if bytes(existing).lower() == wanted:
                            break
                    else:
                        headers.append((wanted, id_bytes))
                message["headers"] = headers
            await send(message)

        if tracer is None or trace_headers is None:
            token = set_current(context)
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                reset_current(token)
            return
        if tracer.trace_threshold < TRACE_ALL and getrandbits(16) >= tracer.trace_threshold:
            # Over a small budget: this request runs untraced; only a failure
            # or a slow run exports its server span, built after the fact.
            tracer.accounting.bypassed += 1
            await self._untraced(scope, receive, send_with_id, context, tracer, trace_headers)
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

    async def _untraced(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        tracer: Tracer,
        trace_headers: dict[str, str],
    ) -> None:
        start_ns = time_ns()
        codes: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start" and type(message.get("status")) is int:
                codes.append(message["status"])
            await send(message)

        token = set_current(context)
        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            failure = exc
            raise
        finally:
            reset_current(token)
            code = codes[-1] if codes else 0
            if failure is not None or code >= 500 or time_ns() - start_ns >= tracer.slow_ns > 0:
                try:
                    served = self._serve(scope, context, tracer, trace_headers)
                    if failure is not None:
                        served.fail(failure)
                    served.export_after_the_fact(start_ns, code)
                except Exception:  # tracing must never break the request
                    log.debug("exporting an untraced request failed", exc_info=True)

    def _serve(
        self, scope: Scope, context: RequestContext, tracer: Tracer, trace_headers: dict[str, str]
    ) -> Served:
        normalize = self.path_normalizer

        def describe() -> tuple[str, dict[str, Any], RemoteContext]:
            name, attrs = server_span_name(
                scope.get("method") or "GET", scope.get("path") or "/", normalize
            )
            remote = extract_context(lambda name: trace_headers.get(name.lower()), tracer)
            return name, attrs, remote

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
        )
