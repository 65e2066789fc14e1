"""What the span chunks of a SQLite store would take under other compression
choices, measured on the chunks themselves.

    python benchmarks/bench_store.py --spans 300000 --profile entropy \\
        --backends sqlite --clients 4 --tmp /tmp/stores
    python benchmarks/analysis_chunks.py /tmp/stores/bench-*.sqlite3

(``bench_store.py`` leaves its SQLite files in ``--tmp``: the first is the store
of the direct writes, the next ones those HTTP ingest wrote.)

Every chunk's payload is decompressed, in the order the chunks were written.
The second half is held out; printed, in B/span of chunk data (the zstd frame
and the format byte and dictionary id included):

* a dictionary trained as the store trains its first (the first 1,000 chunks)
  at 64 KiB and at 256 KiB, and one of 256 KiB trained on 2,000 chunks spread
  over the first half (as its second), each at zstd level 3;
* zstd levels 1-6 with the 256 KiB first-1,000 dictionary, with the time per chunk;
* decompression time per chunk with the 64 and 256 KiB dictionaries;
* the chunks of *--traces* traces as stored, merged into one chunk per trace,
  and compressed with the trace's earlier chunks as a raw zstd prefix.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from collections import defaultdict
from typing import Any

import msgpack
import zstandard

from crosstrace.server.store.codec import (
    CHUNK_FORMAT_PB_DICT,
    chunk_compressor,
    chunk_payload,
    compress_chunk,
)
from crosstrace.server.store.columns import merge_columns

FRAME = 5  # format byte and dictionary id


def spans_in(payload: bytes) -> int:
    return len(msgpack.unpackb(payload)[7])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="a SQLite store file")
    ap.add_argument("--traces", type=int, default=400)
    args = ap.parse_args()
    conn = sqlite3.connect(f"file:{args.store}?mode=ro", uri=True)
    dicts = {
        i: zstandard.ZstdCompressionDict(bytes(d))
        for i, d in conn.execute("SELECT id, data FROM zdicts").fetchall()
    }
    rows = conn.execute("SELECT trace_id, data FROM chunks ORDER BY id").fetchall()
    payloads = [chunk_payload(bytes(d), dicts.__getitem__) for _, d in rows]
    kept = [(bytes(t), bytes(d), p) for (t, d), p in zip(rows, payloads, strict=True) if p]
    raws: list[Any] = [p for _, _, p in kept]
    half = len(raws) // 2
    test = raws[half:]
    n_spans = sum(spans_in(p) for p in test)
    print(f"{args.store}: {len(raws)} chunks; held out: {len(test)} chunks, {n_spans} spans")

    random.seed(1)
    trained = {
        "64 KiB, first 1,000 chunks": zstandard.train_dictionary(64 * 1024, raws[:1000]),
        "256 KiB, first 1,000 chunks": zstandard.train_dictionary(256 * 1024, raws[:1000]),
        "256 KiB, 2,000 chunks of the first half": zstandard.train_dictionary(
            256 * 1024, random.sample(raws[:half], min(2000, half))
        ),
    }
    for name, d in trained.items():
        c = chunk_compressor(d)
        size = sum(len(c.compress(p)) + FRAME for p in test)
        print(f"  dictionary {name}: {size / n_spans:.1f} B/span")

    d256 = trained["256 KiB, first 1,000 chunks"]
    for level in range(1, 7):
        c = chunk_compressor(d256, level)
        t0 = time.perf_counter()
        size = sum(len(c.compress(p)) + FRAME for p in test)
        dt = time.perf_counter() - t0
        print(f"  level {level}: {size / n_spans:.1f} B/span, {dt / len(test) * 1e6:.1f} us/chunk")

    for name in ("64 KiB, first 1,000 chunks", "256 KiB, first 1,000 chunks"):
        d = trained[name]
        frames = [compress_chunk(p, (1, chunk_compressor(d))) for p in test]
        best = float("inf")

        def same(_: int, d: zstandard.ZstdCompressionDict = d) -> zstandard.ZstdCompressionDict:
            return d

        for _ in range(3):
            t0 = time.perf_counter()
            for f in frames:
                chunk_payload(f, same)
            best = min(best, time.perf_counter() - t0)
        print(f"  decompress with {name}: {best / len(frames) * 1e6:.2f} us/chunk")

    by_trace: dict[bytes, list[tuple[bytes, bytes]]] = defaultdict(list)
    for tid, data, payload in kept:
        by_trace[tid].append((data, payload))
    sample = random.sample(sorted(by_trace), min(args.traces, len(by_trace)))
    stored = merged = prefixed = spans = chunks = 0
    params = zstandard.ZstdCompressionParameters.from_level(
        3, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_dict_id=False
    )
    for tid in sample:
        group = by_trace[tid]
        if group[0][0][:1] != bytes((CHUNK_FORMAT_PB_DICT,)):
            continue
        d = dicts[int.from_bytes(group[0][0][1:5], "big")]
        parts = [p for _, p in group]
        spans += sum(spans_in(p) for p in parts)
        chunks += len(parts)
        stored += sum(len(data) for data, _ in group)
        one = merge_columns(parts) if len(parts) > 1 else parts[0]
        merged += len(chunk_compressor(d).compress(one or b"")) + FRAME
        prefixed += len(group[0][0])
        for k in range(1, len(parts)):
            prefix = zstandard.ZstdCompressionDict(
                b"".join(parts[:k]), dict_type=zstandard.DICT_TYPE_RAWCONTENT
            )
            c = zstandard.ZstdCompressor(dict_data=prefix, compression_params=params)
            prefixed += len(c.compress(parts[k])) + FRAME
    if spans:
        print(
            f"  {len(sample)} traces, {chunks / len(sample):.2f} chunks each: as stored"
            f" {stored / spans:.1f} B/span, one chunk per trace {merged / spans:.1f},"
            f" earlier chunks as a zstd prefix {prefixed / spans:.1f}"
        )


if __name__ == "__main__":
    main()
