"""``requests`` integration: send the global request id on every call.

::

    from crosstrace.integrations.requests import Session

    session = Session()
    session.get("http://image-api:9292/v2/images")  # carries X-OpenStack-Request-ID

While a request context is current, each request made through the session
carries ``X-OpenStack-Request-ID: <context.global_id>`` (a value the caller set
explicitly is kept), and the callee's local id is logged at debug level.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from crosstrace.context import get_current
from crosstrace.integrations import log_response_request_id
from crosstrace.propagation import HEADER_REQUEST_ID

__all__ = ["Session", "add_request_id"]

log = logging.getLogger(__name__)


def add_request_id(request: requests.PreparedRequest) -> None:
    """Add the current global id to *request* unless it already has the header."""
    ctx = get_current()
    if ctx is not None and HEADER_REQUEST_ID not in request.headers:
        request.headers[HEADER_REQUEST_ID] = ctx.global_id


class Session(requests.Session):
    """A :class:`requests.Session` that propagates the request id.

    Works for every verb helper, ``request()`` and ``send()`` with a prepared
    request, redirects included.
    """

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Add the header, send, and log the callee's request id at debug."""
        add_request_id(request)
        response = super().send(request, **kwargs)
        log_response_request_id(log, request.method or "", request.url or "", response.headers.get)
        return response
