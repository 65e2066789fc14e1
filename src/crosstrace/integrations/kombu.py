"""``kombu`` integration: carry the request context and the trace in AMQP message headers.

Sender (inside a request)::

    from crosstrace.integrations.kombu import Producer

    with kombu.Connection(url) as conn:
        Producer(conn.channel()).publish({"method": "build"}, routing_key="compute")

Receiver::

    from crosstrace.integrations.kombu import consumer_callback

    kombu.Consumer(channel, queues=[queue],
                   callbacks=[consumer_callback(handle, tracer=get_tracer("nova-compute"))])

The producer writes the context through :func:`crosstrace.propagation.inject`
(request id, context dict, ``traceparent``/``tracestate``); with tracing on,
each publish is a PRODUCER span and the message carries *its* trace context.
The callback wrapper rebuilds the request context with
:func:`crosstrace.propagation.extract` (sender's global id, a new local id per
message), makes it current, and, with tracing on, runs the handler in a
CONSUMER span that is a child of the producer's span (a local root of the
consumer's tracer). Both spans carry ``messaging.system`` (``rabbitmq`` for
AMQP brokers, else kombu's transport name such as ``memory``),
``messaging.destination.name`` (the exchange, or the routing key on the
default exchange), ``messaging.rabbitmq.destination.routing_key``,
``messaging.operation.type`` (``send`` / ``process``) and ``rpc.method`` when
the body is an RPC message (a mapping with a ``"method"`` string). An exception
from the handler or from publishing sets error status and propagates. Works
with any kombu transport, ``memory://`` and real RabbitMQ alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kombu.message import Message
from kombu.messaging import Producer as _KombuProducer

from crosstrace.context import RequestContext, reset_current, set_current
from crosstrace.integrations import ClientSpanScope, start_client_span, tracing_active
from crosstrace.propagation import extract, extract_context, inject
from crosstrace.tracing.model import SpanKind
from crosstrace.tracing.serve import Served, serve
from crosstrace.tracing.tracer import Tracer, get_tracer

__all__ = [
    "ATTR_DESTINATION",
    "ATTR_OPERATION_TYPE",
    "ATTR_ROUTING_KEY",
    "ATTR_RPC_METHOD",
    "ATTR_SYSTEM",
    "Producer",
    "consumer_callback",
    "context_headers",
    "publish",
]

ATTR_SYSTEM = "messaging.system"
ATTR_DESTINATION = "messaging.destination.name"
ATTR_ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
ATTR_OPERATION_TYPE = "messaging.operation.type"
ATTR_RPC_METHOD = "rpc.method"

# Positions among kombu.Producer.publish's positional parameters (after ``body``).
_ROUTING_KEY_POSITION = 0
_HEADERS_POSITION = 8
_EXCHANGE_POSITION = 10

R = TypeVar("R")

#: Names the CONSUMER span from ``(body, message)``.
SpanNamer = Callable[[Any, Message], str]


def context_headers(headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of *headers* with the current request context and span added."""
    out = dict(headers) if headers else {}
    inject(out)
    return out


def _system(channel: Any) -> str:
    """``rabbitmq`` for AMQP transports, else kombu's transport module name."""
    module = type(channel).__module__ if channel is not None else ""
    if "amqp" in module or "rabbitmq" in module:
        return "rabbitmq"
    return module.rsplit(".", 1)[-1] or "kombu"


def _name_of(exchange: Any) -> str:
    name = getattr(exchange, "name", exchange)
    return name if isinstance(name, str) else ""


def _rpc_method(body: Any) -> str | None:
    if isinstance(body, Mapping):
        method = body.get("method")
        if isinstance(method, str) and 0 < len(method) <= 255:
            return method
    return None


def _messaging_attributes(
    system: str, exchange: str, routing_key: str, operation: str, body: Any
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        ATTR_SYSTEM: system,
        ATTR_DESTINATION: exchange or routing_key,
        ATTR_ROUTING_KEY: routing_key,
        ATTR_OPERATION_TYPE: operation,
    }
    method = _rpc_method(body)
    if method is not None:
        attrs[ATTR_RPC_METHOD] = method
    return attrs


