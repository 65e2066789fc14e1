"""A small RPC layer over kombu: ``call`` with a reply queue and timeout, ``cast``.

It follows oslo.messaging's RPC shape, which OpenStack services use between
their API and their workers: a server consumes a topic queue and dispatches
``{"method": ..., "args": {...}}`` to an endpoint object; a caller publishes with
``reply_to`` and ``correlation_id`` and waits for the matching reply, raising
:class:`MessagingTimeout` if none comes in time. Works on kombu's in-process
``memory://`` transport and on RabbitMQ (``amqp://...``).

Each thread uses its own connection: kombu connections are not thread-safe.
Handlers run in a thread pool, so a slow call does not hold up the queue.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from crosstrace.tracer import StatusCode, current_span

__all__ = [
    "MessagingTimeout",
    "RemoteError",
    "RpcClient",
    "RpcServer",
    "connection_for",
]

log = logging.getLogger(__name__)

# How often a consumer thread wakes up to check whether it should stop.
_DRAIN_TIMEOUT = 0.25
# kombu's virtual transports poll; the default (1 s) would add a second per hop.
_MEMORY_POLLING_INTERVAL = 0.005

#: Hook that publishes one message: ``publish(producer, body, **kwargs)``.
Publisher = Callable[..., None]
#: Hook that wraps a consumer callback ``fn(body, message)`` (e.g. to restore the
#: caller's request context and open a consumer span before it runs).
CallbackWrapper = Callable[[Callable[[Any, Any], None]], Callable[[Any, Any], None]]


def _plain_publish(producer: Any, body: Any, **kwargs: Any) -> None:
    producer.publish(body, **kwargs)


def _no_wrap(fn: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    return fn


def _kombu() -> Any:
    """kombu, imported on first use (an optional dependency) and typed loosely:
    its public classes are not annotated."""
    import kombu

    return kombu


def _close_all(conns: list[Any]) -> None:
    while conns:
        try:
            conns.pop().release()
        except Exception:
            log.debug("closing an RPC connection failed", exc_info=True)


def _consume(
    conn: Any,
    queue: Any,
    callback: Callable[[Any, Any], None],
    ready: threading.Event,
    stop: threading.Event,
) -> None:
    """Consume JSON messages from *queue* into *callback* until *stop* is set."""
    with _kombu().Consumer(conn, [queue], callbacks=[callback], accept=["json"]):
        ready.set()
        while not stop.is_set():
            try:
                conn.drain_events(timeout=_DRAIN_TIMEOUT)
            except TimeoutError:
                continue


class MessagingTimeout(Exception):
    """No reply came to an RPC call within its timeout."""


class RemoteError(Exception):
    """The remote handler raised; carries its exception type and message."""

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message


def connection_for(url: str) -> Any:
    """A new kombu connection for ``url`` (fast polling on the memory transport)."""
    options: dict[str, Any] = {}
    if url.startswith("memory://"):
        options["polling_interval"] = _MEMORY_POLLING_INTERVAL
    return _kombu().Connection(url, transport_options=options)


class RpcServer:
    """Consumes ``topic`` and dispatches each message to a method of ``endpoint``.

    A method's return value is sent back to callers that asked for a reply; an
    exception is sent back as ``{"failure": {"type", "message"}}``. Only the
    names in ``methods`` (when given) can be called. A handler
    that returns :data:`NO_REPLY` sends nothing (used to model a stuck worker).
    """

    NO_REPLY: Any = object()

    def __init__(
        self,
        url: str,
        exchange: str,
        topic: str,
        endpoint: object,
        *,
        methods: Iterable[str] | None = None,
        max_workers: int = 8,
        publish: Publisher = _plain_publish,
        wrap_callback: CallbackWrapper = _no_wrap,
        name: str | None = None,
    ) -> None:
        self.url = url
        self.methods = frozenset(methods) if methods is not None else None
        self.exchange_name = exchange
        self.topic = topic
        self.endpoint = endpoint
        self._publish = publish
        self._wrap = wrap_callback
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix=f"rpc-{topic}")
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._local = threading.local()
        self._conns: list[Any] = []
        self._thread = threading.Thread(
            target=self._run, name=name or f"rpc-server-{topic}", daemon=True
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start consuming; returns once the queue is declared and consumed."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"RPC server for {self.topic!r} did not start in {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"RPC server for {self.topic!r} failed: {self._error}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop consuming and wait for running handlers (up to ``timeout``)."""
        self._stop.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        _close_all(self._conns)

    def _run(self) -> None:
        kombu = _kombu()
        try:
            with connection_for(self.url) as conn:
                exchange = kombu.Exchange(self.exchange_name, type="direct", durable=False)
                queue = kombu.Queue(
                    self.topic,
                    exchange,
                    routing_key=self.topic,
                    durable=False,
                    auto_delete=True,
                )
                _consume(conn, queue, self._on_message, self._ready, self._stop)
        except Exception as exc:
            self._error = exc
            self._ready.set()
            if not self._stop.is_set():
                log.exception("RPC server for %s stopped", self.topic)

    def _on_message(self, body: Any, message: Any) -> None:
        # Acknowledge on receipt, like oslo.messaging's RPC server: the channel
        # belongs to this thread, and the handler runs in the pool.
        message.ack()
        self._pool.submit(self._wrap(self._handle), body, message)

    def _producer_connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connection_for(self.url)
            self._local.conn = conn
            self._conns.append(conn)
        return conn

    def _handle(self, body: Any, message: Any) -> None:
        reply_to = message.properties.get("reply_to")
        correlation_id = message.properties.get("correlation_id")
        reply: dict[str, Any]
        try:
            if not isinstance(body, Mapping):
                raise ValueError("RPC message body must be an object")
            method = body.get("method")
            args = body.get("args") or {}
            fn = getattr(self.endpoint, str(method), None)
            if (
                not isinstance(method, str)
                or method.startswith("_")
                or (self.methods is not None and method not in self.methods)
                or not callable(fn)
            ):
                raise ValueError(f"unknown RPC method {method!r}")
            result = fn(**args)
            if result is RpcServer.NO_REPLY:
                return
            reply = {"result": result}
        except Exception as exc:
            # The failure goes back to the caller; the current (consumer) span
            # records it too.
            span = current_span()
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            reply = {"failure": {"type": type(exc).__name__, "message": str(exc)}}
        if not reply_to:
            return
        try:
            conn = self._producer_connection()
            producer = _kombu().Producer(conn.default_channel, serializer="json")
            producer.publish(
                reply,
                exchange="",
                routing_key=reply_to,
                correlation_id=correlation_id,
                retry=True,
                retry_policy={"max_retries": 2},
            )
        except Exception:
            log.exception("could not send the reply to %s", reply_to)


