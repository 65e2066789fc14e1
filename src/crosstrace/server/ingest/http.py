"""OTLP/HTTP ingest: ``POST /v1/traces`` and ``POST /v1/logs`` as plain ASGI.

This is the hot path of the backend, so it skips the web framework: one ASGI
callable reads the body with a size cap, gunzips it with a second cap (a small
gzip bomb cannot inflate past it), decodes it (:mod:`crosstrace.server.ingest.decode`),
hands the records to the store and answers 200 only once the store has committed
them. Every failure has its own status and a clear message:

=====  ==============================================================
400    body is not OTLP (protobuf or JSON), bad gzip, bad Content-Length
401    ingest token required and missing or wrong
404    any other path; 405 for another method
403    the token is valid but may not send telemetry (``ingest`` rule)
413    body larger than the limit, compressed or decompressed; a JSON body
       whose decoded form would need more memory than allowed
415    Content-Type not protobuf/JSON, Content-Encoding not gzip/identity
429    too many ingest requests at once (``Retry-After``); the client retries
503    the store failed to commit (``Retry-After``); the client retries
=====  ==============================================================
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from crosstrace.server.auth import AUTH_HEADER, TokenSet
from crosstrace.server.auth.access import KEYSTONE_HEADER, Access
from crosstrace.server.errors import PayloadTooLarge, ServerError
from crosstrace.server.ingest.decode import (
    SIGNAL_LOGS,
    SIGNAL_TRACES,
    DecodeResult,
    OtlpDecodeError,
    decode,
    encode_response,
    encode_status,
)
from crosstrace.server.ingest.pool import DecodePool
from crosstrace.server.metrics import Metrics
from crosstrace.server.store.base import Store

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_PROTOBUF",
    "INGEST_PATHS",
    "JSON_MEMORY_FACTOR",
    "OFFLOAD_BYTES",
    "RETRY_AFTER_SECONDS",
    "IngestApp",
    "JsonBudget",
    "JsonRefused",
    "gunzip_capped",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONTENT_TYPE_PROTOBUF: Final = "application/x-protobuf"
CONTENT_TYPE_JSON: Final = "application/json"
_PROTOBUF_TYPES: Final = frozenset({CONTENT_TYPE_PROTOBUF, "application/protobuf"})
#: Path -> signal.
INGEST_PATHS: Final = {"/v1/traces": SIGNAL_TRACES, "/v1/logs": SIGNAL_LOGS}
#: Seconds a client is asked to wait after a 503.
RETRY_AFTER_SECONDS: Final = 5
#: Bodies larger than this are decompressed and decoded off the event loop (trace
#: bodies in the decode workers, when there are some; the RabbitMQ consumer uses
#: the same threshold).
OFFLOAD_BYTES: Final = 64 * 1024
#: Memory a JSON body may take while decoded, as a multiple of its size.
JSON_MEMORY_FACTOR: Final = 20
#: Rough bytes of Python objects per JSON token (see _json_cost).
_COST_OBJECT: Final = 100
_COST_ARRAY: Final = 72
_COST_ITEM: Final = 16
#: JSON nested this deep is refused before decoding (the decoder could not read it).
_MAX_JSON_DEPTH: Final = 500
_DEEP_JSON = re.compile(rb'[\[{](?:\s*(?:"(?:[^"\\]|\\.)*"\s*:\s*)?[\[{]){%d}' % _MAX_JSON_DEPTH)
#: google.rpc.Code values used in error bodies.
_RPC_INVALID_ARGUMENT: Final = 3
_RPC_UNAUTHENTICATED: Final = 16
_RPC_PERMISSION_DENIED: Final = 7
_RPC_RESOURCE_EXHAUSTED: Final = 8
_RPC_UNAVAILABLE: Final = 14


class _HTTPError(ServerError):
    def __init__(self, status: int, message: str, rpc_code: int = _RPC_INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message
        self.rpc_code = rpc_code


class _TooLarge(_HTTPError):
    def __init__(self, message: str) -> None:
        super().__init__(PayloadTooLarge.status_code, message, _RPC_RESOURCE_EXHAUSTED)


def gunzip_capped(data: bytes, limit: int) -> bytes:
    """Decompress gzip *data* (one or more members) to at most *limit* bytes.

    Raises ``ValueError`` for corrupt or truncated data and ``OverflowError``
    when the output would exceed *limit*; never allocates more than about
    *limit* bytes however well the input compresses.
    """
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = data
        while True:
            try:
                out += inflater.decompress(pending, limit - len(out) + 1)
            except zlib.error as exc:
                raise ValueError(f"body is not valid gzip: {exc}") from None
            if len(out) > limit:
                raise OverflowError(f"decompressed body exceeds {limit} bytes")
            pending = inflater.unconsumed_tail
            if not pending:
                break
        if not inflater.eof:
            raise ValueError("body is not valid gzip: truncated")
        data = inflater.unused_data
    return bytes(out)


class JsonRefused(ServerError, ValueError):
    """A JSON body refused before decoding; ``status_code`` is the HTTP answer: 400 (nested
    too deeply), 413 (too costly for its size, or alone over the total) or 429 (over
    the total only because of the bodies being decoded now: retry later)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status
        self.rpc_code = _RPC_INVALID_ARGUMENT if status == 400 else _RPC_RESOURCE_EXHAUSTED


