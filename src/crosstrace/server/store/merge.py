"""Chunks of one trace from the several writes of one commit, merged into one.

Spans of many requests in flight come in every batch: at a few dozen requests
at once, a trace's spans are spread over several batches and each batch holds a
few spans of it. Stored as they come, each such group is a chunk with a row,
its index entries and its own compressed frame, and these costs are paid per
chunk rather than per span. The writer commits the batches waiting in its queue
together; merging a trace's chunks of one commit before they are inserted pays
them once.

A merged chunk keeps the digests of the groups it holds (a batch delivered again
is still recognised, group by group): SQLite stores them in its ``digest``
column as a blob of 8-byte digests where a chunk of one group has the integer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import zstandard

from crosstrace.server.store.codec import chunk_payload, compress_chunk
from crosstrace.server.store.columns import merge_columns
from crosstrace.server.store.sql import ChunkRow

__all__ = ["digests_of", "merge_chunk_rows", "pack_digests"]


def pack_digests(digests: Iterable[int]) -> bytes:
    """Several chunk digests in one value: 8 bytes each, big-endian, signed."""
    return b"".join(d.to_bytes(8, "big", signed=True) for d in digests)


def digests_of(value: Any) -> list[int]:
    """The digests of a chunk's ``digest`` value: an integer, or several packed
    (:func:`pack_digests`)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return [int.from_bytes(raw[i : i + 8], "big", signed=True) for i in range(0, len(raw), 8)]
    return [int(value)]


def merge_chunk_rows(
    rows: list[ChunkRow],
    zdict: Callable[[int], zstandard.ZstdCompressionDict],
    compressor: tuple[int, zstandard.ZstdCompressor] | None,
) -> list[ChunkRow]:
    """*rows* with the chunks of each trace merged into one (in the order of each
    trace's first chunk), compressed with *compressor* (see ``codec.compress_chunk``).
    Chunks in an older form, or whose batches' flags differ, stay as they are."""
    by_trace: dict[bytes, list[ChunkRow]] = {}
    for r in rows:
        by_trace.setdefault(r.trace_id, []).append(r)
    if len(by_trace) == len(rows):
        return rows
    out: list[ChunkRow] = []
    for tid, group in by_trace.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        payloads = [chunk_payload(r.data, zdict) for r in group]
        merged = None if None in payloads else merge_columns(payloads)  # type: ignore[arg-type]
        if merged is None:
            out.extend(group)
            continue
        rids: dict[bytes, int] = {}
        for r in group:
            for key, kind in r.rids.items():
                rids[key] = rids.get(key, 0) | kind
        out.append(
            ChunkRow(
                tid,
                min(r.start_ns for r in group),
                pack_digests(d for r in group for d in digests_of(r.digest)),
                compress_chunk(merged, compressor),
                set().union(*(r.keys for r in group)),
                set().union(*(r.attrs for r in group)),
                rids,
            )
        )
    return out
