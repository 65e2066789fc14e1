"""Names and attributes of HTTP spans, shared by the middleware and the clients.

Span names must have low cardinality (one per operation, not one per
resource), so ``"GET /v2/images/3f2a..."`` becomes ``"GET /v2/images/{id}"``:
:func:`normalize_path` replaces every path segment that looks like an id
(a UUID with or without dashes, a request id, a long hex string, a number)
with ``{id}``. A route template the framework knows (Starlette's matched
route, or the WSGI environ key :data:`ENV_ROUTE` set by the application) wins
over the normalised path. Methods outside the standard set are named
``_OTHER`` (the caller's raw value goes to ``http.request.method_original``),
so a client cannot grow the set of span names, as the OpenTelemetry HTTP
conventions ask.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from crosstrace.headers import ENV_ROUTE

__all__ = [
    "ATTR_METHOD",
    "ATTR_METHOD_ORIGINAL",
    "ATTR_ROUTE",
    "ATTR_SERVER_ADDRESS",
    "ATTR_SERVER_PORT",
    "ATTR_STATUS_CODE",
    "ATTR_URL_FULL",
    "ATTR_URL_PATH",
    "ENV_ROUTE",
    "PathNormalizer",
    "known_method",
    "normalize_path",
    "server_span_name",
    "status_code",
]

ATTR_METHOD = "http.request.method"
ATTR_METHOD_ORIGINAL = "http.request.method_original"
ATTR_ROUTE = "http.route"
ATTR_STATUS_CODE = "http.response.status_code"
ATTR_URL_PATH = "url.path"
ATTR_URL_FULL = "url.full"
ATTR_SERVER_ADDRESS = "server.address"
ATTR_SERVER_PORT = "server.port"


#: Turns a request path into the low-cardinality part of a span name.
PathNormalizer = Callable[[str], str]

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
#: Longest normalised path kept in a span name.
MAX_NAME_PATH = 200

_ID_SEGMENT = re.compile(
    r"(?<=/)(?:"
    r"[0-9]+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-fA-F]{16,}"
    r")(?=/|$)",
    re.ASCII,
)


def normalize_path(path: str) -> str:
    """*path* with id-like segments replaced by ``{id}`` (at most 200 characters)."""
    out = _ID_SEGMENT.sub("{id}", path) if path else "/"
    return out if len(out) <= MAX_NAME_PATH else out[:MAX_NAME_PATH] + "..."


def known_method(method: str) -> str:
    """*method* if it is a standard HTTP method, else ``"_OTHER"``."""
    return method if method in _METHODS else "_OTHER"


def server_span_name(
    raw_method: str, path: str, normalize: Callable[[str], str]
) -> tuple[str, dict[str, Any]]:
    """The name and first attributes of a SERVER span for a request: method and
    normalised path, the raw method kept aside when it is not a standard one."""
    method = known_method(raw_method)
    attrs: dict[str, Any] = {ATTR_METHOD: method, ATTR_URL_PATH: path}
    if method != raw_method:
        attrs[ATTR_METHOD_ORIGINAL] = str(raw_method)[:32]
    return f"{method} {normalize(path)}", attrs


def status_code(status: Any) -> int:
    """The integer code of a WSGI status line (``"200 OK"``) or an int; 0 if unreadable."""
    if type(status) is int:
        return status
    try:
        return int(str(status)[:3])
    except ValueError:
        return 0
