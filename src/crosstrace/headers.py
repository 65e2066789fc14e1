"""Every header name and WSGI environ key crosstrace reads or writes, in one place.

Kept as module constants the way ``oslo_middleware/request_id.py`` keeps its
own, so a reader (and a grep) finds each wire name once. The modules that use
them import them from here; some re-export them under the names they always had.
:func:`parse_header_list` reads a configured list of header names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "CONTEXT_KEY",
    "ENV_DOMAIN_ID",
    "ENV_GLOBAL_REQUEST_ID",
    "ENV_IS_ADMIN_PROJECT",
    "ENV_OSPROFILER_INFO",
    "ENV_PROJECT_DOMAIN_ID",
    "ENV_PROJECT_ID",
    "ENV_REQUEST_ID",
    "ENV_REQUEST_ID_HEADER",
    "ENV_ROLES",
    "ENV_ROUTE",
    "ENV_TRACEPARENT",
    "ENV_TRACESTATE",
    "ENV_TRIGGER",
    "ENV_USER_DOMAIN_ID",
    "ENV_USER_ID",
    "HEADER_REQUEST_ID",
    "HEADER_REQUEST_ID_LOWER",
    "HTTP_RESP_HEADER_REQUEST_ID",
    "OSPROFILER_HMAC_HEADER",
    "OSPROFILER_INFO_HEADER",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TRIGGER_HEADER",
    "parse_header_list",
]

# -- request ids -------------------------------------------------------------------
#: The request id header, sent with the global id and returned with the local id.
HEADER_REQUEST_ID = "X-OpenStack-Request-ID"
#: The same, lowercased (HTTP/2, ASGI and response headers).
HEADER_REQUEST_ID_LOWER = "x-openstack-request-id"
#: Response header that carries this service's local request id.
HTTP_RESP_HEADER_REQUEST_ID = HEADER_REQUEST_ID_LOWER
#: The inbound ``X-OpenStack-Request-ID`` header as a WSGI environ key.
ENV_REQUEST_ID_HEADER = "HTTP_X_OPENSTACK_REQUEST_ID"
#: WSGI environ keys, the same ones oslo.middleware's ``request_id`` filter sets.
ENV_REQUEST_ID = "openstack.request_id"
ENV_GLOBAL_REQUEST_ID = "openstack.global_request_id"
#: Message header / JSON key that carries the whole request context (RPC).
CONTEXT_KEY = "crosstrace.context"

# -- identity (keystonemiddleware's headers, as WSGI environ keys) ------------------
ENV_USER_ID = "HTTP_X_USER_ID"
ENV_PROJECT_ID = "HTTP_X_PROJECT_ID"
ENV_DOMAIN_ID = "HTTP_X_DOMAIN_ID"
ENV_USER_DOMAIN_ID = "HTTP_X_USER_DOMAIN_ID"
ENV_PROJECT_DOMAIN_ID = "HTTP_X_PROJECT_DOMAIN_ID"
ENV_ROLES = "HTTP_X_ROLES"
ENV_IS_ADMIN_PROJECT = "HTTP_X_IS_ADMIN_PROJECT"

# -- trace context -----------------------------------------------------------------
#: W3C Trace Context header names (HTTP header names are case-insensitive).
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
ENV_TRACEPARENT = "HTTP_TRACEPARENT"
ENV_TRACESTATE = "HTTP_TRACESTATE"
#: A signed request to record a trace (see :mod:`crosstrace.trust`).
TRIGGER_HEADER = "X-Crosstrace-Trigger"
#: OSProfiler's signed trace headers, accepted for compatibility.
OSPROFILER_INFO_HEADER = "X-Trace-Info"
OSPROFILER_HMAC_HEADER = "X-Trace-HMAC"
ENV_TRIGGER = "HTTP_X_CROSSTRACE_TRIGGER"
ENV_OSPROFILER_INFO = "HTTP_X_TRACE_INFO"

# -- span naming -------------------------------------------------------------------
#: WSGI environ key (ASGI scope key) an application may set to its route template.
ENV_ROUTE = "crosstrace.route"


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
