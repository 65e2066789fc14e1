"""oslo.messaging integration: request ids and traces across RPC calls, casts and
notifications.

The one-line change in a service's ``rpc.py`` wraps its serializer (nova's
``ProfilerRequestContextSerializer`` included) so crosstrace's is outermost::

    from crosstrace.integrations import oslo_messaging as ct_messaging

    serializer = ct_messaging.wrap(RequestContextSerializer(JsonPayloadSerializer()))

and, for CLIENT/PRODUCER and SERVER/CONSUMER spans, clients and servers come
from the helpers here (same arguments as oslo.messaging's functions)::

    client = ct_messaging.get_rpc_client(transport, target, serializer=serializer)
    server = ct_messaging.get_rpc_server(transport, target, endpoints, serializer=serializer)
    notifier = ct_messaging.get_notifier(transport, publisher_id="compute", serializer=s)
    listener = ct_messaging.get_notification_listener(transport, targets, endpoints)

What travels in the context dict (oslo.messaging sends each key as
``_context_<key>``; every value is JSON):

* ``crosstrace_global_request_id``: the current request's global id (else the
  context's own), and ``crosstrace_request_id``: the sender's local id;
* ``traceparent``/``tracestate``: the sending span (W3C Trace Context);
* ``crosstrace_operation``: ``call``, ``cast`` or ``notify`` (helpers' clients).

Notifications carry them too: they come from the current request and span, not
from the context object (which the notifier redacts, or replaces by ``{}``).

On receipt :class:`TracingSerializer` always starts from a clean state (the
threading executor reuses its worker threads and has no hook after dispatch):
it makes a new request context current (the sender's global id, a new local id,
the identity from the context dict), removes its keys, and lets the base
serializer build the context object. :func:`traced_endpoints` then runs each
endpoint method in a SERVER span (a ``call``) or a CONSUMER span (a ``cast``, a
notification) continuing the sender's trace, and ends it when the method
returns, clearing the state after.

When oslo.messaging's own OpenTelemetry tracing is enabled
(``[oslo_messaging_tracing] tracing_enabled``), it writes ``traceparent``;
crosstrace then injects no trace context, makes its current span the parent of
oslo.messaging's PRODUCER span (through the OpenTelemetry API), and only
extracts on receipt, so the trace stays one.

Span attributes follow the messaging and RPC conventions: ``rpc.system``
(``oslo.messaging``), ``rpc.service`` (the topic), ``rpc.method``,
``messaging.system`` (``rabbitmq``, ``kafka``, ``fake``...),
``messaging.destination.name``, ``messaging.operation.type``
(``send``/``process``) and ``messaging.operation.name`` (``call``, ``cast``,
``notify``, ``process``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import oslo_messaging

from crosstrace.integrations.oslo_messaging.clients import TracingNotifier, TracingRPCClient
from crosstrace.integrations.oslo_messaging.endpoints import traced_endpoints
from crosstrace.integrations.oslo_messaging.serializer import (
    KEY_GLOBAL_REQUEST_ID,
    KEY_OPERATION,
    KEY_REQUEST_ID,
    ContextValueError,
    TracingSerializer,
    wrap,
)
from crosstrace.tracer import Tracer

__all__ = [
    "KEY_GLOBAL_REQUEST_ID",
    "KEY_OPERATION",
    "KEY_REQUEST_ID",
    "ContextValueError",
    "TracingNotifier",
    "TracingRPCClient",
    "TracingSerializer",
    "get_notification_listener",
    "get_notifier",
    "get_rpc_client",
    "get_rpc_server",
    "traced_endpoints",
    "wrap",
]


def get_rpc_client(transport: Any, target: Any, **kwargs: Any) -> TracingRPCClient:
    """``oslo_messaging.get_rpc_client`` with a :class:`TracingRPCClient`."""
    kwargs["serializer"] = wrap(kwargs.get("serializer"))
    client: TracingRPCClient = oslo_messaging.get_rpc_client(
        transport, target, client_cls=TracingRPCClient, **kwargs
    )
    return client


def get_rpc_server(
    transport: Any,
    target: Any,
    endpoints: Sequence[Any],
    serializer: Any = None,
    access_policy: Any = None,
    tracer: Tracer | None = None,
    **kwargs: Any,
) -> Any:
    """``oslo_messaging.get_rpc_server`` with traced endpoints and the serializer
    wrapped; other keyword arguments (``executor``...) are oslo's."""
    return oslo_messaging.get_rpc_server(
        transport,
        target,
        traced_endpoints(endpoints, target.topic, tracer),
        serializer=wrap(serializer),
        access_policy=access_policy,
        **kwargs,
    )


def get_notifier(transport: Any, publisher_id: str | None = None, **kwargs: Any) -> TracingNotifier:
    """``oslo_messaging.Notifier`` as a :class:`TracingNotifier`."""
    return TracingNotifier(transport, publisher_id, **kwargs)


def get_notification_listener(
    transport: Any,
    targets: Sequence[Any],
    endpoints: Sequence[Any],
    serializer: Any = None,
    tracer: Tracer | None = None,
    **kwargs: Any,
) -> Any:
    """``oslo_messaging.get_notification_listener`` with traced endpoints and the
    serializer wrapped (CONSUMER spans); other keyword arguments are oslo's."""
    topic = ",".join(t.topic for t in targets if getattr(t, "topic", None)) or None
    return oslo_messaging.get_notification_listener(
        transport,
        targets,
        traced_endpoints(endpoints, topic, tracer, notification=True),
        serializer=wrap(serializer),
        **kwargs,
    )
