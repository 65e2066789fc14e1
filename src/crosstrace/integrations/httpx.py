"""``httpx`` integration, sync and async: send the global request id on every call.

::

    from crosstrace.integrations.httpx import AsyncClient, Client

    with Client() as client:
        client.get("http://volume-api:8776/v3/volumes")

While a request context is current, each request sent by the client carries
``X-OpenStack-Request-ID: <context.global_id>`` (a value set explicitly is kept),
and the callee's local id is logged at debug level. Streaming (``client.stream``)
goes through the same path.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from crosstrace.context import get_current
from crosstrace.integrations import log_response_request_id
from crosstrace.propagation import HEADER_REQUEST_ID

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
    """An :class:`httpx.Client` that propagates the request id."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Add the header, send, and log the callee's request id at debug."""
        add_request_id(request)
        response = super().send(request, **kwargs)
        _log_response(request, response)
        return response


class AsyncClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` that propagates the request id."""

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Add the header, send, and log the callee's request id at debug."""
        add_request_id(request)
        response = await super().send(request, **kwargs)
        _log_response(request, response)
        return response
