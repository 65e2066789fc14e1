"""Carry the request context across process boundaries.

:func:`inject` writes the current context into a carrier (message headers, an
outbound HTTP header dict); :func:`extract` reads one back on the receiving side.
Both are the single place where the wire fields are written and read, so trace
context (``traceparent``/``tracestate``) joins them here later.

Inbound values are untrusted: an invalid request id is dropped, counted (see
:func:`stats`) and logged at debug level without its value.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from crosstrace.context import RequestContext, get_current
from crosstrace.ids import generate_request_id, is_valid_request_id

__all__ = [
    "CONTEXT_KEY",
    "HEADER_REQUEST_ID",
    "HEADER_REQUEST_ID_LOWER",
    "extract",
    "inject",
    "record_invalid",
    "stats",
    "valid_inbound_id",
]

log = logging.getLogger(__name__)

#: The header that carries the global request id between services.
HEADER_REQUEST_ID = "X-OpenStack-Request-ID"
#: The same, as HTTP/2, ASGI and most header maps spell it.
HEADER_REQUEST_ID_LOWER = "x-openstack-request-id"
#: Message-header key under which :func:`inject` puts the context dict (for RPC).
CONTEXT_KEY = "crosstrace.context"

#: Counter names reported by :func:`stats`.
STAT_INVALID_HTTP = "invalid_http_request_id"
STAT_INVALID_MESSAGE = "invalid_message_request_id"


class _Counter:
    """An exact counter without a lock, and bounded in size.

    ``next()`` on an :func:`itertools.count` is a single C call, atomic under
    the GIL; its ``repr`` (``count(N)``) is the only way to read it without
    advancing it.
    """

    __slots__ = ("_count", "add")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.add = self._count.__next__

    def value(self) -> int:
        return int(repr(self._count)[6:-1])


class _Counters:
    __slots__ = ("_by_name",)

    def __init__(self) -> None:
        self._by_name = {STAT_INVALID_HTTP: _Counter(), STAT_INVALID_MESSAGE: _Counter()}

    def add(self, name: str) -> None:
        self._by_name[name].add()

    def snapshot(self) -> dict[str, int]:
        return {name: counter.value() for name, counter in self._by_name.items()}


_counters = _Counters()


def stats() -> dict[str, int]:
    """Counts of dropped inbound request ids since the process started.

    ``invalid_http_request_id``: ``X-OpenStack-Request-ID`` headers refused by the
    WSGI/ASGI middleware; ``invalid_message_request_id``: ids refused by
    :func:`extract`.
    """
    return _counters.snapshot()


def record_invalid(source: str, value: str | bytes, where: str = STAT_INVALID_HTTP) -> None:
    """Count one refused inbound id and log it at debug level, without its value.

    Only the length is logged: the value may carry log-injection payloads.
    """
    _counters.add(where)
    log.debug("dropped an invalid request id from %s (%d characters)", source, len(value))


def valid_inbound_id(value: Any, source: str, where: str = STAT_INVALID_HTTP) -> str | None:
    """*value* if it is a valid request id, else ``None`` (counted when present)."""
    if value is None:
        return None
    if type(value) is str and is_valid_request_id(value):
        return value
    if isinstance(value, (str, bytes)):
        record_invalid(source, value, where)
    else:
        _counters.add(where)
        log.debug("dropped a request id of type %s from %s", type(value).__name__, source)
    return None


def inject(carrier: MutableMapping[str, Any], context: RequestContext | None = None) -> None:
    """Write *context* (default: the current one) into *carrier*.

    Sets ``X-OpenStack-Request-ID`` to the context's :attr:`~RequestContext.global_id`
    and, under :data:`CONTEXT_KEY`, the context as a JSON-safe dict without
    ``None`` values (AMQP header tables and JSON both carry it). Does nothing
    when there is no context.
    """
    ctx = context if context is not None else get_current()
    if ctx is None:
        return
    carrier[HEADER_REQUEST_ID] = ctx.global_id
    carrier[CONTEXT_KEY] = {k: v for k, v in ctx.to_dict().items() if v is not None}


def _lookup(carrier: Mapping[str, Any], key: str) -> Any:
    value = carrier.get(key)
    if value is None:
        value = carrier.get(key.lower())
    return value


def extract(carrier: Mapping[str, Any] | None) -> RequestContext | None:
    """Build the receiver's context from a carrier written by :func:`inject`.

    The sender's global id (header, else the context dict) becomes the
    receiver's ``global_request_id`` when valid; the receiver gets a new local
    ``request_id``; identity fields come from the dict (sanitised by
    :meth:`RequestContext.from_dict`). Returns ``None`` when the carrier holds
    neither field.
    """
    if not carrier:
        return None
    try:
        header = _lookup(carrier, HEADER_REQUEST_ID)
        values = carrier.get(CONTEXT_KEY)
        if header is None and values is None:
            return None
        if not isinstance(values, Mapping):
            values = {}
        if header is None:
            header = values.get("global_request_id") or values.get("request_id")
        global_id = valid_inbound_id(header, "message headers", STAT_INVALID_MESSAGE)
        # Identity from the dict; its ids are the sender's, not ours.
        identity = {k: v for k, v in values.items() if k not in ("request_id", "global_request_id")}
        ctx = RequestContext.from_dict(identity)
    except Exception as exc:  # never raise into the consumer because a header was odd
        # The type only: the message could quote the untrusted value.
        log.debug("could not read the request context from a carrier: %s", type(exc).__name__)
        ctx = RequestContext()
        global_id = None
    ctx.request_id = generate_request_id()
    ctx.global_request_id = global_id
    return ctx
