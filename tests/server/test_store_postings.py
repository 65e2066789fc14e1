"""The SQLite store's index rows as postings: one row per key and batch, holding
every chunk of the batch that has the key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crosstrace.server.model import SpanRecord, TraceQuery
from crosstrace.server.store import read
from crosstrace.server.store.codec import (
    attr_hash,
    pack_posting,
    posting_has,
    posting_ids,
    posting_last,
)
from crosstrace.server.store.sqlite import SQLiteStore

NOW = time.time_ns() - 60 * 10**9
MS = 10**6
HOUR = 3600 * 10**9


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "store.sqlite3")
    yield s
    s.close()


def root(trace: int, service: str, start: int, method: str) -> SpanRecord:
    return SpanRecord(
        trace_id=trace.to_bytes(16, "big"),
        span_id=(trace * 10).to_bytes(8, "big"),
        parent_span_id=None,
        name=f"{method} /servers",
        kind=2,
        start_ns=start,
        end_ns=start + 5 * MS,
        service=service,
        attributes={"http.request.method": method},
    )


def found(store: SQLiteStore, q: TraceQuery) -> set[int]:
    return {int.from_bytes(t.trace_id, "big") for t in store.search_traces(q).traces}


def rows(store: SQLiteStore, table: str) -> list[tuple[int, int, bytes | None]]:
    with store._reader() as conn:
        return [tuple(r) for r in conn.execute(f"SELECT * FROM {table}").fetchall()]


def test_posting_round_trip() -> None:
    """A posting gives back its ids, its last id and each membership, small gaps
    and gaps of 128 and more alike."""
    for ids in ([5], [1, 2, 3, 4], [10, 11, 200, 201, 70_000], [3, 131]):
        first, more = pack_posting(ids)
        assert first == ids[0]
        assert (more is None) == (len(ids) == 1)
        assert posting_ids(first, more) == ids
        assert posting_last(first, more) == ids[-1]
        for c in range(ids[0] - 2, ids[-1] + 3):
            assert posting_has(first, more, c) == (c in ids), (ids, c)


def test_a_batch_writes_one_row_per_key(store: SQLiteStore) -> None:
    """Thirty traces in one batch, all of one service and method: one service
    row, one operation row and one attribute row, each holding the thirty
    chunks; searches find all thirty."""
    store.write_spans([root(n, "nova-api", NOW + n * MS, "GET") for n in range(1, 31)])
    keys = rows(store, "key_chunks")
    assert len(keys) == 2  # the service and its one operation
    assert all(len(posting_ids(first, more)) == 30 for _, first, more in keys)
    (attr,) = rows(store, "attr_chunks")
    assert attr[0] == attr_hash("http.request.method", "GET")
    every = set(range(1, 31))
    q = TraceQuery(service="nova-api", limit=100)
    assert found(store, q) == every
    assert found(store, TraceQuery(operation="GET /servers", limit=100)) == every
    assert found(store, TraceQuery(attributes={"http.request.method": "GET"}, limit=100)) == every


@pytest.mark.parametrize("common", [False, True], ids=["collected", "walked"])
def test_searches_read_postings_of_several_batches(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, common: bool
) -> None:
    """Keys shared by several batches and keys of a few chunks of a batch are
    found, by the rare-value lookup and by the trace-by-trace walk alike."""
    if common:
        monkeypatch.setattr(read, "RARE_ATTR_CHUNKS", 0)
    for batch in range(3):
        store.write_spans(
            [
                root(
                    n,
                    "nova-api" if n % 3 else "glance-api",
                    NOW + n * MS,
                    "GET" if n % 2 else "PUT",
                )
                for n in range(batch * 20 + 1, batch * 20 + 21)
            ]
        )
    every = range(1, 61)
    assert found(store, TraceQuery(attributes={"http.request.method": "PUT"}, limit=100)) == {
        n for n in every if n % 2 == 0
    }
    assert found(store, TraceQuery(service="glance-api", limit=100)) == {
        n for n in every if n % 3 == 0
    }
    assert found(
        store, TraceQuery(service="nova-api", attributes={"http.request.method": "GET"}, limit=100)
    ) == {n for n in every if n % 3 and n % 2}


def test_retention_takes_deleted_chunks_out_of_their_postings(store: SQLiteStore) -> None:
    """Deleting some traces of a batch (its first chunk among them) leaves the
    others findable through the same postings; deleting the rest leaves no row."""
    old, new = NOW - 3 * HOUR, NOW
    # Odd traces are old: the batch's first chunk and every other one expire.
    store.write_spans(
        [root(n, "nova-api", (old if n % 2 else new) + n * MS, "GET") for n in range(1, 11)]
    )
    assert store.apply_retention(2 * HOUR) == 5
    left = {2, 4, 6, 8, 10}
    assert found(store, TraceQuery(service="nova-api")) == left
    assert found(store, TraceQuery(attributes={"http.request.method": "GET"})) == left
    for table in ("key_chunks", "attr_chunks"):
        for _, first, more in rows(store, table):
            assert len(posting_ids(first, more)) == 5
    assert store.apply_retention(1) == 5
    assert rows(store, "key_chunks") == rows(store, "attr_chunks") == []
