"""``requests`` integration: send the global request id and the trace on every call.

::

    from crosstrace.integrations.requests import Session

    session = Session()                                  # or Session(tracer=get_tracer("nova"))
    session.get("http://image-api:9292/v2/images")       # carries X-OpenStack-Request-ID

While a request context is current, each request made through the session
carries ``X-OpenStack-Request-ID: <context.global_id>`` (a value the caller set
explicitly is kept), and the callee's local id is logged at debug level. With
tracing on, each call is a CLIENT span (see :mod:`crosstrace.integrations` for
which tracer) whose ``traceparent``/``tracestate`` go out with the request;
``http.response.status_code`` is recorded, and a 5xx or an exception (refused
connection, timeout) sets error status.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from crosstrace.context import get_current
from crosstrace.integrations import HttpClientCall, log_response_request_id, tracing_active
from crosstrace.propagation import HEADER_REQUEST_ID
from crosstrace.tracing import Tracer

__all__ = ["Session", "add_request_id"]

log = logging.getLogger(__name__)


def add_request_id(request: requests.PreparedRequest) -> None:
    """Add the current global id to *request* unless it already has the header."""
    ctx = get_current()
    if ctx is not None and HEADER_REQUEST_ID not in request.headers:
        request.headers[HEADER_REQUEST_ID] = ctx.global_id


class Session(requests.Session):
    """A :class:`requests.Session` that propagates the request id and the trace.

    Works for every verb helper, ``request()`` and ``send()`` with a prepared
    request, redirects included (each redirect is a CLIENT span of its own).

    :param tracer: the tracer for calls made outside any span (default: the
        configured one).
    """

    def __init__(self, tracer: Tracer | None = None) -> None:
        super().__init__()
        self.tracer = tracer

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Add the headers, send in a CLIENT span, log the callee's request id at debug."""
        method = request.method or ""
        url = request.url or ""
        if not tracing_active(self.tracer):
            add_request_id(request)
            response = super().send(request, **kwargs)
            log_response_request_id(log, method, url, response.headers.get)
            return response
        with HttpClientCall(method, url, request.headers, self.tracer) as call:
            response = super().send(request, **kwargs)
            call.status = response.status_code
        log_response_request_id(log, method, url, response.headers.get)
        return response
