"""RabbitMQ ingest (``crosstrace serve --consume amqp://...``), with kombu.

Reads the OTLP batches that the tracer's RabbitMQ transport publishes: durable
direct exchange ``crosstrace``, routing key ``otlp``, durable queue
``crosstrace.otlp`` (all three configurable). A message body is a serialized
``ExportTraceServiceRequest`` or ``ExportLogsServiceRequest``; the header
``otlp-signal`` says which (``traces`` | ``logs``) and ``content_type`` is
``application/x-protobuf`` (``application/json`` is accepted too).

Delivery guarantees:

* a message is acknowledged only after the store has committed its records;
* a malformed message (unknown signal, undecodable body) is rejected without
  requeue, counted and logged; it would fail the same way forever;
* a JSON body goes through the same memory bound as on HTTP ingest
  (:class:`~crosstrace.server.ingest.http.JsonBudget`): one that would take more
  than 20x its size to decode, or more than ``max_json_memory`` alone, is
  rejected like a malformed one; one over the total only because of the
  messages being decoded now is requeued after a brief pause;
* a store failure requeues the message, and the consumer pauses briefly;
* at most ``prefetch`` messages are unacknowledged at a time, so several
  ``serve --consume`` processes on one queue share the work;
* on broker loss the consumer reconnects with backoff; messages it had not yet
  acknowledged are redelivered by the broker.

The consumer runs in its own thread. kombu channels are not thread-safe, so the
store's commit futures are only *polled* from that thread, which does every ack.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from crosstrace.redact import mask_password
from crosstrace.server.ingest.decode import (
    SIGNAL_LOGS,
    SIGNAL_TRACES,
    DecodeResult,
    OtlpDecodeError,
    decode,
)
from crosstrace.server.ingest.http import (
    CONTENT_TYPE_JSON,
    OFFLOAD_BYTES,
    JsonBudget,
    JsonRefused,
    gunzip_capped,
)
from crosstrace.server.ingest.pool import DecodePool
from crosstrace.server.metrics import Metrics
from crosstrace.server.settings import DEFAULT_EXCHANGE, DEFAULT_QUEUE, DEFAULT_ROUTING_KEY
from crosstrace.server.store.base import Store

__all__ = ["HEADER_SIGNAL", "Consumer", "declare_queue"]

log = logging.getLogger(__name__)

#: Message header naming the OTLP signal of the body.
HEADER_SIGNAL: Final = "otlp-signal"
_SIGNALS: Final = frozenset({SIGNAL_TRACES, SIGNAL_LOGS})
_TRANSPORT: Final = "amqp"
_IDLE_POLL: Final = 0.2  # seconds drain_events waits when nothing is pending
_BUSY_POLL: Final = 0.005  # ... and while commits are pending (acks are polled)
_STORE_FAILURE_PAUSE: Final = 1.0
_MAX_RECONNECT_DELAY: Final = 30.0
_DECODE_ERRORS: Final = (OtlpDecodeError, ValueError, OverflowError)


def _kombu() -> Any:
    """kombu, imported on first use (an optional dependency, untyped)."""
    import kombu

    return kombu


def declare_queue(
    channel: Any,
    *,
    exchange: str = DEFAULT_EXCHANGE,
    queue: str = DEFAULT_QUEUE,
    routing_key: str = DEFAULT_ROUTING_KEY,
) -> Any:
    """Declare (idempotently) the durable exchange, queue and binding; return the Queue."""
    kombu = _kombu()
    q = kombu.Queue(
        queue,
        kombu.Exchange(exchange, type="direct", durable=True),
        routing_key=routing_key,
        durable=True,
    )
    bound = q(channel)
    bound.declare()
    return bound


@dataclass(slots=True)
class _Pending:
    future: Future[Any]
    message: Any
    signal: str
    count: int
    started: float
    #: True while *future* is the decode worker's, not yet the store's commit.
    decoding: bool = False
    #: JSON memory reserved while decoding (released once decoded).
    json_cost: int = 0


class Consumer(threading.Thread):
    """Consumes OTLP batches from RabbitMQ into *store* until :meth:`stop`."""

    def __init__(
        self,
        url: str,
        store: Store,
        metrics: Metrics | None = None,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        queue: str = DEFAULT_QUEUE,
        routing_key: str = DEFAULT_ROUTING_KEY,
        prefetch: int = 32,
        max_message_size: int = 64 * 1024**2,
        heartbeat: float = 20.0,
        decode_pool: DecodePool | None = None,
        max_json_memory: int = 512 * 1024**2,
    ) -> None:
        """*max_json_memory*: bytes all JSON messages being decoded may take together."""
        super().__init__(name="crosstrace-consumer", daemon=True)
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.url = url
        self.safe_url = mask_password(url)
        self.store = store
        self.metrics = metrics or Metrics()
        self.exchange = exchange
        self.queue = queue
        self.routing_key = routing_key
        self.prefetch = prefetch
        self.max_message_size = max_message_size
        self.heartbeat = heartbeat
        self.decode_pool = decode_pool
        self.json_budget = JsonBudget(max_json_memory)
        #: Set once consuming (again, after a reconnect); cleared while disconnected.
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._pending: deque[_Pending] = deque()
        self._paused_until = 0.0
        #: Messages acknowledged after their commit (this process).
        self.acked = 0
        #: Messages rejected as malformed; requeued after a store failure.
        self.rejected = 0
        self.requeued = 0

    def stop(self) -> None:
        """Ask the thread to finish: pending commits are awaited and acknowledged."""
        self._stopping.set()

    # ----------------------------------------------------------------- main loop

    def run(self) -> None:
        kombu = _kombu()
        delay = 0.5
        while not self._stopping.is_set():
            conn = kombu.Connection(self.url, heartbeat=self.heartbeat)
            errors = (*conn.connection_errors, *conn.channel_errors, OSError)
            try:
                conn.ensure_connection(max_retries=1)
                self._consume(conn)
                delay = 0.5
            except errors as exc:
                self.ready.clear()
                dropped = len(self._pending)
                for item in self._pending:
                    self.json_budget.release(item.json_cost)
                self._pending.clear()  # unacked: the broker redelivers them
                if self._stopping.is_set():
                    break
                log.warning(
                    "lost RabbitMQ connection to %s (%s); %d unacknowledged message(s) "
                    "will be redelivered; reconnecting in %.1fs",
                    self.safe_url,
                    exc,
                    dropped,
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, _MAX_RECONNECT_DELAY)
            finally:
                try:
                    conn.release()
                except Exception as exc:
                    log.debug("closing the broker connection failed: %s", exc)

    def _consume(self, conn: Any) -> None:
        kombu = _kombu()
        channel = conn.channel()
        queue = declare_queue(
            channel, exchange=self.exchange, queue=self.queue, routing_key=self.routing_key
        )
        consumer = kombu.Consumer(channel, queues=[queue], on_message=self._on_message)
        consumer.qos(prefetch_count=self.prefetch)
        consumer.consume()
        self.ready.set()
        log.info("consuming %s on %s", self.queue, self.safe_url)
        try:
            while not self._stopping.is_set():
                self._settle()
                if time.monotonic() < self._paused_until:
                    self._stopping.wait(_BUSY_POLL)
                    continue
                try:
                    conn.drain_events(timeout=_BUSY_POLL if self._pending else _IDLE_POLL)
                except TimeoutError:
                    pass
                conn.heartbeat_check()
            # Stopping: no new deliveries; wait for what is being committed.
            consumer.cancel()
            deadline = time.monotonic() + 30
            while self._pending and time.monotonic() < deadline:
                self._settle()
                if self._pending:
                    time.sleep(_BUSY_POLL)
        finally:
            self.ready.clear()

    # -------------------------------------------------------------------- messages

    def _on_message(self, message: Any) -> None:
        """One delivery: decode (in a decode worker when the body is large), hand
        to the store, keep for the ack once committed."""
        headers = message.headers or {}
        signal = headers.get(HEADER_SIGNAL)
        if isinstance(signal, bytes):
            signal = signal.decode("ascii", "replace")
        if signal not in _SIGNALS:
            self._reject(message, str(signal), f"missing or unknown {HEADER_SIGNAL} header")
            return
        body = message.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        as_json = (message.content_type or "").split(";", 1)[0].strip() == CONTENT_TYPE_JSON
        started = time.perf_counter()
        json_cost = 0
        try:
            if len(body) > self.max_message_size:
                raise OtlpDecodeError(f"message exceeds {self.max_message_size} bytes")
            if (message.content_encoding or "").lower() == "gzip":
                body = gunzip_capped(body, self.max_message_size)
            if as_json:
                json_cost = self.json_budget.reserve(body)
            pool = self.decode_pool
            if pool is not None and signal == SIGNAL_TRACES and len(body) > OFFLOAD_BYTES:
                decoding = pool.submit_traces(body, as_json, self.store.compression())
                self._pending.append(
                    _Pending(decoding, message, signal, 0, started, True, json_cost)
                )
                json_cost = 0  # released once the worker has decoded it
                return
            result = decode(signal, body, as_json=as_json)
        except JsonRefused as exc:
            if exc.status_code == 429:
                self._requeue(message, signal, str(exc))
                self._paused_until = time.monotonic() + _STORE_FAILURE_PAUSE
            else:
                self._reject(message, signal, str(exc))
            return
        except _DECODE_ERRORS as exc:
            self._reject(message, signal, str(exc))
            return
        finally:
            self.json_budget.release(json_cost)
        item = self._store(message, signal, result, started)
        if item is not None:
            self._pending.append(item)

    def _store(
        self, message: Any, signal: str, result: DecodeResult, started: float
    ) -> _Pending | None:
        """Hand a decoded message's records to the store; the pending commit, or
        None when there was nothing to store (the message is acked)."""
        records = result.span_count if signal == SIGNAL_TRACES else len(result.logs)
        self.metrics.add_records(signal, "received", records + result.rejected)
        self.metrics.add_records(signal, "rejected", result.rejected)
        if result.rejected:
            log.info("message: %s", result.error_message)
        if not records:
            message.ack()
            self.acked += 1
            self.metrics.count_request(_TRANSPORT, signal, "acked")
            return None
        self.metrics.write_started()
        try:
            if signal == SIGNAL_TRACES:
                batch = result.store_batch()
                future: Future[Any] = self.store.submit_batch(batch)
            else:
                future = self.store.submit_logs(result.logs)
        except Exception as exc:
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            future = failed
        return _Pending(future, message, signal, records, started)

    def _reject(self, message: Any, signal: str, reason: str) -> None:
        log.warning("rejecting malformed message (%s): %s", signal, reason)
        message.reject(requeue=False)
        self.rejected += 1
        self.metrics.count_request(
            _TRANSPORT, signal if signal in _SIGNALS else "unknown", "rejected"
        )

    def _requeue(self, message: Any, signal: str, reason: str) -> None:
        """Give *message* back to the broker for a later try."""
        log.warning("%s message requeued: %s", signal, reason)
        message.requeue()
        self.requeued += 1
        self.metrics.count_request(_TRANSPORT, signal, "requeued")

    def _settle(self) -> None:
        """Ack every message whose commit finished; requeue those whose commit failed."""
        if not self._pending:
            return
        still: deque[_Pending] = deque()
        for item in self._pending:
            if not item.future.done():
                still.append(item)
                continue
            if item.decoding:
                self.json_budget.release(item.json_cost)
                exc = item.future.exception()
                if exc is None:
                    result = item.future.result()
                    stored = self._store(item.message, item.signal, result, item.started)
                    if stored is not None:
                        still.append(stored)
                elif isinstance(exc, _DECODE_ERRORS):
                    self._reject(item.message, item.signal, str(exc))
                else:  # the pool itself failed (e.g. it is shutting down): redeliver
                    self._requeue(item.message, item.signal, f"decoding failed: {exc}")
                continue
            self.metrics.write_finished(time.perf_counter() - item.started)
            exc = item.future.exception()
            if exc is None:
                item.message.ack()
                self.acked += 1
                written = item.future.result()
                if item.signal == SIGNAL_TRACES or not isinstance(written, int):
                    written = item.count
                self.metrics.add_records(item.signal, "written", written)
                self.metrics.count_request(_TRANSPORT, item.signal, "acked")
            else:
                log.warning("store failed to commit a %s message, requeued: %s", item.signal, exc)
                item.message.requeue()
                self.requeued += 1
                self.metrics.count_request(_TRANSPORT, item.signal, "requeued")
                self._paused_until = time.monotonic() + _STORE_FAILURE_PAUSE
        self._pending = still
