"""``kombu`` integration: carry the request context in AMQP message headers.

Sender (inside a request)::

    from crosstrace.integrations.kombu import Producer

    with kombu.Connection(url) as conn:
        Producer(conn.channel()).publish({"method": "build"}, routing_key="compute")

Receiver::

    from crosstrace.integrations.kombu import consumer_callback

    kombu.Consumer(channel, queues=[queue], callbacks=[consumer_callback(handle)])

The producer writes the context through :func:`crosstrace.propagation.inject`;
the callback wrapper rebuilds it with :func:`crosstrace.propagation.extract`
(sender's global id, a new local id per message), makes it current while the
handler runs, and clears it after. Works with any kombu transport, ``memory://``
and real RabbitMQ alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from kombu.message import Message
from kombu.messaging import Producer as _KombuProducer

from crosstrace.context import RequestContext, reset_current, set_current
from crosstrace.propagation import extract, inject

__all__ = ["Producer", "consumer_callback", "context_headers", "publish"]

# Position of ``headers`` among kombu.Producer.publish's positional parameters
# (after ``body``).
_HEADERS_POSITION = 8

R = TypeVar("R")


def context_headers(headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of *headers* with the current request context added."""
    out = dict(headers) if headers else {}
    inject(out)
    return out


class Producer(_KombuProducer):
    """A :class:`kombu.Producer` whose messages carry the current request context."""

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`kombu.Producer.publish`, with the context added to ``headers``."""
        if len(args) > _HEADERS_POSITION:
            positional = list(args)
            positional[_HEADERS_POSITION] = context_headers(positional[_HEADERS_POSITION])
            args = tuple(positional)
        else:
            kwargs["headers"] = context_headers(kwargs.get("headers"))
        return super().publish(body, *args, **kwargs)  # type: ignore[no-untyped-call]


def publish(producer: _KombuProducer, body: Any, **kwargs: Any) -> Any:
    """Publish *body* with *producer* (any :class:`kombu.Producer`), adding the context."""
    kwargs["headers"] = context_headers(kwargs.get("headers"))
    return producer.publish(body, **kwargs)  # type: ignore[no-untyped-call]


def consumer_callback(
    handler: Callable[[Any, Message], R],
) -> Callable[[Any, Message], R]:
    """Wrap a kombu callback ``handler(body, message)`` to run under the sender's context.

    Every message gets its own context (a fresh local id); the sender's global id
    is adopted when valid. A message without context headers still gets a
    context of its own, so the handler's log lines are never anonymous.
    """

    @functools.wraps(handler)
    def run(body: Any, message: Message) -> R:
        ctx = extract(getattr(message, "headers", None)) or RequestContext()
        token = set_current(ctx)
        try:
            return handler(body, message)
        finally:
            reset_current(token)

    return run
