"""Client side: CLIENT spans for calls, PRODUCER spans for casts and notifications."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import oslo_messaging
from oslo_messaging.notify import notifier as _notifier
from oslo_messaging.rpc import client as _rpc_client

from crosstrace.integrations import ClientSpanScope, start_client_span, tracing_active
from crosstrace.integrations.oslo_messaging.serializer import (
    ATTR_DESTINATION,
    ATTR_OPERATION_NAME,
    ATTR_OPERATION_TYPE,
    ATTR_RPC_METHOD,
    ATTR_RPC_SERVICE,
    ATTR_RPC_SYSTEM,
    ATTR_SYSTEM,
    RPC_SYSTEM,
    _sending,
    wrap,
)
from crosstrace.spans import NonRecordingSpan, Span, SpanKind

__all__ = ["TracingNotifier", "TracingRPCClient"]


def _messaging_system(transport: Any) -> str:
    driver = type(getattr(transport, "_driver", None)).__name__.lower()
    for name, system in (("rabbit", "rabbitmq"), ("kafka", "kafka"), ("fake", "fake")):
        if name in driver:
            return system
    return driver.removesuffix("driver") or "unknown"


def _oslo_tracing(conf: Any) -> bool:
    try:
        return bool(conf.oslo_messaging_tracing.tracing_enabled)
    except Exception:
        return False


@contextlib.contextmanager
def _otel_parent(span: Span | NonRecordingSpan) -> Iterator[None]:
    """Make *span* the OpenTelemetry parent of what oslo.messaging's tracing opens."""
    token = None
    try:
        from opentelemetry import context as otel_context
        from opentelemetry import trace as otel_trace

        ctx = span.context if isinstance(span, NonRecordingSpan) else None
        trace_id = ctx.trace_id if ctx is not None else span.trace_id
        span_id = ctx.span_id if ctx is not None else span.span_id
        if trace_id:
            parent = otel_trace.NonRecordingSpan(
                otel_trace.SpanContext(
                    trace_id, span_id, False, otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
                )
            )
            token = otel_context.attach(otel_trace.set_span_in_context(parent))
    except Exception:  # no OpenTelemetry API: oslo.messaging's tracing is off anyway
        token = None
    try:
        yield
    finally:
        if token is not None:
            from opentelemetry import context as otel_context

            otel_context.detach(token)


def _send(call_context: Any, op: str, method: str, send: Callable[[], Any]) -> Any:
    """Run *send* (oslo's call or cast) in a CLIENT (call) or PRODUCER (cast) span."""
    oslo_injects = _oslo_tracing(getattr(call_context, "conf", None))
    token = _sending.set((op, oslo_injects))
    try:
        if not tracing_active(None):
            return send()
        target = call_context.target
        topic = target.topic or ""
        attrs: dict[str, Any] = {
            ATTR_RPC_SYSTEM: RPC_SYSTEM,
            ATTR_RPC_SERVICE: topic,
            ATTR_RPC_METHOD: method,
            ATTR_SYSTEM: _messaging_system(call_context.transport),
            ATTR_DESTINATION: topic,
            ATTR_OPERATION_TYPE: "send",
            ATTR_OPERATION_NAME: op,
        }
        if target.fanout:
            attrs["messaging.oslo.fanout"] = True
        if target.server:
            attrs["messaging.oslo.server"] = target.server
        kind = SpanKind.CLIENT if op == "call" else SpanKind.PRODUCER
        span = start_client_span(f"{op} {topic}.{method}", kind, attrs, None)
        with ClientSpanScope(span):
            if oslo_injects:
                with _otel_parent(span):
                    return send()
            return send()
    finally:
        _sending.reset(token)


class _TracingCallContext(_rpc_client._CallContext):  # type: ignore[misc]
    """oslo's prepared call context, with spans around call and cast."""

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        return _traced_call_context(super().prepare(*args, **kwargs))

    def call(self, ctxt: Any, method: str, **kwargs: Any) -> Any:
        return _send(
            self,
            "call",
            method,
            lambda: super(_TracingCallContext, self).call(ctxt, method, **kwargs),
        )

    def cast(self, ctxt: Any, method: str, **kwargs: Any) -> None:
        _send(
            self,
            "cast",
            method,
            lambda: super(_TracingCallContext, self).cast(ctxt, method, **kwargs),
        )


def _traced_call_context(prepared: Any) -> Any:
    # oslo builds a plain _CallContext in prepare(); same fields, traced methods.
    if type(prepared) is _rpc_client._CallContext:
        prepared.__class__ = _TracingCallContext
    return prepared


class TracingRPCClient(oslo_messaging.RPCClient):  # type: ignore[misc]
    """oslo.messaging's ``RPCClient``: ``call`` is a CLIENT span, ``cast`` a
    PRODUCER span, prepared contexts included (oslo's ``call``/``cast`` go
    through ``prepare()``); its serializer is wrapped."""

    def __init__(self, transport: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = wrap(kwargs.get("serializer"))
        super().__init__(transport, target, *args, **kwargs)

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        return _traced_call_context(super().prepare(*args, **kwargs))


def _notify(
    notifier: Any,
    super_notify: Callable[..., Any],
    ctxt: Any,
    event_type: str,
    payload: Any,
    priority: str,
    publisher_id: Any = None,
    retry: Any = None,
) -> None:
    token = _sending.set(("notify", False))
    try:
        if not tracing_active(None):
            super_notify(ctxt, event_type, payload, priority, publisher_id, retry)
            return
        attrs: dict[str, Any] = {
            ATTR_SYSTEM: _messaging_system(getattr(notifier, "transport", None)),
            ATTR_DESTINATION: ",".join(getattr(notifier, "_topics", None) or ()) or "notifications",
            ATTR_OPERATION_TYPE: "send",
            ATTR_OPERATION_NAME: "notify",
            "messaging.oslo.event_type": str(event_type),
            "messaging.oslo.priority": str(priority),
        }
        span = start_client_span(f"notify {event_type}", SpanKind.PRODUCER, attrs, None)
        with ClientSpanScope(span):
            super_notify(ctxt, event_type, payload, priority, publisher_id, retry)
    finally:
        _sending.reset(token)


class TracingNotifier(oslo_messaging.Notifier):  # type: ignore[misc]
    """oslo.messaging's ``Notifier``: each notification is a PRODUCER span and
    carries the current request's ids and trace; its serializer is wrapped."""

    def __init__(self, transport: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = wrap(kwargs.get("serializer"))
        super().__init__(transport, *args, **kwargs)

    def _notify(
        self,
        ctxt: Any,
        event_type: str,
        payload: Any,
        priority: str,
        publisher_id: Any = None,
        retry: Any = None,
    ) -> None:
        _notify(self, super()._notify, ctxt, event_type, payload, priority, publisher_id, retry)

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        sub = super().prepare(*args, **kwargs)
        if type(sub) is _notifier._SubNotifier:
            sub.__class__ = _TracingSubNotifier
        return sub


class _TracingSubNotifier(_notifier._SubNotifier):  # type: ignore[misc]
    def _notify(self, ctxt: Any, event_type: str, payload: Any, priority: str) -> None:
        _notify(
            self,
            lambda c, e, p, pr, _pid, _r: super(_TracingSubNotifier, self)._notify(c, e, p, pr),
            ctxt,
            event_type,
            payload,
            priority,
        )
