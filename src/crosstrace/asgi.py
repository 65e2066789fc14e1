"""ASGI request-id middleware: the behaviour of :mod:`crosstrace.wsgi` for ASGI apps.

For each ``http`` request it adopts a valid inbound ``X-OpenStack-Request-ID`` as
the global id (an invalid or repeated one is dropped, counted and logged at
debug without its value), makes a fresh local id, stores both in the scope under
the ``openstack.*`` keys, keeps a :class:`~crosstrace.context.RequestContext`
current while the application runs (streamed bodies included), and returns the
local id in ``x-openstack-request-id`` and each compat header unless the
application set it. ``lifespan`` and ``websocket`` scopes pass through untouched.

Starlette / FastAPI::

    app.add_middleware(RequestIdMiddleware, compat_headers=("x-compute-request-id",))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from crosstrace.context import (
    ENV_GLOBAL_REQUEST_ID,
    ENV_REQUEST_ID,
    RequestContext,
    reset_current,
    set_current,
)
from crosstrace.ids import MAX_REQUEST_ID_LENGTH
from crosstrace.propagation import HEADER_REQUEST_ID_LOWER, record_invalid
from crosstrace.wsgi import parse_header_list

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


class RequestIdMiddleware:
    """Give each ASGI http request a local id and adopt a valid inbound global id.

    :param app: the ASGI application to wrap.
    :param compat_headers: extra response headers that carry the local id too,
        as names or a space/comma separated string.
    """

    __slots__ = ("_resp_headers", "app", "compat_headers")

    def __init__(self, app: ASGIApp, compat_headers: str | Iterable[str] | None = ()) -> None:
        if not callable(app):
            raise ValueError("app must be an ASGI application (a callable)")
        self.app = app
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
        for raw_name, value in scope.get("headers") or ():
            name = bytes(raw_name).lower()
            if name == _INBOUND:
                raw = value if raw is None else _REPEATED
            else:
                key = _IDENTITY_HEADERS.get(name)
                if key is not None and len(value) <= 255:
                    environ[key] = bytes(value).decode("latin-1")
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

        token = set_current(context)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_current(token)
