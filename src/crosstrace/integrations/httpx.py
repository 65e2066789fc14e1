"""``httpx`` integration, sync and async: send the global request id and the trace.

::

    from crosstrace.integrations.httpx import AsyncClient, Client

    with Client() as client:                 # or Client(tracer=get_tracer("nova"))
        client.get("http://volume-api:8776/v3/volumes")

While a request context is current, each request sent by the client carries
``X-OpenStack-Request-ID: <context.global_id>`` (a value set explicitly is kept),
and the callee's local id is logged at debug level. With tracing on, each
request is a CLIENT span (see :mod:`crosstrace.integrations` for which tracer)
whose ``traceparent``/``tracestate`` go out with it; a 5xx or an exception sets
error status. Streaming (``client.stream``) goes through the same path; the
span ends when the response headers arrive.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from crosstrace.context import get_current
from crosstrace.integrations import HttpClientCall, log_response_request_id, tracing_active
from crosstrace.propagation import HEADER_REQUEST_ID
from crosstrace.tracing import Tracer

__all__ = ["AsyncClient", "Client", "add_request_id"]

log = logging.getLogger(__name__)


def add_request_id(request: httpx.Request) -> None:
    """Add the current global id to *request* unless it already has the header."""
    ctx = get_current()
    if ctx is not None and HEADER_REQUEST_ID not in request.headers:
        request.headers[HEADER_REQUEST_ID] = ctx.global_id


def _log_response(request: httpx.Request, response: httpx.Response) -> None:
    log_response_request_id(log, request.method, str(request.url), response.headers.get)


class Client(httpx.Client):
    """An :class:`httpx.Client` that propagates the request id and the trace.

    :param tracer: the tracer for calls made outside any span (default: the
        configured one). Other arguments are :class:`httpx.Client`'s.
    """

    def __init__(self, *args: Any, tracer: Tracer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracer = tracer

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Add the headers, send in a CLIENT span, log the callee's request id at debug."""
        if not tracing_active(self.tracer):
            add_request_id(request)
            response = super().send(request, **kwargs)
            _log_response(request, response)
            return response
        with HttpClientCall(request.method, str(request.url), request.headers, self.tracer) as call:
            response = super().send(request, **kwargs)
            call.status = response.status_code
        _log_response(request, response)
        return response


class AsyncClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` that propagates the request id and the trace.

    :param tracer: the tracer for calls made outside any span (default: the
        configured one). Other arguments are :class:`httpx.AsyncClient`'s.
    """

    def __init__(self, *args: Any, tracer: Tracer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracer = tracer

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Add the headers, send in a CLIENT span, log the callee's request id at debug."""
        if not tracing_active(self.tracer):
            add_request_id(request)
            response = await super().send(request, **kwargs)
            _log_response(request, response)
            return response
        with HttpClientCall(request.method, str(request.url), request.headers, self.tracer) as call:
            response = await super().send(request, **kwargs)
            call.status = response.status_code
        _log_response(request, response)
        return response
