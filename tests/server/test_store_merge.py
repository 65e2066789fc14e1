"""The SQLite store merges a trace's chunks of the writes of one commit
(``store/merge.py``); the encodings and the schema step (v9) that came with it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from crosstrace.server.batch.scan import from_records
from crosstrace.server.model import SpanRecord, TraceQuery
from crosstrace.server.store.codec import (
    KEY_WIDTH,
    pack_ints,
    pack_keys,
    pack_posting,
    posting_from_bytes,
    posting_ids,
    unpack_keys,
)
from crosstrace.server.store.columns import decode_columns, encode_columns, merge_columns
from crosstrace.server.store.merge import digests_of, pack_digests
from crosstrace.server.store.migrations import LATEST_VERSION
from crosstrace.server.store.sqlite import SQLiteStore

NOW = time.time_ns() - 60 * 10**9
MS = 10**6


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "store.sqlite3")
    yield s
    s.close()


def rec(trace: int, n: int, parent: int | None, service: str, **kw: Any) -> SpanRecord:
    fields: dict[str, Any] = {
        "trace_id": trace.to_bytes(16, "big"),
        "span_id": (trace * 100 + n).to_bytes(8, "big"),
        "parent_span_id": (trace * 100 + parent).to_bytes(8, "big") if parent else None,
        "name": f"op {n % 4}",
        "kind": 3 if n % 2 else 2,
        "start_ns": NOW + trace * MS + n * 1000,
        "end_ns": NOW + trace * MS + n * 1000 + 700,
        "service": service,
        "attributes": {"openstack.user_id": f"u{trace}", "n": n},
        "resource": {"service.name": service, "host.name": "ctl-0"},
    }
    return SpanRecord(**(fields | kw))


def batches() -> list[list[SpanRecord]]:
    """Three writes, each with spans of traces 1 and 2 from two services."""
    return [
        [
            rec(t, 3 * b + k, 3 * b + k - 1 if 3 * b + k > 1 else None, svc)
            for t in (1, 2)
            for k, svc in ((1, "nova-api"), (2, "glance-api"), (3, "nova-api"))
        ]
        for b in range(3)
    ]


def in_one_commit(store: SQLiteStore, writes: list[list[SpanRecord]]) -> None:
    """Submit *writes* while the writer is held, so that one commit takes them all
    (the writer took the holding job alone before they were queued)."""
    started, go = threading.Event(), threading.Event()

    def hold(conn: Any) -> bool:
        started.set()
        return go.wait(10)

    held: Future[Any] = store._writer.submit("call", hold, 1)
    assert started.wait(10)
    futures = [store.submit_batch(from_records(spans)) for spans in writes]
    go.set()
    held.result()
    for f in futures:
        f.result()


def chunk_rows(store: SQLiteStore) -> list[tuple[bytes, Any]]:
    with store._reader() as conn:
        return [(bytes(t), d) for t, d in conn.execute("SELECT trace_id, digest FROM chunks")]


def test_merged_columns_give_back_every_span() -> None:
    """A trace's chunks of several batches merged into one read back as the
    spans of all of them, each span's bytes as they came."""
    groups = []
    for spans in batches():
        batch = from_records([s for s in spans if s.trace_id == (1).to_bytes(16, "big")])
        (group,) = batch.groups.values()
        groups.append((encode_columns(group, batch), batch.records()))
    merged = merge_columns([payload for payload, _ in groups])
    assert merged is not None
    want = sorted((s for _, spans in groups for s in spans), key=lambda s: s.span_id)
    back = sorted(decode_columns((1).to_bytes(16, "big"), merged), key=lambda s: s.span_id)
    assert back == want
    assert len(merged) < sum(len(payload) for payload, _ in groups)


def test_writes_of_one_commit_store_one_chunk_per_trace(store: SQLiteStore) -> None:
    """Three writes committed together leave one chunk per trace holding the
    spans of all three; the trace reads whole and is found by its service,
    operation and attribute."""
    writes = batches()
    in_one_commit(store, writes)
    rows = chunk_rows(store)
    assert sorted(t for t, _ in rows) == [(1).to_bytes(16, "big"), (2).to_bytes(16, "big")]
    assert all(len(digests_of(d)) == 3 for _, d in rows)
    for t in (1, 2):
        tid = t.to_bytes(16, "big")
        want = sorted((s for spans in writes for s in spans if s.trace_id == tid), key=id)
        got = store.get_trace(tid)
        assert [s.span_id for s in got] == sorted(s.span_id for s in want)
        summary = store.get_trace_summary(tid)
        assert summary is not None
        assert (summary.span_count, summary.services) == (9, ["glance-api", "nova-api"])
        for q in (
            TraceQuery(service="glance-api"),
            TraceQuery(operation="op 2"),
            TraceQuery(attributes={"openstack.user_id": f"u{t}"}),
        ):
            assert tid in [x.trace_id for x in store.search_traces(q).traces], q