class JsonBudget:
    """The memory JSON bodies being decoded may take: each at most
    :data:`JSON_MEMORY_FACTOR` times its size, all together at most *total* bytes.
    Shared by the HTTP ingest and the RabbitMQ consumer; not thread-safe (each
    user calls it from one thread)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def reserve(self, body: bytes) -> int:
        """Reserve the memory decoding JSON *body* will take and return it (give
        it back with :meth:`release`), or raise :class:`JsonRefused`."""
        cost = _json_cost(body)
        if cost > JSON_MEMORY_FACTOR * max(len(body), 1024):
            if _DEEP_JSON.search(body):  # looked for only here: it is slow
                raise JsonRefused(400, "body is not valid OTLP JSON: nested too deeply")
            raise JsonRefused(
                413,
                f"JSON body would take about {cost} bytes to decode, over "
                f"{JSON_MEMORY_FACTOR}x its size: send fewer, larger values, or protobuf",
            )
        if self.used + cost > self.total:
            raise JsonRefused(
                429 if cost <= self.total else 413,
                "JSON bodies being decoded would pass the memory limit",
            )
        self.used += cost
        return cost

    def release(self, cost: int) -> None:
        """Give back what :meth:`reserve` returned."""
        self.used -= cost


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class IngestApp:
    """The ASGI app answering the two OTLP/HTTP ingest paths."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        tokens: TokenSet | None = None,
        max_body_size: int = 16 * 1024**2,
        max_decompressed_size: int = 64 * 1024**2,
        decode_pool: DecodePool | None = None,
        access: Access | None = None,
        max_concurrent: int = 64,
        max_json_memory: int = 512 * 1024**2,
    ) -> None:
        """*max_concurrent*: ingest requests handled at once (more get 429);
        *max_json_memory*: bytes all JSON bodies being decoded may take together."""
        self.store = store
        self.decode_pool = decode_pool
        self.metrics = metrics
        self.access = access or Access(ingest_tokens=tokens)
        self.max_body_size = max_body_size
        self.max_decompressed_size = max_decompressed_size
        self.max_concurrent = max_concurrent
        self.json_budget = JsonBudget(max_json_memory)
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        signal = INGEST_PATHS.get(scope["path"])
        if signal is None:
            await _respond(send, 404, b"not found\n", "text/plain")
            return
        as_json = False
        status = 500
        reserved = 0
        self.active += 1
        try:
            if self.active > self.max_concurrent:
                raise _HTTPError(
                    429, "too many ingest requests at once, retry later", _RPC_RESOURCE_EXHAUSTED
                )
            as_json, body = await self._read(scope, receive, signal)
            if as_json:
                try:
                    reserved = self.json_budget.reserve(body)
                except JsonRefused as exc:
                    raise _HTTPError(exc.status_code, str(exc), exc.rpc_code) from None
            status, payload = await self._handle(signal, body, as_json)
            await _respond(send, status, payload, _media(as_json))
        except _HTTPError as exc:
            status = exc.status_code
            extra: list[tuple[bytes, bytes]] = []
            if status == 401:
                extra.append((b"www-authenticate", b"Bearer"))
            elif status == 405:
                extra.append((b"allow", b"POST"))
            elif status in (429, 503):
                extra.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
            payload = encode_status(exc.rpc_code, exc.message, as_json=as_json)
            await _respond(send, status, payload, _media(as_json), extra)
        except _Disconnected:
            status = 499
        finally:
            self.active -= 1
            self.json_budget.release(reserved)
            self.metrics.count_request("http", signal, str(status))

    async def _read(self, scope: Scope, receive: Receive, signal: str) -> tuple[bool, bytes]:
        """Check method, auth and headers, then read and decompress the body."""
        if scope["method"] != "POST":
            raise _HTTPError(405, f"use POST to send {signal}")
        access = self.access
        if not access.ingest_open:
            who = access.identify(
                _header(scope, AUTH_HEADER.encode()),
                _header(scope, KEYSTONE_HEADER.encode()),
                ingest=True,
            )
            if who is None:
                raise _HTTPError(401, "a valid ingest token is required", _RPC_UNAUTHENTICATED)
            if not access.may_ingest_as(who):
                raise _HTTPError(403, f"{who.name} may not send telemetry", _RPC_PERMISSION_DENIED)
        media = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        if media in _PROTOBUF_TYPES:
            as_json = False
        elif media == CONTENT_TYPE_JSON:
            as_json = True
        else:
            raise _HTTPError(
                415,
                f"unsupported Content-Type {media or '(none)'!r}: "
                f"use {CONTENT_TYPE_PROTOBUF} or {CONTENT_TYPE_JSON}",
            )
        encoding = (_header(scope, b"content-encoding") or "identity").strip().lower()
        if encoding not in ("gzip", "identity"):
            raise _HTTPError(
                415, f"unsupported Content-Encoding {encoding!r}: use gzip or identity"
            )
        length_header = _header(scope, b"content-length")
        if length_header is not None:
            try:
                length = int(length_header)
            except ValueError:
                raise _HTTPError(400, "Content-Length is not a number") from None
            if length > self.max_body_size:
                raise _TooLarge(f"body of {length} bytes exceeds the {self.max_body_size} limit")
        body = await self._read_body(receive)
        if encoding == "gzip":
            try:
                if len(body) > OFFLOAD_BYTES:
                    body = await asyncio.to_thread(gunzip_capped, body, self.max_decompressed_size)
                else:
                    body = gunzip_capped(body, self.max_decompressed_size)
            except OverflowError as exc:
                raise _TooLarge(str(exc)) from None
            except ValueError as exc:
                raise _HTTPError(400, str(exc)) from None
        elif len(body) > self.max_decompressed_size:
            raise _TooLarge(f"body exceeds the {self.max_decompressed_size} bytes limit")
        return as_json, body

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                raise _TooLarge(f"body exceeds the {self.max_body_size} bytes limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _handle(self, signal: str, body: bytes, as_json: bool) -> tuple[int, bytes]:
        pool = self.decode_pool
        try:
            if pool is not None and signal == SIGNAL_TRACES and len(body) > OFFLOAD_BYTES:
                result = await pool.decode_traces(body, as_json, self.store.compression())
            elif len(body) > OFFLOAD_BYTES:
                result = await asyncio.to_thread(_decode, signal, body, as_json)
            else:
                result = _decode(signal, body, as_json)
        except OtlpDecodeError as exc:
            raise _HTTPError(400, str(exc)) from None
        records = result.span_count if signal == SIGNAL_TRACES else len(result.logs)
        self.metrics.add_records(signal, "received", records + result.rejected)
        self.metrics.add_records(signal, "rejected", result.rejected)
        if records:
            await self._commit(signal, result)
        return 200, encode_response(signal, result, as_json=as_json)

    async def _commit(self, signal: str, result: DecodeResult) -> None:
        """Hand the records to the store and wait for the commit (503 if it fails)."""
        metrics = self.metrics
        metrics.write_started()
        started = time.perf_counter()
        try:
            if signal == SIGNAL_TRACES:
                batch = result.store_batch()
                await asyncio.wrap_future(self.store.submit_batch(batch))
                written = len(batch)
            else:
                written = await asyncio.wrap_future(self.store.submit_logs(result.logs))
        except Exception as exc:  # any store failure is the server's, not the client's
            log.warning("store failed to commit %s batch: %s", signal, exc)
            raise _HTTPError(
                503, "the store is unavailable, retry later", _RPC_UNAVAILABLE
            ) from None
        finally:
            metrics.write_finished(time.perf_counter() - started)
        metrics.add_records(signal, "written", written)


class _Disconnected(Exception):
    pass


def _decode(signal: str, body: bytes, as_json: bool) -> DecodeResult:
    """Decode *body*; trace records decoded from JSON become a batch here too."""
    result = decode(signal, body, as_json=as_json)
    if signal == SIGNAL_TRACES:
        result.span_batch()
    return result


def _json_cost(body: bytes) -> int:
    """Bytes of Python objects decoding JSON *body* makes, about: its size (as
    strings) plus a fixed cost per object, array and item. Counting braces and
    commas inside strings too only ever overestimates."""
    return (
        4 * len(body)
        + _COST_OBJECT * body.count(b"{")
        + _COST_ARRAY * body.count(b"[")
        + _COST_ITEM * (body.count(b",") + body.count(b":"))
    )


def _media(as_json: bool) -> str:
    return CONTENT_TYPE_JSON if as_json else CONTENT_TYPE_PROTOBUF


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
