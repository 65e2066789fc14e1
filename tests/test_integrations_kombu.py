"""kombu integration: context through message headers, memory:// and real RabbitMQ."""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import kombu
import pytest

from crosstrace.context import RequestContext, get_current, use_context
from crosstrace.ids import is_valid_request_id
from crosstrace.integrations.kombu import Producer, consumer_callback, publish
from crosstrace.propagation import HEADER_REQUEST_ID, stats

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
LID = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"


def roundtrip(url: str, queue_name: str, send: Any, expected: int) -> list[dict[str, Any]]:
    """Publish with *send(producer, queue)*, consume *expected* messages, and return
    what the wrapped handler saw."""
    seen: list[dict[str, Any]] = []

    def handler(body: Any, message: Any) -> None:
        ctx = get_current()
        seen.append({"body": body, "ctx": ctx, "headers": dict(message.headers)})
        message.ack()

    exchange = kombu.Exchange("crosstrace-test", type="direct", durable=False)
    queue = kombu.Queue(
        queue_name, exchange, routing_key=queue_name, durable=False, auto_delete=True
    )
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        with kombu.Consumer(channel, queues=[queue], callbacks=[consumer_callback(handler)]):
            send(Producer(conn.channel(), exchange=exchange), queue)
            deadline = time.monotonic() + 15
            while len(seen) < expected and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
            # Still consuming, so the auto-delete queue still exists.
            queue(channel).delete()
    assert len(seen) == expected, "messages did not arrive before the deadline"
    return seen


def _send_in_context(producer: Producer, queue: kombu.Queue) -> None:
    with use_context(RequestContext(request_id=LID, global_request_id=GID, user_id="u")):
        producer.publish({"n": 1}, routing_key=queue.routing_key, declare=[queue])
        publish(producer, {"n": 2}, routing_key=queue.routing_key, headers={"mine": "kept"})
    producer.publish({"n": 3}, routing_key=queue.routing_key)


def _check(seen: list[dict[str, Any]]) -> None:
    first, second, third = seen
    for message in (first, second):
        ctx = message["ctx"]
        assert ctx.global_request_id == GID
        assert ctx.user_id == "u"
        assert is_valid_request_id(ctx.request_id)
        assert ctx.request_id not in (LID, GID)
    assert first["ctx"].request_id != second["ctx"].request_id
    assert second["headers"]["mine"] == "kept"
    # Published outside a request: the handler still gets its own context.
    assert HEADER_REQUEST_ID not in third["headers"]
    assert third["ctx"].global_request_id is None
    assert is_valid_request_id(third["ctx"].request_id)
    assert get_current() is None


def test_memory_transport_roundtrip() -> None:
    name = "q-" + uuid.uuid4().hex[:8]
    _check(roundtrip("memory://", name, _send_in_context, 3))


@pytest.mark.rabbitmq
def test_rabbitmq_roundtrip(amqp_url: str, amqp_queue_name: str) -> None:
    _check(roundtrip(amqp_url, amqp_queue_name, _send_in_context, 3))


def test_bad_header_is_dropped_and_counted() -> None:
    before = stats()["invalid_message_request_id"]

    def send(producer: Producer, queue: kombu.Queue) -> None:
        # A plain kombu producer, as a hostile or buggy sender would use.
        kombu.Producer(producer.channel, exchange=producer.exchange).publish(
            {}, routing_key=queue.routing_key, headers={HEADER_REQUEST_ID: GID.upper()}
        )

    seen = roundtrip("memory://", "q-" + uuid.uuid4().hex[:8], send, 1)
    assert seen[0]["ctx"].global_request_id is None
    assert stats()["invalid_message_request_id"] == before + 1


def test_positional_headers_argument_gets_the_context() -> None:
    def send(producer: Producer, queue: kombu.Queue) -> None:
        with use_context(RequestContext(global_request_id=GID)):
            producer.publish(
                {}, queue.routing_key, None, False, False, 0, None, None, None, {"p": 1}
            )

    seen = roundtrip("memory://", "q-" + uuid.uuid4().hex[:8], send, 1)
    assert seen[0]["headers"]["p"] == 1
    assert seen[0]["ctx"].global_request_id == GID


def test_handler_exception_clears_the_context() -> None:
    def handler(body: Any, message: Any) -> None:
        assert get_current() is not None
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        consumer_callback(handler)({}, SimpleNamespace(headers={HEADER_REQUEST_ID: GID}))  # type: ignore[arg-type]
    assert get_current() is None


def test_consumer_thread_sees_only_its_own_context() -> None:
    """A consumer running in a worker thread does not leak into the caller."""
    seen: list[Any] = []
    wrapped = consumer_callback(lambda body, message: seen.append(get_current()))

    thread = threading.Thread(
        target=wrapped, args=({}, SimpleNamespace(headers={HEADER_REQUEST_ID: GID}))
    )
    thread.start()
    thread.join(10)
    assert seen[0].global_request_id == GID
    assert get_current() is None
