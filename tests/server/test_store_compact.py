"""A trace's chunks of several commits merged once the trace is quiet
(``store/compact.py``), and the writer's idle work that runs it
(``store/writer.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crosstrace.server.model import ATTR_GLOBAL_REQUEST_ID, ATTR_REQUEST_ID, SpanRecord, TraceQuery
from crosstrace.server.store import compact as compact_module
from crosstrace.server.store.codec import attr_hash, posting_ids
from crosstrace.server.store.sqlite import SQLiteStore
from crosstrace.server.store.writer import GroupWriter, Job

NOW = time.time_ns() - 60 * 10**9
MS = 10**6
GLOBAL = "req-99999999-9999-4999-8999-999999999999"


class Clock:
    """The compaction's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.cpu = 0.0  # the process's CPU time

    def monotonic(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(compact_module, "time", c)
    return c


def opened(path: Path) -> SQLiteStore:
    """A store whose steps only the test runs (its writer's idle work is off)."""
    s = SQLiteStore(path)
    s._writer._idle = None
    return s


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SQLiteStore]:
    s = opened(tmp_path / "store.sqlite3")
    yield s
    s.close()


def tid(trace: int) -> bytes:
    return trace.to_bytes(16, "big")


def rec(trace: int, n: int, service: str, **attrs: Any) -> SpanRecord:
    return SpanRecord(
        trace_id=tid(trace),
        span_id=(trace * 100 + n).to_bytes(8, "big"),
        parent_span_id=(trace * 100 + n - 1).to_bytes(8, "big") if n > 1 else None,
        name=f"op {n}",
        kind=2,
        start_ns=NOW + trace * MS + n * 1000,
        end_ns=NOW + trace * MS + n * 1000 + 700,
        service=service,
        attributes={
            ATTR_GLOBAL_REQUEST_ID: GLOBAL,
            ATTR_REQUEST_ID: f"req-{trace:08d}-0000-4000-8000-{n:012d}",
            **attrs,
        },
        resource={"service.name": service},
    )


def write_in_commits(store: SQLiteStore, trace: int, services: list[str]) -> list[SpanRecord]:
    """Trace *trace* written one span per commit, span n by ``services[n - 1]``."""
    spans = [
        rec(trace, n, svc, **{"openstack.user_id": f"u{trace}-{n}"})
        for n, svc in enumerate(services, 1)
    ]
    for s in spans:
        store.write_spans([s])
    return spans


def chunk_ids(store: SQLiteStore, trace: int) -> list[int]:
    with store._reader() as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT id FROM chunks WHERE trace_id = ? ORDER BY id", (tid(trace),)
            )
        ]


def step(store: SQLiteStore, everything: bool = False) -> bool:
    """One compaction step, run by the writer thread."""
    return bool(
        store._writer.submit("raw", lambda conn: store._compact_step(everything), 1).result()
    )


def found(store: SQLiteStore, **kw: Any) -> set[bytes]:
    return {t.trace_id for t in store.search_traces(TraceQuery(limit=50, **kw)).traces}


def test_a_quiet_trace_of_several_commits_is_merged_and_reads_as_before(
    store: SQLiteStore, clock: Clock
) -> None:
    """Three commits leave three chunks; once nothing has come for the quiet
    period they are one chunk, and the trace reads, is found (by each service,
    operation, attribute and request id of every commit) and is counted as
    before. A trace of one commit is left alone."""
    spans = write_in_commits(store, 1, ["nova-api", "glance-api", "cinder-api"])
    store.write_spans([rec(2, 1, "nova-api")])
    old = chunk_ids(store, 1)
    assert len(old) == 3
    before = store.get_trace(tid(1))
    assert not step(store)  # not quiet yet
    assert chunk_ids(store, 1) == old
    clock.now += compact_module.QUIET_S
    step(store)
    (merged,) = chunk_ids(store, 1)
    assert merged > max(old)
    assert len(chunk_ids(store, 2)) == 1
    assert (store.traces_merged, store.chunks_merged) == (1, 3)
    assert store.get_trace(tid(1)) == before == sorted(spans, key=lambda s: s.start_ns)
    for svc in ("nova-api", "glance-api", "cinder-api"):
        assert tid(1) in found(store, service=svc)
    assert found(store, service="cinder-api", operation="op 3") == {tid(1)}
    assert found(store, attributes={"openstack.user_id": "u1-3"}) == {tid(1)}
    assert found(store, request_id=spans[2].attributes[ATTR_REQUEST_ID]) == {tid(1)}
    assert found(store, request_id=GLOBAL) == {tid(1), tid(2)}
    summary = store.get_trace_summary(tid(1))
    assert summary is not None
    assert summary.span_count == 3
    assert sorted(summary.services) == ["cinder-api", "glance-api", "nova-api"]


