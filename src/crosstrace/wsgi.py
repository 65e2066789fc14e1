"""WSGI request-id middleware, a drop-in for oslo.middleware's ``request_id`` filter.

For every request it:

* takes a valid inbound ``X-OpenStack-Request-ID`` as the global request id
  (an invalid one is dropped, counted and logged at debug without its value);
* makes a fresh local request id;
* stores both under the ``openstack.*`` environ keys before the application runs
  (or reuses them when oslo.middleware's filter already ran in front);
* makes a :class:`~crosstrace.context.RequestContext` current while the
  application runs and while a streamed body is produced, and clears it after;
* returns the local id in ``x-openstack-request-id`` and each compat header,
  unless the application set that header itself.

PasteDeploy::

    [filter:request_id]
    paste.filter_factory = crosstrace.wsgi:filter_factory
    compat_headers = x-compute-request-id
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol

from crosstrace.context import (
    ENV_GLOBAL_REQUEST_ID,
    ENV_REQUEST_ID,
    RequestContext,
    reset_current,
    set_current,
)
from crosstrace.propagation import HEADER_REQUEST_ID_LOWER, record_invalid

__all__ = [
    "ENV_GLOBAL_REQUEST_ID",
    "ENV_REQUEST_ID",
    "ENV_REQUEST_ID_HEADER",
    "HTTP_RESP_HEADER_REQUEST_ID",
    "RequestIdMiddleware",
    "filter_factory",
    "parse_header_list",
]

#: The inbound ``X-OpenStack-Request-ID`` header as a WSGI environ key.
ENV_REQUEST_ID_HEADER = "HTTP_X_OPENSTACK_REQUEST_ID"
#: Response header that carries this service's local request id.
HTTP_RESP_HEADER_REQUEST_ID = HEADER_REQUEST_ID_LOWER

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class StartResponse(Protocol):
    """The WSGI ``start_response`` callable."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = ...,
        /,
    ) -> Callable[[bytes], object]: ...


WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_SPLIT_RE = re.compile(r"[\s,]+")


def parse_header_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Header names from a space- or comma-separated string (or an iterable).

    Names are lowercased and must be valid HTTP tokens (``ValueError`` otherwise),
    so that a typo in a paste ini fails at start-up, not on a request.
    """
    if value is None:
        return ()
    items = _HEADER_SPLIT_RE.split(value) if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        if not _HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"not a valid HTTP header name: {name!r}")
        if name not in names:
            names.append(name)
    return tuple(names)


class _ContextBody:
    """A response iterable that makes the request context current while the
    application's iterable produces each chunk and while it is closed."""

    __slots__ = ("_close", "_context", "_iter")

    def __init__(self, body: Iterable[bytes], context: RequestContext) -> None:
        self._context = context
        self._iter: Iterator[bytes] | None = None
        self._close = getattr(body, "close", None)
        token = set_current(context)
        try:
            # A generator's code first runs on next(); other iterables may run
            # application code in __iter__ itself.
            self._iter = iter(body)
        finally:
            reset_current(token)

    def __iter__(self) -> _ContextBody:
        return self

    def __next__(self) -> bytes:
        token = set_current(self._context)
        try:
            return next(self._iter)  # type: ignore[arg-type]
        finally:
            reset_current(token)

    def close(self) -> None:
        close = self._close
        if close is not None:
            token = set_current(self._context)
            try:
                close()
            finally:
                reset_current(token)


class RequestIdMiddleware:
    """Give each request a local id and adopt a valid inbound global id.

    :param app: the WSGI application to wrap.
    :param compat_headers: extra response headers that carry the local id too
        (e.g. ``x-compute-request-id``), as names or a space/comma separated string.
    """

    __slots__ = ("_resp_headers", "app", "compat_headers")

    def __init__(
        self, app: WSGIApplication, compat_headers: str | Iterable[str] | None = ()
    ) -> None:
        if not callable(app):
            raise ValueError("app must be a WSGI application (a callable)")
        self.app = app
        self.compat_headers = tuple(
            h for h in parse_header_list(compat_headers) if h != HTTP_RESP_HEADER_REQUEST_ID
        )
        self._resp_headers = (HTTP_RESP_HEADER_REQUEST_ID, *self.compat_headers)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request under its request context."""
        # Reuse ids an earlier request-id filter (oslo.middleware's) put there.
        earlier_id = environ.get(ENV_REQUEST_ID)
        global_id = environ.get(ENV_GLOBAL_REQUEST_ID)
        source = "an earlier request-id filter"
        if global_id is None:
            global_id = environ.get(ENV_REQUEST_ID_HEADER)
            if global_id is not None:
                # Validated once, by from_environ below; removed again if refused.
                # A repeated header arrives joined with "," and never matches.
                environ[ENV_GLOBAL_REQUEST_ID] = global_id
                source = "the X-OpenStack-Request-ID header"
        context = RequestContext.from_environ(environ)
        if global_id is not None and context.global_request_id is None:
            # Refused: never left where the application or a log could see it.
            # (oslo.middleware matches with ``$``, which lets a trailing newline in.)
            del environ[ENV_GLOBAL_REQUEST_ID]
            record_invalid(source, global_id)
        request_id = context.request_id
        if request_id is not earlier_id:
            environ[ENV_REQUEST_ID] = request_id
        resp_headers = self._resp_headers

        def _start_response(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: _ExcInfo | None = None,
        ) -> Callable[[bytes], object]:
            for name in resp_headers:
                for existing, _ in headers:
                    if existing.lower() == name:
                        break
                else:
                    headers.append((name, request_id))
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        token = set_current(context)
        try:
            body = self.app(environ, _start_response)
        finally:
            reset_current(token)
        if type(body) is list or type(body) is tuple:
            return body
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            return body
        return _ContextBody(body, context)


def filter_factory(
    global_conf: Mapping[str, Any], **local_conf: Any
) -> Callable[[WSGIApplication], RequestIdMiddleware]:
    """PasteDeploy ``paste.filter_factory``.

    ``compat_headers`` (space or comma separated) is read from the filter
    section, falling back to ``[DEFAULT]``.
    """
    conf = dict(global_conf)
    conf.update(local_conf)
    compat = parse_header_list(conf.get("compat_headers"))

    def _filter(app: WSGIApplication) -> RequestIdMiddleware:
        return RequestIdMiddleware(app, compat_headers=compat)

    return _filter