class RpcClient:
    """Calls and casts to RPC servers; one reply queue per client.

    ``call`` is thread-safe: each calling thread publishes on its own
    connection, and one consumer thread routes replies to waiting callers by
    correlation id.
    """

    def __init__(
        self,
        url: str,
        exchange: str,
        *,
        publish: Publisher = _plain_publish,
        name: str = "rpc-client",
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self._publish = publish
        self.reply_queue = f"reply_{uuid.uuid4().hex}"
        self._waiting: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._local = threading.local()
        self._conns: list[Any] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Declare the reply queue and start routing replies."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"RPC client did not start in {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"RPC client failed to start: {self._error}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop routing replies and close this client's connections."""
        self._stop.set()
        self._thread.join(timeout)
        _close_all(self._conns)

    def _run(self) -> None:
        kombu = _kombu()
        try:
            with connection_for(self.url) as conn:
                queue = kombu.Queue(
                    self.reply_queue,
                    durable=False,
                    exclusive=not self.url.startswith("memory://"),
                    auto_delete=True,
                )
                _consume(conn, queue, self._on_reply, self._ready, self._stop)
        except Exception as exc:
            self._error = exc
            self._ready.set()
            if not self._stop.is_set():
                log.exception("RPC reply consumer stopped")

    def _on_reply(self, body: Any, message: Any) -> None:
        message.ack()
        correlation_id = message.properties.get("correlation_id")
        with self._lock:
            future = self._waiting.pop(str(correlation_id), None)
        if future is None:
            # The caller gave up (timeout) before the reply came.
            log.warning("reply %s came after its caller gave up", correlation_id)
            return
        future.set_result(body)

    def _producer(self) -> Any:
        kombu = _kombu()
        producer = getattr(self._local, "producer", None)
        if producer is None:
            conn = connection_for(self.url)
            self._local.conn = conn
            self._conns.append(conn)
            exchange = kombu.Exchange(self.exchange_name, type="direct", durable=False)
            producer = kombu.Producer(conn.default_channel, exchange=exchange, serializer="json")
            producer.declare()
            self._local.producer = producer
        return producer

    def cast(self, topic: str, method: str, **args: Any) -> None:
        """Send ``method(**args)`` to ``topic`` without waiting for an answer."""
        self._publish(
            self._producer(),
            {"method": method, "args": args},
            routing_key=topic,
            retry=True,
            retry_policy={"max_retries": 2},
        )

    def call(self, topic: str, method: str, timeout: float, **args: Any) -> Any:
        """Send ``method(**args)`` to ``topic`` and return its result.

        Raises :class:`MessagingTimeout` when no reply comes within ``timeout``
        seconds and :class:`RemoteError` when the handler raised.
        """
        correlation_id = uuid.uuid4().hex
        future: Future[Any] = Future()
        with self._lock:
            self._waiting[correlation_id] = future
        try:
            self._publish(
                self._producer(),
                {"method": method, "args": args},
                routing_key=topic,
                reply_to=self.reply_queue,
                correlation_id=correlation_id,
                retry=True,
                retry_policy={"max_retries": 2},
            )
            try:
                reply = future.result(timeout)
            except TimeoutError:
                raise MessagingTimeout(
                    f"Timed out waiting for a reply to {method} after {timeout:g}s"
                ) from None
        finally:
            with self._lock:
                self._waiting.pop(correlation_id, None)
        if isinstance(reply, Mapping) and "failure" in reply:
            failure = reply["failure"] or {}
            raise RemoteError(str(failure.get("type")), str(failure.get("message")))
        if isinstance(reply, Mapping):
            return reply.get("result")
        return None
