"""The outermost oslo.messaging serializer: crosstrace's keys in the context dict."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from typing import Any

import oslo_messaging

from crosstrace.context import get_current, set_current
from crosstrace.ids import generate_request_id, is_valid_request_id
from crosstrace.integrations.oslo_context import context_from_dict
from crosstrace.propagation import inject_context
from crosstrace.tracecontext import TRACEPARENT_HEADER, TRACESTATE_HEADER
from crosstrace.tracing.spans import _current, _get_current_span

__all__ = [
    "KEY_GLOBAL_REQUEST_ID",
    "KEY_OPERATION",
    "KEY_REQUEST_ID",
    "ContextValueError",
    "TracingSerializer",
    "wrap",
]

#: Context-dict keys crosstrace adds (besides ``traceparent``/``tracestate``).
KEY_GLOBAL_REQUEST_ID = "crosstrace_global_request_id"
KEY_REQUEST_ID = "crosstrace_request_id"
KEY_OPERATION = "crosstrace_operation"
_KEYS = (
    KEY_GLOBAL_REQUEST_ID,
    KEY_REQUEST_ID,
    KEY_OPERATION,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
)
_OPERATIONS = ("call", "cast", "notify")

ATTR_RPC_SYSTEM = "rpc.system"
ATTR_RPC_SERVICE = "rpc.service"
ATTR_RPC_METHOD = "rpc.method"
ATTR_SYSTEM = "messaging.system"
ATTR_DESTINATION = "messaging.destination.name"
ATTR_OPERATION_TYPE = "messaging.operation.type"
ATTR_OPERATION_NAME = "messaging.operation.name"
RPC_SYSTEM = "oslo.messaging"

# What the client side is sending now: (operation, whether oslo.messaging's
# own tracing injects the trace context). Set by the helpers' clients.
_sending: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar(
    "crosstrace_oslo_sending", default=None
)
# What deserialize_context read for the endpoint about to run: (trace carrier,
# operation). Reset on every receipt.
_received: contextvars.ContextVar[tuple[dict[str, str], str | None] | None] = (
    contextvars.ContextVar("crosstrace_oslo_received", default=None)
)


class ContextValueError(TypeError):
    """A context dict value that JSON (and so RabbitMQ) cannot carry."""


_SCALARS = (str, int, float, bool, type(None))


def _check_json(value: Any, path: str) -> None:
    if type(value) in _SCALARS:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContextValueError(f"RPC context key {path}[{key!r}] is not a string")
            _check_json(item, f"{path}[{key!r}]")
        return
    raise ContextValueError(
        f"RPC context value {path} is a {type(value).__name__}, which JSON cannot carry: "
        "RabbitMQ would refuse the message (the fake driver does not check)"
    )


# oslo.config lookups cost microseconds: the global switch is re-read at most
# every _SWITCH_TTL_S seconds. [value, read at (monotonic s)]
_SWITCH_TTL_S = 5.0
_switch: list[Any] = [False, -_SWITCH_TTL_S]


def _global_tracing_enabled() -> bool:
    """oslo.messaging's own tracing switch in the global ``cfg.CONF`` (cached)."""
    now = time.monotonic()
    if now - _switch[1] < _SWITCH_TTL_S:
        return bool(_switch[0])
    try:
        from oslo_config import cfg

        value = bool(cfg.CONF.oslo_messaging_tracing.tracing_enabled)
    except Exception:
        value = False
    _switch[0], _switch[1] = value, now
    return value


def _base_of(serializer: Any) -> Any:
    return getattr(serializer, "_base", None)


class TracingSerializer(oslo_messaging.Serializer):  # type: ignore[misc]
    """The outermost serializer: adds crosstrace's keys on send, reads and removes
    them on receipt, and leaves entities and the context object to *base*.

    Wrapping a :class:`TracingSerializer` again, or a serializer that has one
    inside (through ``_base`` attributes, as nova's serializers chain), leaves
    exactly one, outermost.
    """

    _base: Any

    def __init__(self, base: Any = None) -> None:
        while isinstance(base, TracingSerializer):
            base = base._base
        # Unlink a TracingSerializer found deeper in the chain: ours is outermost.
        holder = base
        while holder is not None:
            inner = _base_of(holder)
            if isinstance(inner, TracingSerializer):
                holder._base = inner._base
                continue
            holder = inner
        self._base = base

    # -- entities: the base's business --------------------------------------------
    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        """The base serializer's, or *entity* unchanged."""
        base = self._base
        return entity if base is None else base.serialize_entity(ctxt, entity)

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        """The base serializer's, or *entity* unchanged."""
        base = self._base
        return entity if base is None else base.deserialize_entity(ctxt, entity)

    # -- context ---------------------------------------------------------------------
    def serialize_context(self, ctxt: Any) -> dict[str, Any]:
        """The base's dict (or *ctxt*'s own) plus crosstrace's keys; raises
        :class:`ContextValueError` for a value JSON cannot carry."""
        base = self._base
        if base is not None:
            out = base.serialize_context(ctxt)
        elif isinstance(ctxt, Mapping):
            out = ctxt
        elif ctxt is None:
            out = {}
        else:
            out = ctxt.to_dict()
        out = dict(out) if out else {}
        scalars = _SCALARS
        for key, value in out.items():
            if type(value) not in scalars:
                _check_json(value, repr(key))
        current = get_current()
        if current is not None:
            out[KEY_GLOBAL_REQUEST_ID] = current.global_id
            out[KEY_REQUEST_ID] = current.request_id
        else:
            gid = out.get("global_request_id") or out.get("request_id")
            if isinstance(gid, str) and is_valid_request_id(gid):
                out[KEY_GLOBAL_REQUEST_ID] = gid
        sending = _sending.get()
        if sending is not None:
            out[KEY_OPERATION] = sending[0]
            oslo_injects = sending[1]
        else:
            oslo_injects = _global_tracing_enabled()
        if not oslo_injects:
            out.pop(TRACEPARENT_HEADER, None)
            out.pop(TRACESTATE_HEADER, None)
            span = _get_current_span()
            if span is not None:
                inject_context(out, span)
        return out

    def deserialize_context(self, ctxt: Any) -> Any:
        """Start a clean request state from *ctxt*, then the base's context object."""
        # The worker thread may still hold the previous message's state.
        _current.set(None)
        values = dict(ctxt) if isinstance(ctxt, Mapping) else {}
        mine = {key: values.pop(key) for key in _KEYS if key in values}
        gid = mine.get(KEY_GLOBAL_REQUEST_ID)
        if not (type(gid) is str and is_valid_request_id(gid)):
            gid = values.get("global_request_id") or values.get("request_id")
            if not (type(gid) is str and is_valid_request_id(gid)):
                gid = None
        set_current(context_from_dict(values, generate_request_id(), gid))
        carrier = {
            k: v
            for k in (TRACEPARENT_HEADER, TRACESTATE_HEADER)
            if isinstance(v := mine.get(k), str)
        }
        op = mine.get(KEY_OPERATION)
        _received.set((carrier, op if op in _OPERATIONS else None))
        base = self._base
        if base is None:
            return values if isinstance(ctxt, Mapping) else ctxt
        return base.deserialize_context(values if isinstance(ctxt, Mapping) else ctxt)


def wrap(serializer: Any = None) -> TracingSerializer:
    """*serializer* with crosstrace's outermost (idempotent)."""
    if isinstance(serializer, TracingSerializer):
        return serializer
    return TracingSerializer(serializer)
