"""Client integrations that carry the request context to other services.

Each module imports its third-party library and is imported only by users of
that library: ``crosstrace.integrations.requests``, ``.httpx`` (HTTP), and
``.kombu`` (RPC over AMQP). The shared helpers here use the standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crosstrace.ids import is_valid_request_id

__all__ = ["COMPAT_RESPONSE_HEADERS", "log_response_request_id", "safe_url"]

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
