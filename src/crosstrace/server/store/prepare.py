"""Turn a decoded span batch into what the store writes, without the store.

:func:`prepare_batch` does every per-span step of a write that needs no
database: the per-trace summary, the index keys (service and operation names,
attribute hashes, request ids), the dependency facts and the compressed chunk.
The store's writer then only interns names and runs the SQL. Because the step is
pure, ingest runs it in worker processes (:class:`DecodePool`) beside the one
writer, so that decoding and writing use different cores.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from array import array
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import zstandard

from crosstrace.server.spanbatch import (
    FLAG_RAW_BYTES,
    SpanBatch,
    encode_payload,
    ids_digest,
    raw_value,
)
from crosstrace.server.store.codec import (
    ZSTD_LEVEL,
    attr_hash,
    attr_text,
    compress_chunk,
    encode_rid,
)

__all__ = [
    "BUCKET_NS",
    "Compression",
    "DecodePool",
    "PreparedBatch",
    "PreparedTrace",
    "prepare_batch",
    "service_of_spans",
]

log = logging.getLogger(__name__)

#: Dependency counts are kept per hour.
BUCKET_NS = 3600 * 10**9
_HASH_CACHE_SIZE = 200_000
_PARENT_POLL_S = 0.5
_TAG_BYTES = b"\x3a"  # AnyValue.bytes_value

#: The store's current zstd dictionary: its id and its bytes (``None`` until the
#: store has trained one; chunks are then left raw for the store to sample).
Compression = tuple[int, bytes] | None


class PreparedTrace(NamedTuple):
    """One trace's spans of one batch, ready for the store's rows.

    Names are text: the writer interns them. ``data`` is the framed, compressed
    chunk, or the raw payload when the batch was prepared without a dictionary.
    """

    trace_id: bytes
    digest: int
    start_ns: int
    end_ns: int
    root_service: str
    root_op: str
    root_real: int
    root_start: int
    spans: int
    errors: int
    project: str | None
    domain: str | None
    ops: frozenset[tuple[str, str]]  # (service, operation)
    attrs: frozenset[int]  # attribute hashes
    rids: dict[bytes, int]  # request id key -> 1 local | 2 global
    data: bytes
    span_ids: bytes  # the spans' ids, 8 bytes each ...
    span_services: bytes  # ... and their services: 4-byte indexes into ``services``
    services: tuple[str, ...]
    callers: tuple[tuple[bytes, str], ...]  # CLIENT / PRODUCER spans: (span id, service)
    waiting: tuple[tuple[bytes, str, int, int], ...]  # (parent id, service, error, hour)
    edges: tuple[tuple[int, str, str, int], ...]  # (hour, caller, callee, error) in-batch


def service_of_spans(trace: PreparedTrace) -> dict[bytes, str]:
    """Span id -> service of the spans of *trace*."""
    ids, names = trace.span_ids, trace.services
    index = array("I")
    index.frombytes(trace.span_services)
    return {ids[8 * i : 8 * i + 8]: names[n] for i, n in enumerate(index)}


class PreparedBatch:
    """The traces of one batch and whether their chunks are compressed yet."""

    __slots__ = ("compressed", "count", "traces")

    def __init__(self, traces: list[PreparedTrace], count: int, compressed: bool) -> None:
        self.traces = traces
        self.count = count
        self.compressed = compressed

    def __len__(self) -> int:
        return self.count


# ------------------------------------------------------------------- compressors

_local = threading.local()
_hash_cache: dict[tuple[str, bytes], int] = {}


def _compressor(comp: Compression) -> tuple[int, zstandard.ZstdCompressor] | None:
    """This thread's compressor for the dictionary *comp* (compressors are not
    shared between threads; two stores may each have a dictionary 1, so the bytes
    are compared, not only the id)."""
    if comp is None:
        return None
    cached: tuple[bytes, tuple[int, zstandard.ZstdCompressor]] | None
    cached = getattr(_local, "zc", None)
    if cached is None or cached[1][0] != comp[0] or cached[0] != comp[1]:
        d = zstandard.ZstdCompressionDict(comp[1])
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=d)
        cached = _local.zc = (comp[1], (comp[0], compressor))
    return cached[1]


def _attr_hash(key: str, raw: bytes, flags: int) -> int | None:
    pair = (key, raw)
    h = _hash_cache.get(pair)
    if h is not None:
        return h
    text = attr_text(raw_value(raw, raw_bytes=bool(flags & FLAG_RAW_BYTES)))
    if text is None:
        return None
    h = attr_hash(key, text)
    if raw[:1] != _TAG_BYTES:  # bytes are read differently per batch kind
        if len(_hash_cache) >= _HASH_CACHE_SIZE:
            _hash_cache.clear()
        _hash_cache[pair] = h
    return h


# ----------------------------------------------------------------------- prepare


def prepare_batch(batch: SpanBatch, comp: Compression) -> PreparedBatch:
    """Everything the store writes for *batch*, per trace (see the module
    docstring). With *comp* the chunks are compressed with that dictionary."""
    zc = _compressor(comp)
    seg_svc = [seg.service for seg in batch.segments]
    flags = batch.flags
    out: list[PreparedTrace] = []
    for g in batch.groups.values():
        facts = g.facts
        svc_of = {f[0]: seg_svc[f[2]] for f in facts}
        names: dict[str, int] = {}
        index = array("I", [names.setdefault(seg_svc[f[2]], len(names)) for f in facts])
        start = end = facts[0][5]
        errors = 0
        root: tuple[Any, ...] | None = None
        root_real = 0
        project = domain = None
        ops: set[tuple[str, str]] = set()
        callers: list[tuple[bytes, str]] = []
        waiting: list[tuple[bytes, str, int, int]] = []
        edges: list[tuple[int, str, str, int]] = []
        for f in facts:
            span_id, parent, seg, name, pkind, st, en, err = f[:8]
            svc = seg_svc[seg]
            start = min(start, st)
            end = max(end, en)
            errors += err
            if parent is None:
                if not root_real or (root is not None and st < root[5]):
                    root, root_real = f, 1
            elif parent in svc_of:
                psvc = svc_of[parent]
                if psvc != svc:
                    edges.append((st // BUCKET_NS, psvc, svc, int(err)))
            else:
                waiting.append((parent, svc, int(err), st // BUCKET_NS))
                if not root_real and (root is None or st < root[5]):
                    root = f
            if pkind:
                callers.append((span_id, svc))
            ops.add((svc, name))
            if project is None and f[8] is not None:
                project = f[8]
            if domain is None and f[9] is not None:
                domain = f[9]
        if root is None:  # every span's parent is in this group: a cycle
            root = min(facts, key=lambda f: f[5])
        if root[8] is not None:
            project = root[8]
        if root[9] is not None:
            domain = root[9]
        hashes: set[int] = set()
        for key, raw in g.pairs:
            h = _attr_hash(key, raw, flags)
            if h is not None:
                hashes.add(h)
        rids: dict[bytes, int] = {}
        for text, kind in g.rids.items():
            k = encode_rid(text)
            if k is not None:
                rids[k] = rids.get(k, 0) | kind
        payload = encode_payload(g, batch)
        span_ids = g.span_ids()
        out.append(
            PreparedTrace(
                g.trace_id,
                ids_digest(span_ids),
                start,
                end,
                seg_svc[root[2]],
                root[3],
                root_real,
                root[5],
                len(facts),
                errors,
                project,
                domain,
                frozenset(ops),
                frozenset(hashes),
                rids,
                payload if zc is None else compress_chunk(payload, zc),
                span_ids,
                index.tobytes(),
                tuple(names),
                tuple(callers),
                tuple(waiting),
                tuple(edges),
            )
        )
    return PreparedBatch(out, batch.count, zc is not None)


# -------------------------------------------------------------------- the pool


def _decode_in_worker(body: bytes, as_json: bool, comp: Compression) -> Any:
    """Worker-process side of :meth:`DecodePool.submit_traces`."""
    from crosstrace.server.otlp import decode

    result = decode("traces", body, as_json=as_json)
    try:
        result.prepared = prepare_batch(result.span_batch(), comp)
    except Exception:  # left to the store, which reports it as a failed write
        log.exception("preparing a batch failed")
        return result
    result.batch = None
    result._spans = None
    return result


def _run_into(out: Future[Any], fn: Any, *args: Any) -> None:
    """Run *fn(*args)* and settle *out* with its result or error."""
    try:
        result = fn(*args)
    except BaseException as exc:
        out.set_exception(exc)
    else:
        out.set_result(result)


def _warm() -> int:
    import crosstrace.server.otlp  # noqa: F401  (import the decoder before traffic)

    return 0


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit as soon as the server process is gone (even when it
    was killed and could not stop its pool)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="crosstrace-parent-watch", daemon=True).start()


class DecodePool:
    """Worker processes that decode OTLP trace bodies and prepare their batches.

    If a worker dies, the pool is started again and the request that saw it is
    decoded in this process instead."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a decode pool needs at least one worker")
        self.workers = workers
        #: Bodies decoded by the workers, and times the pool was started again.
        self.decoded = 0
        self.restarts = 0
        self._lock = threading.Lock()
        self._pool = self._start()
        for f in [self._pool.submit(_warm) for _ in range(workers)]:
            f.result()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        )

    def submit_traces(self, body: bytes, as_json: bool, comp: Compression) -> Future[Any]:
        """Decode and prepare *body* in a worker; the future's result is a
        ``DecodeResult`` whose ``prepared`` batch is ready for the store (or the
        decoder's ``OtlpDecodeError``)."""
        out: Future[Any] = Future()
        pool = self._pool

        def done(f: Future[Any]) -> None:
            if f.cancelled():  # the pool was closed first
                out.set_exception(RuntimeError("the decode pool is closed"))
                return
            exc = f.exception()
            if isinstance(exc, BrokenProcessPool):
                self._restart(pool)
                # Decoded in this process instead, off the executor's own thread.
                threading.Thread(
                    target=_run_into,
                    args=(out, _decode_in_worker, body, as_json, comp),
                    name="crosstrace-decode-fallback",
                    daemon=True,
                ).start()
                return
            if exc is not None:
                out.set_exception(exc)
                return
            with self._lock:
                self.decoded += 1
            out.set_result(f.result())

        try:
            pool.submit(_decode_in_worker, body, as_json, comp).add_done_callback(done)
        except BrokenProcessPool:  # broken before this submit: restart, decode here
            self._restart(pool)
            _run_into(out, _decode_in_worker, body, as_json, comp)
        return out

    async def decode_traces(self, body: bytes, as_json: bool, comp: Compression) -> Any:
        """:meth:`submit_traces` for the event loop."""
        return await asyncio.wrap_future(self.submit_traces(body, as_json, comp))

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                log.warning("a decode worker died; starting the decode pool again")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                self.restarts += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