def _traced_publish(
    producer: _KombuProducer,
    tracer: Tracer | None,
    extra: Mapping[str, Any] | None,
    body: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    send: Callable[..., Any],
) -> Any:
    """Publish through *send* with the context in the headers, in a PRODUCER span."""

    def add_headers() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(args) > _HEADERS_POSITION:
            positional = list(args)
            positional[_HEADERS_POSITION] = context_headers(positional[_HEADERS_POSITION])
            return tuple(positional), kwargs
        kwargs["headers"] = context_headers(kwargs.get("headers"))
        return args, kwargs

    if not tracing_active(tracer):
        a, kw = add_headers()
        return send(body, *a, **kw)
    routing_key = kwargs.get("routing_key")
    if routing_key is None:
        routing_key = (
            args[_ROUTING_KEY_POSITION] if len(args) > _ROUTING_KEY_POSITION else None
        ) or getattr(producer, "routing_key", None)
    exchange = kwargs.get("exchange")
    if exchange is None:
        exchange = args[_EXCHANGE_POSITION] if len(args) > _EXCHANGE_POSITION else None
    if exchange is None:
        exchange = getattr(producer, "exchange", None)
    key = routing_key if isinstance(routing_key, str) else ""
    attrs = _messaging_attributes(
        _system(getattr(producer, "channel", None)), _name_of(exchange), key, "send", body
    )
    if extra:
        attrs.update(extra)
    span = start_client_span(f"publish {attrs[ATTR_DESTINATION]}", SpanKind.PRODUCER, attrs, tracer)
    with ClientSpanScope(span):
        a, kw = add_headers()
        result = send(body, *a, **kw)
    return result


class Producer(_KombuProducer):
    """A :class:`kombu.Producer` whose messages carry the current request context
    and trace; each publish is a PRODUCER span when tracing is on.

    :param tracer: the tracer for a publish made outside any span (default:
        the configured one).
    :param attributes: extra attributes for every PRODUCER span (e.g.
        ``{"rpc.system": "oslo.messaging", "rpc.service": "compute"}``).
    Other arguments are :class:`kombu.Producer`'s.
    """

    def __init__(
        self,
        *args: Any,
        tracer: Tracer | None = None,
        attributes: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.tracer = tracer
        self.span_attributes = dict(attributes) if attributes else None

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`kombu.Producer.publish`, with the context added to ``headers``."""
        return _traced_publish(
            self, self.tracer, self.span_attributes, body, args, kwargs, super().publish
        )


def publish(
    producer: _KombuProducer,
    body: Any,
    tracer: Tracer | None = None,
    attributes: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Publish *body* with *producer* (any :class:`kombu.Producer`), adding the context."""
    return _traced_publish(producer, tracer, attributes, body, (), kwargs, producer.publish)


def consumer_callback(
    handler: Callable[[Any, Message], R],
    tracer: Tracer | None = None,
    attributes: Mapping[str, Any] | None = None,
    span_name: SpanNamer | None = None,
) -> Callable[[Any, Message], R]:
    """Wrap a kombu callback ``handler(body, message)`` to run under the sender's context.

    Every message gets its own context (a fresh local id); the sender's global id
    is adopted when valid. A message without context headers still gets a
    context of its own, so the handler's log lines are never anonymous. With
    tracing on (*tracer*, else the configured one), the handler runs in a
    CONSUMER span continuing the producer's trace, named by *span_name*
    (default ``"process <destination>"``), with *attributes* added.
    """
    extra = dict(attributes) if attributes else None

    @functools.wraps(handler)
    def run(body: Any, message: Message) -> R:
        headers = getattr(message, "headers", None)
        ctx = extract(headers) or RequestContext()
        t = tracer or get_tracer()
        if t is None:
            token = set_current(ctx)
            try:
                return handler(body, message)
            finally:
                reset_current(token)
        try:
            delivery = getattr(message, "delivery_info", None) or {}
            attrs = _messaging_attributes(
                _system(getattr(message, "channel", None)),
                str(delivery.get("exchange") or ""),
                str(delivery.get("routing_key") or ""),
                "process",
                body,
            )
            if extra:
                attrs.update(extra)
            name = (
                span_name(body, message)
                if span_name is not None
                else f"process {attrs[ATTR_DESTINATION]}"
            )
            remote = extract_context(headers if isinstance(headers, Mapping) else {}, t)
            served = serve(ctx, t, name, SpanKind.CONSUMER, attrs, remote)
        except Exception:  # tracing must never break the consumer
            served = Served(ctx)
        with served:
            return handler(body, message)

    return run