def test_a_write_delivered_again_after_a_merge_is_stored_once(store: SQLiteStore) -> None:
    """Each write a merged chunk holds is recognised when it comes again, alone
    or with others in one commit."""
    writes = batches()
    in_one_commit(store, writes)
    before = len(chunk_rows(store))
    store.submit_batch(from_records(writes[1])).result()
    in_one_commit(store, [writes[2], writes[0]])
    assert len(chunk_rows(store)) == before
    summary = store.get_trace_summary((1).to_bytes(16, "big"))
    assert summary is not None
    assert summary.span_count == 9
    assert len(store.get_trace((1).to_bytes(16, "big"))) == 9


def test_chunk_keys_digests_and_postings_round_trip() -> None:
    """Keys as varints and in the earlier fixed form, packed digests and
    postings (a bit per chunk, and the earlier byte per chunk) read back."""
    for keys in ([1], [3, -7, 64, -65, 2**20, -(2**30)], []):
        assert unpack_keys(pack_keys(keys)) == keys
        assert unpack_keys(pack_ints(keys, KEY_WIDTH)) == keys
    assert len(pack_keys([3, -120])) == 4
    assert digests_of(5) == [5]
    assert digests_of(pack_digests([-1, 2**63 - 1, 0])) == [-1, 2**63 - 1, 0]
    for ids in ([10, 11, 200, 201], [3, 131], [1, 9], [1, 2, 9, 17]):
        first, bits = pack_posting(ids)
        assert bits is not None
        old = bytearray(ids[-1] - first)
        for c in ids[1:]:
            old[c - first - 1] = 1
        assert posting_from_bytes(bytes(old)) == bits
        assert posting_ids(first, bits) == ids


def _as_version_8(path: Path) -> None:
    """Rewrite a store's file into the form of schema v8: postings with a byte
    per chunk, chunk keys 4 bytes each, ``span_parents`` with a rowid."""
    conn = sqlite3.connect(path, isolation_level=None)
    for table, col in (("key_chunks", "key"), ("attr_chunks", "h")):
        for key, first, more in conn.execute(f"SELECT {col}, chunk_id, more FROM {table}"):
            if more is None:
                continue
            ids = posting_ids(first, more)
            old = bytearray(ids[-1] - first)
            for c in ids[1:]:
                old[c - first - 1] = 1
            conn.execute(
                f"UPDATE {table} SET more = ? WHERE {col} = ? AND chunk_id = ?",
                (bytes(old), key, first),
            )
    for cid, keys in conn.execute("SELECT id, keys FROM chunks").fetchall():
        conn.execute(
            "UPDATE chunks SET keys = ? WHERE id = ?",
            (pack_ints(unpack_keys(keys), KEY_WIDTH), cid),
        )
    parents = conn.execute("SELECT trace_id, t, data FROM span_parents").fetchall()
    conn.execute("DROP TABLE span_parents")
    conn.execute(
        "CREATE TABLE span_parents (id INTEGER PRIMARY KEY, trace_id BLOB NOT NULL,"
        " t INTEGER NOT NULL, data BLOB NOT NULL)"
    )
    conn.execute("CREATE INDEX span_parents_trace ON span_parents (trace_id)")
    for tid, t, data in parents:  # each caller in a row of its own, as v8 wrote them
        for i in range(0, len(data), 12):
            conn.execute(
                "INSERT INTO span_parents (trace_id, t, data) VALUES (?, ?, ?)",
                (tid, t, data[i : i + 12]),
            )
    conn.execute("DROP TABLE chunk_compaction")  # v10
    conn.execute("DELETE FROM schema_version WHERE version >= 9")
    conn.close()


def test_a_version_8_store_is_upgraded_and_reads_as_before(tmp_path: Path) -> None:
    """A store of schema v8 is upgraded when opened: its postings, chunk keys and
    dependency lookups read as before, and a child arriving after the upgrade
    finds its caller."""
    path = tmp_path / "v8.sqlite3"
    s = SQLiteStore(path)
    spans = [rec(t, n, n - 1 if n > 1 else None, "nova-api") for t in range(1, 41) for n in (1, 2)]
    s.write_spans(spans)
    s.close()
    _as_version_8(path)
    s = SQLiteStore(path)
    try:
        with s._reader() as conn:
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            assert version == LATEST_VERSION
            (n_parents,) = conn.execute("SELECT count(*) FROM span_parents").fetchone()
        assert n_parents == 40  # one row per trace and second again
        every = {t.to_bytes(16, "big") for t in range(1, 41)}
        page = s.search_traces(TraceQuery(service="nova-api", limit=50))
        assert {x.trace_id for x in page.traces} == every
        q = TraceQuery(attributes={"openstack.user_id": "u7"})
        assert [x.trace_id for x in s.search_traces(q).traces] == [(7).to_bytes(16, "big")]
        summary = s.get_trace_summary((7).to_bytes(16, "big"))
        assert summary is not None
        assert summary.services == ["nova-api"]
        # Span 1 of each trace is a CLIENT span: a child in another service counts.
        s.write_spans([rec(7, 3, 1, "glance-api")])
        assert ("nova-api", "glance-api") in {
            (e.caller, e.callee) for e in s.dependencies(NOW - 3600 * 10**9, NOW + 3600 * 10**9)
        }
        assert s.apply_retention(1) == 40
    finally:
        s.close()
