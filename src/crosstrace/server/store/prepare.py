"""Turn a decoded span batch into what the store writes, without the store.

:func:`prepare_batch` does every per-span step of a write that needs no
database: the per-trace summary, the index keys (service and operation names,
attribute hashes, request ids), the dependency facts and the compressed chunk.
The store's writer then only interns names and runs the SQL. Because the step is
pure, ingest runs it in worker processes
(:class:`~crosstrace.server.ingest.pool.DecodePool`) beside the one writer, so
that decoding and writing use different cores.
"""

from __future__ import annotations

import logging
import threading
from array import array
from typing import Any, NamedTuple

import zstandard

from crosstrace.server.batch.spanbatch import SpanBatch, ids_digest
from crosstrace.server.batch.values import FLAG_RAW_BYTES, raw_value
from crosstrace.server.store.codec import (
    attr_hash,
    attr_text,
    chunk_compressor,
    compress_chunk,
    encode_rid,
)
from crosstrace.server.store.columns import encode_columns

__all__ = [
    "BUCKET_NS",
    "Compression",
    "PreparedBatch",
    "PreparedTrace",
    "prepare_batch",
    "service_of_spans",
]

log = logging.getLogger(__name__)

#: Dependency counts are kept per hour.
BUCKET_NS = 3600 * 10**9
_HASH_CACHE_SIZE = 200_000
_TAG_BYTES = b"\x3a"  # AnyValue.bytes_value

#: The store's current zstd dictionary: ``(id, token, bytes)``, ``None`` until the
#: store has trained one (chunks are then left raw). *token* names these bytes
#: (two stores may each have a dictionary 1); a process preparing batches keeps
#: the dictionaries it was given by token, so the bytes are sent to it only
#: for the first batches (then ``None``: see ``ChunkDictionary.compression``).
#: A process that never got them leaves its chunks raw for the store.
Compression = tuple[int, int, bytes | None] | None
#: Dictionaries a preparing thread keeps (by token).
_KEPT_DICTIONARIES = 4


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
    shared between threads), or ``None`` when this thread has not been given
    its bytes."""
    if comp is None:
        return None
    did, token, data = comp
    kept: dict[int, tuple[int, zstandard.ZstdCompressor]] | None
    kept = getattr(_local, "zc", None)
    if kept is None:
        kept = _local.zc = {}
    hit = kept.get(token)
    if hit is None:
        if data is None:
            return None
        if len(kept) >= _KEPT_DICTIONARIES:
            kept.clear()
        hit = kept[token] = (did, chunk_compressor(zstandard.ZstdCompressionDict(data)))
    return hit


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
        if root is None:  # every span's parent is in this group: a cycle
            root = min(facts, key=lambda f: f[5])
        if root_real:
            # The owner is the project (and its domain) of the root span, the
            # request at the edge; spans below it claim nothing.
            project, domain = root[8], root[9]
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
        payload = encode_columns(g, batch)
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
