"""keystoneauth1 integration: every call through a ``Session`` or ``Adapter`` sends the
current global request id and ``traceparent``, as a CLIENT span.

The change in a service (where it builds its session, e.g. nova's
``utils.get_ksa_adapter`` or a python-*client's session loading)::

    from crosstrace.integrations.keystoneauth import TracingSession, adapter

    session = TracingSession(auth=auth_plugin)              # instead of Session(...)
    compute = adapter(session, service_type="compute")      # instead of Adapter(...)

or, for a session made elsewhere (``loading.load_session_from_conf_options``)::

    session = traced(session)

Each request:

* sends ``X-OpenStack-Request-ID: <global id>`` of the current request
  (keystoneauth's ``Session()`` has no such parameter; an explicit
  ``global_request_id=`` or header, e.g. from ``Adapter(global_request_id=)``,
  is kept);
* with tracing on, runs in a CLIENT span (``http.request.method``, ``url.full``,
  ``server.address``/``server.port``, ``http.response.status_code``; a 5xx or a
  failure sets error status) and sends that span's ``traceparent``/``tracestate``;
* is logged with the callee's local id by keystoneauth itself, at debug on the
  ``keystoneauth.session`` logger: ``"GET call to compute for <url> used request
  id req-..."``, so with crosstrace's log filter the line carries both the
  caller's ids and the callee's.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from keystoneauth1 import adapter as _adapter
from keystoneauth1 import exceptions as _exceptions
from keystoneauth1 import session as _session

from crosstrace.context import get_current
from crosstrace.httpnames import ATTR_STATUS_CODE, ATTR_URL_FULL
from crosstrace.integrations import HttpClientCall, tracing_active
from crosstrace.propagation import HEADER_REQUEST_ID
from crosstrace.tracer import Tracer

__all__ = ["TracingAdapter", "TracingSession", "adapter", "traced"]

_HEADER_LOWER = HEADER_REQUEST_ID.lower()


def _has_header(headers: MutableMapping[str, Any], name: str) -> bool:
    return any(str(k).lower() == name for k in headers)


def _request(
    session: _session.Session,
    tracer: Tracer | None,
    url: str,
    method: str,
    kwargs: dict[str, Any],
) -> Any:
    """``Session.request`` with the global id and, when tracing, a CLIENT span."""
    headers = kwargs.get("headers")
    if headers is None:
        headers = kwargs["headers"] = {}
    if kwargs.get("global_request_id") is None and not _has_header(headers, _HEADER_LOWER):
        ctx = get_current()
        if ctx is not None:
            kwargs["global_request_id"] = ctx.global_id
    send = _session.Session.request
    if not tracing_active(tracer):
        return send(session, url, method, **kwargs)
    with HttpClientCall(method, _span_url(session, url, kwargs), headers, tracer) as call:
        try:
            resp = send(session, url, method, **kwargs)
        except _exceptions.HttpError as exc:
            if exc.http_status:
                call.span.set_attribute(ATTR_STATUS_CODE, int(exc.http_status))
            raise
        call.status = resp.status_code
        if resp.url and resp.url != url:
            call.span.set_attribute(ATTR_URL_FULL, str(resp.url).split("?", 1)[0])
    return resp


def _span_url(session: _session.Session, url: str, kwargs: dict[str, Any]) -> str:
    """The URL for the span: absolute as given, else the endpoint's (never authenticates)."""
    if "://" in url:
        return url
    endpoint = kwargs.get("endpoint_override")
    if isinstance(endpoint, str) and "://" in endpoint:
        return endpoint.rstrip("/") + "/" + url.lstrip("/")
    service = (kwargs.get("endpoint_filter") or {}).get("service_type") or "unknown"
    return f"http://{service}/{url.lstrip('/')}"


class TracingSession(_session.Session):
    """keystoneauth1's ``Session`` whose requests carry the current global id and
    trace, each in a CLIENT span.

    :param tracer: the tracer for calls made outside any span (default: the
        configured one). Other arguments are ``Session``'s.
    """

    def __init__(self, *args: Any, tracer: Tracer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crosstrace_tracer = tracer

    def request(  # type: ignore[override]  # keystoneauth's keywords, passed through
        self, url: str, method: str, **kwargs: Any
    ) -> Any:
        """``Session.request``, traced."""
        return _request(self, self.crosstrace_tracer, url, method, kwargs)


def traced(session: _session.Session, tracer: Tracer | None = None) -> TracingSession:
    """Make an existing ``Session`` a :class:`TracingSession` (in place; returned)."""
    if isinstance(session, TracingSession):
        return session
    if type(session) is not _session.Session:
        raise TypeError(f"cannot trace a {type(session).__name__}; use TracingSession")
    session.__class__ = TracingSession
    tracing: TracingSession = session  # type: ignore[assignment]
    tracing.crosstrace_tracer = tracer
    return tracing


class TracingAdapter(_adapter.Adapter):
    """keystoneauth1's ``Adapter`` sending the current global id (unless its own
    ``global_request_id`` is set), traced through its session."""

    def __init__(self, session: _session.Session, *args: Any, **kwargs: Any) -> None:
        # A plain Session becomes a TracingSession (in place): calls made through
        # it directly are traced too.
        if type(session) is _session.Session:
            session = traced(session)
        super().__init__(session, *args, **kwargs)


def adapter(session: _session.Session, **kwargs: Any) -> TracingAdapter:
    """A :class:`TracingAdapter` over *session* (``Adapter``'s keyword arguments)."""
    return TracingAdapter(session, **kwargs)