def posting_ids_of(store: SQLiteStore, table: str, col: str, key: int) -> list[int]:
    with store._reader() as conn:
        return [
            c
            for first, more in conn.execute(
                f"SELECT chunk_id, more FROM {table} WHERE {col} = ? ORDER BY chunk_id", (key,)
            )
            for c in posting_ids(first, more)
        ]


def test_the_replaced_chunks_leave_the_attribute_postings_and_keys_keep_bits(
    store: SQLiteStore, clock: Clock
) -> None:
    """After a merge, an attribute value's postings name the merged chunk only
    (a rare value's count stays true); a service's postings keep the replaced
    chunk's bit, which names no chunk, beside the merged one."""
    write_in_commits(store, 1, ["nova-api", "glance-api", "cinder-api"])
    old = chunk_ids(store, 1)
    h = attr_hash("openstack.user_id", "u1-3")
    assert posting_ids_of(store, "attr_chunks", "h", h) == old[2:]
    with store._reader() as conn:
        (cinder,) = conn.execute("SELECT id FROM names WHERE name = 'cinder-api'").fetchone()
    assert posting_ids_of(store, "key_chunks", "key", cinder) == old[2:]
    clock.now += compact_module.QUIET_S
    step(store)
    (merged,) = chunk_ids(store, 1)
    assert posting_ids_of(store, "attr_chunks", "h", h) == [merged]
    assert posting_ids_of(store, "key_chunks", "key", cinder) == [old[2], merged]
    assert found(store, attributes={"openstack.user_id": "u1-3"}) == {tid(1)}


def test_a_trace_still_written_to_waits_and_a_merged_one_knows_its_batches(
    store: SQLiteStore, clock: Clock
) -> None:
    """A trace with a chunk newer than the quiet period keeps its chunks until
    that one is quiet too; a batch of a merged trace delivered again is not
    stored twice."""
    write_in_commits(store, 1, ["nova-api", "glance-api"])
    clock.now += compact_module.QUIET_S
    late = rec(1, 3, "cinder-api")
    store.write_spans([late])
    step(store)
    assert len(chunk_ids(store, 1)) == 3
    clock.now += compact_module.QUIET_S
    step(store)
    assert len(chunk_ids(store, 1)) == 1
    written = store.spans_written
    store.write_spans([late])
    assert store.spans_written == written
    assert len(chunk_ids(store, 1)) == 1
    summary = store.get_trace_summary(tid(1))
    assert summary is not None
    assert summary.span_count == 3


def test_merging_resumes_after_reopening(tmp_path: Path, clock: Clock) -> None:
    """How far merging got is kept in the file: chunks written before a restart
    are merged after it, and ids are never given twice, even once retention
    has deleted the newest chunk."""
    path = tmp_path / "store.sqlite3"
    s = opened(path)
    write_in_commits(s, 1, ["nova-api", "glance-api"])
    s.close()
    s = opened(path)
    try:
        write_in_commits(s, 2, ["nova-api", "glance-api"])
        clock.now += compact_module.QUIET_S
        while step(s):
            pass
        assert len(chunk_ids(s, 1)) == len(chunk_ids(s, 2)) == 1
        top = max(chunk_ids(s, 2))
        assert s.apply_retention(max_age_ns=1) == 2
    finally:
        s.close()
    s = opened(path)
    try:
        s.write_spans([rec(3, 1, "keystone")])
        assert chunk_ids(s, 3)[0] > top
        assert found(s, service="nova-api") == set()
        assert found(s, service="keystone") == {tid(3)}
    finally:
        s.close()


def test_retention_deletes_the_postings_merged_chunks_left(
    store: SQLiteStore, clock: Clock
) -> None:
    """The postings of the chunks a merge replaced stay until retention has
    deleted every chunk they could hold; then none is left."""
    for trace in range(1, 6):
        write_in_commits(store, trace, ["nova-api", "glance-api", "nova-api"])
    clock.now += compact_module.QUIET_S
    while step(store):
        pass
    assert store.traces_merged == 5

    def postings() -> int:
        with store._reader() as conn:
            return sum(
                conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("key_chunks", "attr_chunks")
            )

    assert postings() > 0
    assert found(store, service="glance-api") == {tid(t) for t in range(1, 6)}
    store.apply_retention(max_age_ns=1)
    assert postings() == 0


def test_compact_merges_now_and_gives_the_pages_back(store: SQLiteStore) -> None:
    """``compact()`` merges every trace of several commits without waiting, and
    leaves no free page in the file."""
    for trace in range(1, 41):
        write_in_commits(store, trace, ["nova-api", "glance-api", "cinder-api"])
    assert store.compact() == 40
    assert all(len(chunk_ids(store, t)) == 1 for t in range(1, 41))
    with store._reader() as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert store.stats()["traces_merged"] == 40
    assert store.compact() == 0


