"""Client integrations that carry the request context and the trace to other services.

Each module imports its third-party library and is imported only by users of
that library: ``crosstrace.integrations.requests``, ``.httpx`` (HTTP),
``.kombu`` (RPC over AMQP) and ``.sqlalchemy`` (DB spans). The shared helpers
here use the standard library only.

Every client span (HTTP CLIENT, kombu PRODUCER, SQL CLIENT) follows one rule: it
is a child of the current span, in that span's tracer; with no current span it
starts a local root with the integration's ``tracer=`` (default: the configured
tracer), and with neither it is not opened at all (only the request id travels).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from crosstrace.httpnames import (
    ATTR_METHOD,
    ATTR_METHOD_ORIGINAL,
    ATTR_SERVER_ADDRESS,
    ATTR_SERVER_PORT,
    ATTR_STATUS_CODE,
    ATTR_URL_FULL,
    known_method,
    normalize_path,
)
from crosstrace.ids import is_valid_request_id
from crosstrace.propagation import inject_headers
from crosstrace.tracing import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanKind,
    StatusCode,
    Tracer,
    record_failure,
    start_span,
)
from crosstrace.tracing import tracer as _tracer_mod
from crosstrace.tracing.spans import _current, _get_current_span

__all__ = [
    "COMPAT_RESPONSE_HEADERS",
    "ClientSpanScope",
    "HttpClientCall",
    "finish_http_client_span",
    "log_response_request_id",
    "safe_url",
    "start_client_span",
    "start_http_client_span",
    "tracing_active",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def tracing_active(tracer: Tracer | None) -> bool:
    """Whether a client span would be opened now (a current span, or a tracer)."""
    return _get_current_span() is not None or tracer is not None or _tracer_mod._tracer is not None


def start_client_span(
    name: str, kind: int, attributes: Mapping[str, Any], tracer: Tracer | None
) -> Span | NonRecordingSpan:
    """A client-side span by the rule above (never raises)."""
    try:
        return start_span(name, kind, attributes, tracer=tracer)
    except Exception:
        return INVALID_SPAN


def _url_without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment)
    )


def start_http_client_span(method: str, url: str, tracer: Tracer | None) -> Span | NonRecordingSpan:
    """Open the CLIENT span of an outbound HTTP call.

    Named ``"METHOD /normalised/{id}/path"``; attributes ``http.request.method``,
    ``url.full`` (without user info; secret query values are masked when the
    segment is kept), ``server.address`` and ``server.port``.
    """
    try:
        parts = urlsplit(url)
        name_method = known_method(method)
        attrs: dict[str, Any] = {
            ATTR_METHOD: name_method,
            ATTR_URL_FULL: _url_without_userinfo(url),
            ATTR_SERVER_ADDRESS: parts.hostname or "",
        }
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        if port:
            attrs[ATTR_SERVER_PORT] = port
        if name_method != method:
            attrs[ATTR_METHOD_ORIGINAL] = method[:32]
        name = f"{name_method} {normalize_path(parts.path)}"
    except ValueError:
        name, attrs = known_method(method), {ATTR_METHOD: known_method(method)}
    return start_client_span(name, SpanKind.CLIENT, attrs, tracer)


def finish_http_client_span(span: Span | NonRecordingSpan, status: int) -> None:
    """Record the response status; a 5xx sets error status."""
    span.set_attribute(ATTR_STATUS_CODE, status)
    if status >= 500:
        span.set_status(StatusCode.ERROR, f"HTTP {status}")


class ClientSpanScope:
    """The current-span scope of one outbound call's client-side span.

    Shared by the HTTP (``requests``, ``httpx`` sync and async) and kombu
    PRODUCER paths, used only once :func:`tracing_active` said yes, so untraced
    calls pay nothing::

        with ClientSpanScope(start_client_span(name, kind, attrs, tracer)):
            result = send(...)

    Entering makes *span* current. Leaving restores the previous current span;
    on an exception it records the failure (``Exception`` only, not
    ``KeyboardInterrupt`` and the like) and lets it propagate. The span is ended
    either way.
    """

    __slots__ = ("_token", "span")

    def __init__(self, span: Span | NonRecordingSpan) -> None:
        self.span = span

    def __enter__(self) -> Self:
        self._token = _current.set(self.span)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is not None:
            try:
                if isinstance(exc, Exception):
                    record_failure(self.span, exc)
                self.span.end()
            finally:
                _current.reset(self._token)
            return False
        _current.reset(self._token)
        self._succeeded()
        self.span.end()
        return False

    def _succeeded(self) -> None:
        """Record the outcome of a call that returned, before the span ends."""


class HttpClientCall(ClientSpanScope):
    """The CLIENT span around sending one HTTP request::

        with HttpClientCall(method, url, request.headers, tracer) as call:
            response = send(request)
            call.status = response.status_code

    Opens the span with :func:`start_http_client_span`; entering also writes the
    request-id and trace headers into *headers* (in the span's scope), and a
    call that returned records :attr:`status` (see
    :func:`finish_http_client_span`).
    """

    __slots__ = ("_headers", "status")

    def __init__(
        self, method: str, url: str, headers: MutableMapping[str, str], tracer: Tracer | None
    ) -> None:
        super().__init__(start_http_client_span(method, url, tracer))
        self._headers = headers
        #: The response status, set by the caller once the response arrived.
        self.status: int | None = None

    def __enter__(self) -> Self:
        super().__enter__()
        try:
            inject_headers(self._headers)
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _succeeded(self) -> None:
        if self.status is not None:
            finish_http_client_span(self.span, self.status)


#: Response headers that may carry the callee's local id, in keystoneauth's order.
COMPAT_RESPONSE_HEADERS = ("x-openstack-request-id", "x-compute-request-id")


def safe_url(url: str) -> str:
    """*url* without credentials, query string or fragment, for log lines."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def log_response_request_id(
    log: logging.Logger, method: str, url: str, get_header: Callable[[str], Any]
) -> None:
    """Log ``"<METHOD> <url> used request id req-..."`` at debug, like keystoneauth.

    The callee's id is logged only when it is a valid request id.
    """
    if not log.isEnabledFor(logging.DEBUG):
        return
    for name in COMPAT_RESPONSE_HEADERS:
        value = get_header(name)
        if value is not None:
            if is_valid_request_id(value):
                log.debug("%s %s used request id %s", method, safe_url(url), value)
            return