def test_the_idle_writer_runs_background_steps_between_groups() -> None:
    """Background work runs only while no job waits: jobs queued during a step
    are committed together right after it, before the next step."""
    events: list[str] = []
    in_step = threading.Event()
    release = threading.Event()
    steps = iter([True, True, False])

    def idle() -> bool:
        events.append("step")
        if len(events) == 1:
            in_step.set()
            release.wait(10)
        return next(steps, False)

    def run_group(jobs: list[Job]) -> list[Any]:
        events.append(f"group of {len(jobs)}")
        return [None] * len(jobs)

    writer = GroupWriter("test-writer", run_group, idle)
    try:
        assert in_step.wait(10)  # the queue was empty: a step began
        futures = [writer.submit("call", None, 1) for _ in range(3)]
        release.set()
        for f in futures:
            f.result(10)
        writer.submit("call", None, 1).result(10)
    finally:
        writer.close(10)
    assert events[:3] == ["step", "group of 3", "step"]
    assert "group of 1" in events


def test_merging_takes_its_share_while_writes_come_and_all_once_they_stop(
    store: SQLiteStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While writes keep coming, a step that took d waits d * (1 / share - 1)
    before the next; once none has come for a while, steps follow at once."""
    monkeypatch.setattr(compact_module, "STEP_CHUNKS", 2)
    merge = store._merge_traces

    def slow_merge(*args: Any) -> tuple[int, int]:
        clock.now += 0.01  # each step takes 10 ms
        return merge(*args)

    monkeypatch.setattr(store, "_merge_traces", slow_merge)
    for trace in range(1, 5):
        write_in_commits(store, trace, ["nova-api", "glance-api"])
    clock.now += compact_module.QUIET_S
    store.write_spans([rec(9, 1, "keystone")])  # writes are coming
    wait = 0.01 * (1 / compact_module.BUSY_SHARE - 1)
    assert step(store)
    assert store.traces_merged == 1
    clock.now += wait / 2
    assert not step(store)  # not its turn yet
    assert store.traces_merged == 1
    clock.now += wait / 2
    assert step(store)
    assert store.traces_merged == 2
    clock.now += compact_module.IDLE_S  # no write for a while: no waiting
    assert step(store)
    assert not step(store)  # the last chunks written long enough ago
    assert store.traces_merged == 4


def test_a_failed_step_is_rolled_back_and_merging_pauses(
    store: SQLiteStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that fails leaves the chunks and the progress as they were, and
    merging waits a while before it tries again."""
    write_in_commits(store, 1, ["nova-api", "glance-api"])
    clock.now += compact_module.QUIET_S

    def broken(conn: Any, *args: Any) -> tuple[int, int]:
        conn.execute("DELETE FROM chunks")  # undone by the rollback
        raise OSError("disk full")

    monkeypatch.setattr(store, "_merge_traces", broken)
    with pytest.raises(OSError, match="disk full"):
        step(store)
    monkeypatch.delattr(store, "_merge_traces")  # the class's again
    assert len(chunk_ids(store, 1)) == 2
    assert store._compacted_upto == 0
    assert not step(store)
    assert len(chunk_ids(store, 1)) == 2
    clock.now += compact_module.FAILED_PAUSE_S
    step(store)
    assert len(chunk_ids(store, 1)) == 1


def test_merging_waits_while_the_process_is_at_full_load(store: SQLiteStore, clock: Clock) -> None:
    """While writes come and the process's CPU use (apart from merging) is at
    the ceiling, no step runs; once it falls, merging takes its share again."""
    write_in_commits(store, 1, ["nova-api", "glance-api"])
    clock.now += compact_module.QUIET_S
    clock.cpu += compact_module.QUIET_S * 0.9  # 0.9 of a core meanwhile
    store.write_spans([rec(9, 1, "keystone")])  # writes are coming
    assert not step(store)
    assert store.traces_merged == 0
    clock.now += 1.0
    clock.cpu += 0.2  # a fifth of a core in the last second
    step(store)
    assert store.traces_merged == 1


def test_two_stores_on_one_file_give_distinct_chunk_ids(tmp_path: Path, clock: Clock) -> None:
    """Two writers on the same file (two processes, say) never give the same
    chunk id: each takes the next above every chunk the file holds."""
    path = tmp_path / "store.sqlite3"
    a, b = opened(path), opened(path)
    try:
        a.write_spans([rec(1, 1, "nova-api")])
        b.write_spans([rec(2, 1, "glance-api")])
        a.write_spans([rec(3, 1, "cinder-api")])
        ids = [chunk_ids(a, t) for t in (1, 2, 3)]
        assert [len(i) for i in ids] == [1, 1, 1]
        assert len({i[0] for i in ids}) == 3
        assert found(b, service="cinder-api") == {tid(3)}
    finally:
        a.close()
        b.close()
