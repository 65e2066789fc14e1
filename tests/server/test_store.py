"""One suite for both stores: SQLite (a temporary file) and the real PostgreSQL
(a fresh schema per test through the ``postgres_schema_url`` fixture)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crosstrace.server.batch.scan import from_records
from crosstrace.server.model import (
    ATTR_REQUEST_ID,
    STATUS_ERROR,
    STATUS_OK,
    LogQuery,
    LogRecord,
    SpanRecord,
    TraceQuery,
)
from crosstrace.server.store import Store, open_store
from crosstrace.server.store import read as read_module
from crosstrace.server.store.columns import decode_columns
from crosstrace.server.store.migrations import LATEST_VERSION, SchemaVersionError, migrate
from crosstrace.server.store.postgres import PostgresStore
from crosstrace.server.store.sqlite import SQLiteStore

NOW = time.time_ns() - 60 * 10**9  # a minute ago: inside any "recent" window
MS = 10**6
HOUR = 3600 * 10**9
RID_A = "req-11111111-1111-4111-8111-111111111111"
RID_B = "req-22222222-2222-4222-8222-222222222222"
RID_G = "req-99999999-9999-4999-8999-999999999999"


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A function opening (again) the same store under test."""
    if request.param == "sqlite":
        path = tmp_path / "sub" / "store.sqlite3"
        return lambda: SQLiteStore.from_url(f"sqlite:///{path}")
    url = request.getfixturevalue("postgres_schema_url")
    return lambda: PostgresStore.from_url(url)


@pytest.fixture
def store(opener: Callable[[], Store]) -> Iterator[Store]:
    s = opener()
    yield s
    s.close()


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def span(
    trace: int,
    span_n: int,
    parent: int | None,
    service: str,
    name: str,
    start: int,
    dur: int = 10 * MS,
    *,
    kind: int = 1,
    status: int = 0,
    attrs: dict[str, Any] | None = None,
) -> SpanRecord:
    return SpanRecord(
        trace_id=tid(trace),
        span_id=sid(span_n),
        parent_span_id=sid(parent) if parent is not None else None,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=start + dur,
        service=service,
        status_code=status,
        attributes=dict(attrs or {}),
        resource={"service.name": service, "host.name": "node-1", "process.pid": 42},
    )


def test_spans_round_trip_field_for_field(store: Store) -> None:
    """Spans of several traces written in several batches read back exactly."""
    rich = SpanRecord(
        trace_id=tid(1),
        span_id=sid(1),
        parent_span_id=None,
        name="POST /servers",
        kind=2,
        start_ns=NOW,
        end_ns=NOW + 250 * MS,
        service="nova-api",
        status_code=STATUS_ERROR,
        status_message="boom",
        attributes={
            "s": "text é",
            "b": True,
            "f": False,
            "i": -(2**63),
            "u": 2**63 - 1,
            "x": 1.25,
            "raw": b"\x00\xff",
            "list": [1, "a", True, 2.5],
            "kv": {"inner": {"deep": [b"\x01", None]}},
            "empty": "",
        },
        events=[
            {
                "time_ns": NOW + 5,
                "name": "exception",
                "attributes": {"exception.type": "ValueError", "exception.stacktrace": "tb"},
            }
        ],
        links=[{"trace_id": "ab" * 16, "span_id": "cd" * 8, "attributes": {"k": 1}}],
        resource={"service.name": "nova-api", "process.pid": 7},
        scope="crosstrace.wsgi",
        trace_state="k=v",
    )
    child = span(1, 2, 1, "nova-api", "db", NOW + 10 * MS, kind=3, status=STATUS_OK)
    other = [span(2, n, None if n == 1 else 1, "glance", f"op{n}", NOW + n) for n in range(1, 6)]
    store.write_spans([child, other[0]])
    store.write_spans([rich, *other[1:]])
    assert store.get_trace(tid(1)) == [rich, child]
    assert store.get_trace(tid(2)) == other
    assert store.get_trace(tid(3)) == []


def test_summary_merges_batches_from_several_services(store: Store) -> None:
    """start = min, end = max, counts add, root = the parentless span, services and
    request ids united, whichever batch comes first."""
    callee = [
        span(
            7,
            3,
            2,
            "cinder",
            "POST /volumes",
            NOW + 20 * MS,
            30 * MS,
            kind=2,
            status=STATUS_ERROR,
            attrs={"openstack.request_id": RID_B, "openstack.global_request_id": RID_G},
        ),
        span(7, 4, 3, "cinder", "db", NOW + 25 * MS, 5 * MS, status=STATUS_ERROR),
    ]
    caller = [
        span(
            7,
            1,
            None,
            "nova",
            "POST /servers",
            NOW,
            100 * MS,
            kind=2,
            attrs={
                "openstack.request_id": RID_A,
                "openstack.global_request_id": RID_G,
                "openstack.project_id": "proj-1",
                "openstack.domain_id": "dom-1",
            },
        ),
        span(7, 2, 1, "nova", "cinder create", NOW + 15 * MS, 50 * MS, kind=3),
    ]
    store.write_spans(callee)
    early = store.get_trace_summary(tid(7))
    assert early is not None
    assert (early.root_service, early.root_operation) == ("cinder", "POST /volumes")
    store.write_spans(caller)
    s = store.get_trace_summary(tid(7))
    assert s is not None
    assert (s.start_ns, s.end_ns, s.duration_ns) == (NOW, NOW + 100 * MS, 100 * MS)
    assert (s.root_service, s.root_operation) == ("nova", "POST /servers")
    assert (s.span_count, s.error_count) == (4, 2)
    assert s.services == ["cinder", "nova"]
    assert s.request_ids == [RID_A, RID_B]
    assert s.global_request_ids == [RID_G]
    assert (s.project_id, s.domain_id) == ("proj-1", "dom-1")
    assert store.get_trace_summary(tid(8)) is None


def test_summary_root_is_earliest_span_with_unknown_parent(store: Store) -> None:
    """Without a parentless span the root is the earliest span whose parent is unknown."""
    store.write_spans(
        [span(9, 2, 100, "svc", "late", NOW + 5), span(9, 3, 2, "svc", "kid", NOW + 6)]
    )
    store.write_spans([span(9, 1, 101, "svc", "early", NOW)])
    s = store.get_trace_summary(tid(9))
    assert s is not None
    assert s.root_operation == "early"


@pytest.fixture
def corpus(store: Store) -> Store:
    """Six traces covering every search filter."""
    spans = [
        # 1: nova -> glance, ok, project p1, 100 ms, request A global G
        span(
            1,
            1,
            None,
            "nova",
            "GET /servers",
            NOW - 50 * MS,
            100 * MS,
            attrs={
                "openstack.request_id": RID_A,
                "openstack.global_request_id": RID_G,
                "openstack.project_id": "p1",
                "openstack.domain_id": "d1",
                "http.response.status_code": 200,
            },
        ),
        span(
            1,
            2,
            1,
            "glance",
            "GET /images",
            NOW - 40 * MS,
            20 * MS,
            attrs={"openstack.request_id": RID_B, "custom.color": "red"},
        ),
        # 2: error trace, project p2, 2 s
        span(
            2,
            1,
            None,
            "nova",
            "POST /servers",
            NOW - 40 * MS,
            2000 * MS,
            status=STATUS_ERROR,
            attrs={
                "openstack.project_id": "p2",
                "openstack.domain_id": "d1",
                "http.response.status_code": 500,
            },
        ),
        # 3: cinder only, 3 hours ago
        span(
            3,
            1,
            None,
            "cinder",
            "POST /volumes",
            NOW - 3 * HOUR,
            5 * MS,
            attrs={"openstack.project_id": "p1", "custom.color": "blue"},
        ),
        # 4: glance root, error, no project
        span(4, 1, None, "glance", "GET /images", NOW - 30 * MS, 1 * MS, status=STATUS_ERROR),
        # 5: nova GET /images (same operation name, other service)
        span(
            5,
            1,
            None,
            "nova",
            "GET /images",
            NOW - 20 * MS,
            300 * MS,
            attrs={"openstack.project_id": "p3", "custom.color": "red"},
        ),
        # 6: old, project p1
        span(
            6,
            1,
            None,
            "keystone",
            "POST /tokens",
            NOW - 30 * HOUR,
            1 * MS,
            attrs={"openstack.project_id": "p1"},
        ),
    ]
    store.write_spans(spans[:3])
    store.write_spans(spans[3:])
    return store


def ids(store: Store, **kw: Any) -> list[int]:
    page = store.search_traces(TraceQuery(limit=100, **kw))
    assert page.next_cursor is None
    return [int.from_bytes(t.trace_id, "big") for t in page.traces]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, [5, 4, 2, 1, 3, 6]),
        ({"service": "glance"}, [4, 1]),
        ({"service": "unknown"}, []),
        ({"operation": "GET /images"}, [5, 4, 1]),
        ({"service": "glance", "operation": "GET /images"}, [4, 1]),
        ({"service": "nova", "operation": "GET /images"}, [5]),
        ({"service": "cinder", "operation": "GET /images"}, []),
        ({"error": True}, [4, 2]),
        ({"error": False}, [5, 1, 3, 6]),
        ({"start_ns": NOW - HOUR}, [5, 4, 2, 1]),
        ({"start_ns": NOW - 4 * HOUR, "end_ns": NOW - HOUR}, [3]),
        ({"min_duration_ns": 100 * MS}, [5, 2, 1]),
        ({"max_duration_ns": 5 * MS}, [4, 3, 6]),
        ({"min_duration_ns": 100 * MS, "max_duration_ns": 300 * MS}, [5, 1]),
        ({"request_id": RID_A}, [1]),
        ({"request_id": RID_B}, [1]),
        ({"request_id": RID_G}, [1]),
        ({"request_id": "req-00000000-0000-4000-8000-000000000000"}, []),
        ({"project_id": "p1"}, [1, 3, 6]),
        ({"domain_id": "d1"}, [2, 1]),
        ({"attributes": {"http.response.status_code": "500"}}, [2]),
        ({"attributes": {"openstack.project_id": "p3"}}, [5]),
        ({"attributes": {"custom.color": "red"}}, [5, 1]),
        ({"attributes": {"custom.color": "red", "http.response.status_code": "200"}}, [1]),
        ({"allowed_projects": frozenset({"p1", "p3"})}, [5, 1, 3, 6]),
        ({"allowed_projects": frozenset()}, []),
        ({"service": "nova", "error": False, "allowed_projects": frozenset({"p1"})}, [1]),
    ],
)
def test_search_filters(corpus: Store, query: dict[str, Any], expected: list[int]) -> None:
    """Each TraceQuery filter narrows the result; newest first."""
    assert ids(corpus, **query) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("compute-7.ctl", [1]),
        ("42", [2]),
        ("2.5", [3]),
        ("true", [4]),
        ("0102", [5]),  # bytes, as hex
        ("quotas", [7]),
        ("test", [6]),  # a word that could be base64
        ("compute-9.ctl", []),
        ("43", []),
    ],
)
def test_span_scan_finds_each_value_type_in_any_chunk(
    store: Store, text: str, expected: list[int]
) -> None:
    """A non-indexed attribute is matched by its text whatever the value's type,
    in a trace whose other chunks (other writes) do not hold it."""
    values: list[Any] = ["compute-7.ctl", 42, 2.5, True, b"\x01\x02", "test", "quotas"]
    for n, value in enumerate(values, 1):
        store.write_spans([span(n, 1, None, "nova", "op", NOW - n * MS, attrs={"custom.v": 0})])
        store.write_spans([span(n, 2, 1, "nova", "op", NOW - n * MS, attrs={"custom.v": value})])
        store.write_spans([span(n, 3, 1, "nova", "op", NOW - n * MS, attrs={"custom.w": text})])
    assert ids(store, attributes={"custom.v": text}) == expected


def test_span_scan_decodes_no_chunk_without_the_text(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 4):
        store.write_spans(
            [span(n, 1, None, "nova", "op", NOW - n * MS, attrs={"custom.v": "red-1"})]
        )
    decoded: list[bytes] = []

    def counting(
        trace_id: bytes, payload: bytes, holding: list[bytes] | None = None
    ) -> list[SpanRecord]:
        decoded.append(trace_id)
        return decode_columns(trace_id, payload, holding)

    monkeypatch.setattr(read_module, "decode_columns", counting)
    assert ids(store, attributes={"custom.v": "compute-9.ctl"}) == []
    assert decoded == []
    assert ids(store, attributes={"custom.v": "red-1"}) == [1, 2, 3]
    assert len(decoded) == 3


def test_search_pages_with_cursor_without_gaps_or_duplicates(store: Store) -> None:
    """Paging through 23 traces (several sharing a start time) 5 at a time yields
    each exactly once, in (start, trace id) descending order."""
    spans = [span(n, 1, None, "svc", "op", NOW - (n // 3) * MS) for n in range(1, 24)]
    store.write_spans(spans[:10])
    store.write_spans(spans[10:])
    seen: list[bytes] = []
    cursor = None
    pages = 0
    while True:
        page = store.search_traces(TraceQuery(limit=5, cursor=cursor))
        seen.extend(t.trace_id for t in page.traces)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = sorted(spans, key=lambda s: (s.start_ns, s.trace_id), reverse=True)
    assert seen == [s.trace_id for s in expected]
    assert pages == 5


def test_search_rejects_bad_cursor_and_limit(store: Store) -> None:
    with pytest.raises(ValueError, match="cursor"):
        store.search_traces(TraceQuery(cursor="not a cursor!"))
    with pytest.raises(ValueError, match="cursor"):
        store.search_traces(TraceQuery(cursor="AAAA"))
    with pytest.raises(ValueError, match="limit"):
        store.search_traces(TraceQuery(limit=0))


def test_traces_for_request_by_global_or_local_id(corpus: Store) -> None:
    for rid in (RID_A, RID_B, RID_G):
        assert [t.trace_id for t in corpus.traces_for_request(rid)] == [tid(1)]
    assert corpus.traces_for_request("req-00000000-0000-4000-8000-000000000000") == []
    assert corpus.traces_for_request("not-a-request-id") == []


def log(n: int, **kw: Any) -> LogRecord:
    base: dict[str, Any] = {
        "time_ns": NOW + n * MS,
        "severity_number": 9,
        "severity_text": "INFO",
        "body": f"line {n}",
        "service": "nova",
        "dedup_key": b"key-%d" % n,
    }
    base.update(kw)
    return LogRecord(**base)


def test_logs_dedup_key_adds_nothing_twice(store: Store) -> None:
    """The same dedup_key written again adds nothing and counts 0."""
    batch = [log(1), log(2), log(3, dedup_key=None), log(2)]
    assert store.write_logs(batch) == 3
    assert store.write_logs([log(1), log(2)]) == 0
    assert store.write_logs([log(3, dedup_key=None)]) == 1
    assert len(store.search_logs(LogQuery())) == 4


def test_log_search_filters_and_time_order(store: Store) -> None:
    records = [
        log(
            5,
            request_id=RID_A,
            global_request_id=RID_G,
            project_id="p1",
            attributes={"k": 1, "b": b"\x00"},
            resource={"host.name": "n1"},
        ),
        log(
            1,
            request_id=RID_A,
            severity_number=17,
            severity_text="ERROR",
            body="Traceback (most recent call last):\n  boom 100%_done",
            project_id="p1",
        ),
        log(
            3,
            request_id=RID_B,
            global_request_id=RID_G,
            service="glance",
            project_id="p2",
            trace_id=tid(1),
            span_id=sid(2),
        ),
        log(4, service="glance", severity_number=13, severity_text="WARNING", body="disk LOW"),
    ]
    assert store.write_logs(records) == 4

    def bodies(**kw: Any) -> list[str]:
        return [r.body for r in store.search_logs(LogQuery(**kw))]

    assert bodies() == [records[1].body, "line 3", "disk LOW", "line 5"]
    assert bodies(request_id=RID_A) == [records[1].body, "line 5"]
    assert bodies(request_id=RID_G) == ["line 3", "line 5"]
    assert bodies(trace_id=tid(1)) == ["line 3"]
    assert bodies(service="glance") == ["line 3", "disk LOW"]
    assert bodies(service="nobody") == []
    assert bodies(min_severity=13) == [records[1].body, "disk LOW"]
    assert bodies(text="low") == ["disk LOW"]
    assert bodies(text="100%_") == [records[1].body]
    assert bodies(text="%") == [records[1].body]
    assert bodies(start_ns=NOW + 3 * MS, end_ns=NOW + 4 * MS) == ["line 3", "disk LOW"]
    assert bodies(limit=2) == [records[1].body, "line 3"]
    assert bodies(allowed_projects=frozenset({"p2"})) == ["line 3"]
    assert bodies(allowed_projects=frozenset()) == []
    full = store.search_logs(LogQuery(request_id=RID_G))[1]
    assert full == records[0]
    assert store.search_logs(LogQuery(trace_id=tid(1)))[0] == records[2]


def test_services_and_operations(corpus: Store) -> None:
    assert corpus.services() == ["cinder", "glance", "keystone", "nova"]
    assert corpus.operations("nova") == ["GET /images", "GET /servers", "POST /servers"]
    assert corpus.operations("glance") == ["GET /images"]
    assert corpus.operations("nobody") == []


def test_dependencies_count_calls_and_errors_across_batches(store: Store) -> None:
    """Caller -> callee edges from parent/child pairs in different services, whether
    the pair arrives in one write, child first, or parent first."""
    # trace 1: one write, nova -> glance (ok), nova -> nova (not an edge)
    store.write_spans(
        [
            span(1, 1, None, "nova", "r", NOW),
            span(1, 2, 1, "nova", "client", NOW + 1, kind=3),
            span(1, 3, 2, "glance", "server", NOW + 2, kind=2),
        ]
    )
    # trace 2: child (error) written before its parent
    store.write_spans([span(2, 3, 2, "glance", "server", NOW + 2, kind=2, status=STATUS_ERROR)])
    store.write_spans(
        [span(2, 1, None, "nova", "r", NOW), span(2, 2, 1, "nova", "c", NOW + 1, kind=3)]
    )
    # trace 3: parent client span first, then the child from cinder
    store.write_spans(
        [span(3, 1, None, "nova", "r", NOW), span(3, 2, 1, "nova", "c", NOW + 1, kind=3)]
    )
    store.write_spans([span(3, 3, 2, "cinder", "server", NOW + 2, kind=2, status=STATUS_ERROR)])
    # an old edge outside the window
    store.write_spans(
        [
            span(4, 1, None, "keystone", "r", NOW - 5 * HOUR),
            span(4, 2, 1, "nova", "s", NOW - 5 * HOUR + 1),
        ]
    )
    edges = {
        (e.caller, e.callee): (e.calls, e.errors)
        for e in store.dependencies(NOW - HOUR, NOW + HOUR)
    }
    assert edges == {("nova", "glance"): (2, 1), ("nova", "cinder"): (1, 1)}
    everything = {(e.caller, e.callee) for e in store.dependencies(None, None)}
    assert ("keystone", "nova") in everything


def test_children_waiting_for_parents_that_come_one_write_at_a_time(store: Store) -> None:
    """Two children stored first, waiting for two parents: the first parent's
    write counts one edge and leaves only the other child waiting, the second
    counts the other."""
    store.write_spans(
        [
            span(7, 10, 2, "glance", "server", NOW + 2, kind=2),
            span(7, 11, 3, "cinder", "server", NOW + 3, kind=2, status=STATUS_ERROR),
        ]
    )
    store.write_spans(
        [span(7, 1, None, "nova", "r", NOW), span(7, 2, 1, "nova", "c", NOW + 1, kind=3)]
    )

    def edges() -> dict[tuple[str, str], tuple[int, int]]:
        return {
            (e.caller, e.callee): (e.calls, e.errors)
            for e in store.dependencies(NOW - HOUR, NOW + HOUR)
        }

    assert edges() == {("nova", "glance"): (1, 0)}
    # The second parent comes with the first again (an exporter's retry in
    # another grouping): the child already counted is not counted twice.
    store.write_spans(
        [
            span(7, 2, 1, "nova", "c", NOW + 1, kind=3),
            span(7, 3, 1, "nova", "c2", NOW + 1, kind=3),
        ]
    )
    assert edges() == {("nova", "glance"): (1, 0), ("nova", "cinder"): (1, 1)}


def test_postgres_writer_vacuums_and_analyzes_its_lookup_tables(postgres_schema_url: str) -> None:
    """With autovacuum off, the tables the writer reads by trace id in every
    batch are vacuumed and get statistics once the spans written pass the
    first threshold (else PostgreSQL scans them whole for each batch, and
    their dead rows are never reclaimed)."""
    import psycopg

    s = PostgresStore(postgres_schema_url)
    try:
        with psycopg.connect(postgres_schema_url, autocommit=True) as c:
            for table in ("span_parents", "dep_pending"):
                c.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")

            def analyzed() -> set[str]:
                # reltuples is -1 until ANALYZE; only VACUUM marks pages all-visible.
                rows = c.execute(
                    "SELECT relname FROM pg_class"
                    " WHERE relnamespace = current_schema()::regnamespace"
                    " AND relname IN ('span_parents', 'dep_pending')"
                    " AND reltuples >= 0 AND relallvisible > 0"
                ).fetchall()
                return {r[0] for r in rows}

            def write(first: int, n: int) -> None:
                s.write_spans(
                    [
                        sp
                        for t in range(first, first + n)
                        for sp in (
                            span(t, 1, None, "nova", "r", NOW),
                            span(t, 2, 1, "nova", "c", NOW + 1, kind=3),
                            span(t, 3, 9, "glance", "s", NOW + 2, kind=2),
                        )
                    ]
                )

            write(1, 1000)  # 3,000 spans: below the first threshold
            assert analyzed() == set()
            for first in range(1001, 5001, 1000):  # 12,000 more
                write(first, 1000)
            assert analyzed() == {"span_parents", "dep_pending"}
    finally:
        s.close()


def test_age_retention_deletes_old_and_keeps_new(corpus: Store) -> None:
    corpus.write_logs([log(1, time_ns=NOW - 30 * HOUR), log(2)])
    removed = corpus.apply_retention(24 * HOUR)
    assert removed == 1
    assert corpus.get_trace(tid(6)) == []
    assert corpus.get_trace_summary(tid(6)) is None
    assert ids(corpus) == [5, 4, 2, 1, 3]
    assert ids(corpus, project_id="p1") == [1, 3]
    assert [r.body for r in corpus.search_logs(LogQuery())] == ["line 2"]
    assert len(corpus.get_trace(tid(3))) == 1
    assert corpus.apply_retention(24 * HOUR) == 0


def test_sqlite_size_retention_deletes_oldest_until_under_limit(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "size.sqlite3")
    try:
        for batch in range(20):
            s.write_spans(
                [
                    span(
                        batch * 100 + n,
                        1,
                        None,
                        "svc",
                        "op",
                        NOW - (2000 - batch * 100 - n) * MS,
                        attrs={"blob": os.urandom(300).hex()},
                    )
                    for n in range(100)
                ]
            )
        before = s.used_bytes()
        limit = before // 2
        removed = s.apply_retention(None, limit)
        assert 0 < removed < 2000
        assert s.used_bytes() <= limit
        assert os.path.getsize(s.path) <= limit + 64 * 1024
        newest = s.search_traces(TraceQuery(limit=1)).traces[0]
        assert newest.trace_id == tid(1999)
        assert s.get_trace(tid(0)) == []
    finally:
        s.close()


def test_background_retention_thread_runs(store: Store) -> None:
    store.write_spans(
        [span(1, 1, None, "svc", "old", NOW - 48 * HOUR), span(2, 1, None, "svc", "new", NOW)]
    )
    store.start_retention(24 * HOUR, interval_s=0.05)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while store.get_trace_summary(tid(1)) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.get_trace_summary(tid(1)) is None
    assert store.get_trace_summary(tid(2)) is not None


def _version(store: Store) -> int:
    with store._reader() as conn:  # type: ignore[attr-defined]
        return int(conn.execute("SELECT max(version) FROM schema_version").fetchone()[0])


def test_migrations_fresh_reopen_and_newer_refused(opener: Callable[[], Store]) -> None:
    s = opener()
    assert _version(s) == LATEST_VERSION
    s.write_spans([span(1, 1, None, "svc", "op", NOW)])
    s.close()
    s = opener()
    assert _version(s) == LATEST_VERSION
    assert len(s.get_trace(tid(1))) == 1
    s._call(  # type: ignore[attr-defined]
        lambda conn: conn.execute(
            s._sql("INSERT INTO schema_version VALUES (?, 'future', 0)"),  # type: ignore[attr-defined]
            (LATEST_VERSION + 1,),
        )
    )
    s.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        opener()


def test_migrations_upgrade_an_old_database(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A database left at version 1 (no logs table) is upgraded when opened."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, "sqlite", target=1) == 1
    conn.close()
    s = SQLiteStore(path)
    try:
        assert _version(s) == LATEST_VERSION
        assert s.write_logs([log(1)]) == 1
    finally:
        s.close()


def test_postgres_migrations_upgrade_an_old_database(postgres_schema_url: str) -> None:
    with psycopg.connect(postgres_schema_url, autocommit=True) as conn:
        assert migrate(conn, "postgresql", target=1) == 1
    s = PostgresStore(postgres_schema_url)
    try:
        assert _version(s) == LATEST_VERSION
        assert s.write_logs([log(1)]) == 1
    finally:
        s.close()


def test_close_flushes_pending_writes(opener: Callable[[], Store]) -> None:
    s = opener()
    futures = [s.submit_spans([span(n, 1, None, "svc", "op", NOW + n)]) for n in range(1, 201)]
    log_future = s.submit_logs([log(1)])
    s.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert log_future.result(0) == 1
    s = opener()
    try:
        assert s.stats()["traces"] == 200
        assert all(len(s.get_trace(tid(n))) == 1 for n in (1, 100, 200))
    finally:
        s.close()


def test_submit_after_close_fails_the_future(opener: Callable[[], Store]) -> None:
    s = opener()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.submit_spans([span(1, 1, None, "svc", "op", NOW)]).result(5)


def test_concurrent_submitters_all_committed(store: Store) -> None:
    """Eight threads submitting 25 batches each: every future succeeds, every span
    and every merged count is there."""
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            futs = [
                store.submit_spans(
                    [
                        span(
                            1000 + b,
                            w * 1000 + b * 10 + k,
                            None if (w, k) == (0, 0) else 1,
                            f"svc{w}",
                            "op",
                            NOW + k,
                        )
                        for k in range(4)
                    ]
                )
                for b in range(25)
            ]
            for f in futs:
                f.result(30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for b in range(25):
        s = store.get_trace_summary(tid(1000 + b))
        assert s is not None
        assert s.span_count == 32
        assert len(store.get_trace(tid(1000 + b))) == 32
        assert s.services == [f"svc{w}" for w in range(8)]
    assert store.stats()["spans_written"] == 8 * 25 * 4


def test_stats_report_counts_and_size(store: Store) -> None:
    store.write_spans([span(1, 1, None, "svc", "op", NOW), span(1, 2, 1, "svc", "op2", NOW)])
    store.write_logs([log(1)])
    st = store.stats()
    assert st["spans_written"] == 2
    assert st["logs_written"] == 1
    assert st["traces"] == 1
    assert st["db_bytes"] > 0
    assert st["writes_pending"] == 0
    assert st["last_write_latency_us"] > 0


def test_unpackable_attribute_values_are_stored_as_text(store: Store) -> None:
    """An integer beyond 64 bits or an unknown type does not fail the batch."""
    s = span(1, 1, None, "svc", "op", NOW, attrs={"big": 2**70, "obj": object.__name__, "ok": 1})
    s.attributes["set"] = {3}
    store.write_spans([s])
    got = store.get_trace(tid(1))[0].attributes
    assert got["big"] == str(2**70)
    assert got["ok"] == 1
    assert got["set"] == "{3}"


def test_open_store_by_url(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/a/b/c.sqlite3")
    try:
        assert isinstance(s, SQLiteStore)
        assert (tmp_path / "a" / "b" / "c.sqlite3").exists()
    finally:
        s.close()
    with pytest.raises(ValueError, match="in-memory"):
        open_store("sqlite://:memory:")
    with pytest.raises(ValueError, match="unsupported"):
        open_store("mysql://x")


def _dict_spans(n: int) -> list[SpanRecord]:
    """Five spans of trace *n*, with the attribute values a load repeats."""
    return [
        span(
            n,
            k,
            None if k == 1 else 1,
            f"svc{k % 3}",
            f"op{k}",
            NOW + n * MS + k,
            attrs={
                "openstack.project_id": f"p{n % 7}",
                "url.path": f"/v2/x/{n}/{k}",
                "http.request.method": "GET",
                "n": n * k,
            },
        )
        for k in range(1, 6)
    ]


def _chunk_dicts(s: Store) -> dict[bytes, int | None]:
    """Per trace id, the dictionary its chunk names (``None``: plain zstd)."""
    with s._reader() as conn:  # type: ignore[attr-defined]
        rows = conn.execute("SELECT trace_id, data FROM chunks").fetchall()
    return {
        bytes(t): int.from_bytes(bytes(d)[1:5], "big") if bytes(d)[:1] == b"\x04" else None
        for t, d in rows
    }


def _settle_training(s: Store) -> None:
    """Wait for a dictionary training running in its own thread (the next
    write takes it up)."""
    training = s._training  # type: ignore[attr-defined]
    if training is not None:
        training.result(60)


def _dict_ids(s: Store) -> list[int]:
    with s._reader() as conn:  # type: ignore[attr-defined]
        return [r[0] for r in conn.execute("SELECT id FROM zdicts ORDER BY id").fetchall()]


def test_chunks_use_trained_zstd_dictionaries(
    opener: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first dictionary is trained on the first chunks, a second on a longer
    stretch (one chunk in two here, in a thread of its own, taken up by the next
    write), and no third; each chunk names the one it was compressed with, and
    every chunk reads back exactly, also after re-opening."""
    from crosstrace.server.store import zdict

    monkeypatch.setattr(zdict, "TRAININGS", ((100, 1 << 30, 1), (60, 1 << 30, 2)))
    s = opener()
    written = {}
    for n in range(1, 301):  # one commit, one chunk per trace
        written[n] = _dict_spans(n)
        s.write_spans(written[n])
        _settle_training(s)
    first, second = _dict_ids(s)
    used = _chunk_dicts(s)
    # The 100th chunk completes the first sample and trains the first there
    # and then; then one chunk in two, 60 of them: the 220th completes the
    # second's, trained in its own thread, and the 221st write takes it up.
    # (A batch is prepared, and compressed with the dictionary then published,
    # before the writer gets it: the 221st is still compressed with the first.)
    assert {used[tid(n)] for n in range(1, 101)} == {None}
    assert {used[tid(n)] for n in range(101, 222)} == {first}
    assert {used[tid(n)] for n in range(222, 301)} == {second}
    for n in (1, 100, 101, 221, 222, 300):
        assert s.get_trace(tid(n)) == written[n]
    s.close()
    s = opener()
    try:
        for n in (1, 150, 300):
            assert s.get_trace(tid(n)) == written[n]
        for n in range(301, 501):
            s.write_spans(_dict_spans(n))
            _settle_training(s)
        assert _dict_ids(s) == [first, second]
        assert _chunk_dicts(s)[tid(500)] == second
    finally:
        s.close()


def test_a_dictionary_taken_up_in_a_write_rolled_back_is_not_used(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that took up the second dictionary and then failed takes
    the dictionary with it: the chunks after it use the first one again (never
    a dictionary the database does not hold), and the second is trained again."""
    from crosstrace.server.store import zdict

    monkeypatch.setattr(zdict, "TRAININGS", ((40, 1 << 30, 1), (40, 1 << 30, 1)))
    for n in range(1, 81):  # the 40th completes the first sample, the 80th the second
        store.write_spans(_dict_spans(n))
        _settle_training(store)
    (first,) = _dict_ids(store)
    real_commit = store._commit  # type: ignore[attr-defined]

    def failing(conn: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_commit", failing)
    with pytest.raises(Exception, match="disk full"):
        store.write_spans(_dict_spans(81))  # takes the second up, then fails
    monkeypatch.setattr(store, "_commit", real_commit)
    assert _dict_ids(store) == [first]
    for n in range(82, 124):  # the samples start again: the 121st completes them
        store.write_spans(_dict_spans(n))
        _settle_training(store)
        if n == 82:
            assert _chunk_dicts(store)[tid(82)] == first
    assert len(_dict_ids(store)) == 2
    assert _chunk_dicts(store)[tid(123)] == _dict_ids(store)[1]
    for n in (1, 80, 82, 121, 123):
        assert store.get_trace(tid(n)) == _dict_spans(n)
    assert not store.get_trace(tid(81))


def test_batch_delivered_twice_is_stored_and_counted_once(store: Store) -> None:
    """A batch stored again (a broker redelivery, a client retry), after the first
    commit or in the same write group, adds no spans and no counts."""
    first = [span(1, n, None if n == 1 else 1, "svc", f"op{n}", NOW + n) for n in range(1, 4)]
    later = [span(1, 9, 1, "other", "late", NOW + 9, status=STATUS_ERROR)]
    store.write_spans(first)
    store.write_spans(first)
    futures = [store.submit_spans(later), store.submit_spans(later)]
    for f in futures:
        f.result(30)
    summary = store.get_trace_summary(tid(1))
    assert summary is not None
    assert (summary.span_count, summary.error_count) == (4, 1)
    assert [s.span_id for s in store.get_trace(tid(1))] == [sid(n) for n in (1, 2, 3, 9)]
    assert store.stats()["spans_written"] == 4


def test_a_bad_batch_fails_alone_and_the_others_in_its_group_commit(store: Store) -> None:
    """Batches committed together: the one the database refuses gets the error,
    the others are stored."""
    gate = threading.Event()
    blocker = store._writer.submit("call", lambda conn: gate.wait(30), 1)  # type: ignore[attr-defined]
    good1 = store.submit_spans([span(1, 1, None, "svc", "op", NOW)])
    batch = from_records([span(2, 1, None, "svc", "op", NOW)])
    batch.segments[0].service = "bad\ud800"  # a name the database driver cannot encode
    bad = store.submit_batch(batch)
    good2 = store.submit_spans([span(3, 1, None, "svc", "op", NOW)])
    gate.set()
    blocker.result(30)
    good1.result(30)
    good2.result(30)
    with pytest.raises((UnicodeError, psycopg.Error)):
        bad.result(30)
    assert store.get_trace(tid(2)) == []
    assert [len(store.get_trace(tid(n))) for n in (1, 3)] == [1, 1]
    assert store.stats()["write_failures"] == 1
    store.write_spans([span(4, 1, None, "svc2", "op2", NOW)])  # the writer goes on
    assert store.services() == ["svc", "svc2"]


@pytest.fixture(params=["sqlite", "postgres"])
def v3_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, str, Callable[[], Store]]]:
    """A raw connection to an empty database at schema version 3, its dialect
    placeholder, and an opener for the store."""
    if request.param == "sqlite":
        path = tmp_path / "v3.sqlite3"
        lite = sqlite3.connect(path, isolation_level=None)
        migrate(lite, "sqlite", target=3)
        yield lite, "?", lambda: SQLiteStore(path)
        lite.close()
        return
    url = request.getfixturevalue("postgres_schema_url")
    with psycopg.connect(url, autocommit=True) as pg:
        migrate(pg, "postgresql", target=3)
        yield pg, "%s", lambda: PostgresStore(url)


def test_a_version_3_database_with_data_is_upgraded_and_still_read(
    v3_database: tuple[Any, str, Callable[[], Store]],
) -> None:
    """Spans stored in the older chunk form, with their index rows, are found by
    every search and read back after the upgrade; new spans join the same trace."""
    import zstandard

    from crosstrace.server.store.codec import encode_chunk, encode_rid

    conn, ph, opener = v3_database

    def run(sql: str, params: tuple[Any, ...] = ()) -> None:
        conn.execute(sql.replace("?", ph), params)

    names = {}
    for name in ("nova-api", "GET /servers"):
        run("INSERT INTO names (name) VALUES (?)", (name,))
        names[name] = conn.execute(f"SELECT id FROM names WHERE name = {ph}", (name,)).fetchone()[0]
    svc, op_name = names["nova-api"], names["GET /servers"]
    run("INSERT INTO operations (service_id, name_id) VALUES (?, ?)", (svc, op_name))
    op = conn.execute("SELECT id FROM operations").fetchone()[0]
    old = span(
        1,
        1,
        None,
        "nova-api",
        "GET /servers",
        NOW,
        attrs={"openstack.user_id": "u1", ATTR_REQUEST_ID: RID_A},
    )
    raw = encode_chunk([old], names.__getitem__)
    chunk = b"\x01" + zstandard.ZstdCompressor().compress(raw)
    if ph == "?":
        run("INSERT INTO chunks (trace_id, data) VALUES (?, ?)", (tid(1), chunk))
    else:  # into the default partition
        run("INSERT INTO chunks (trace_id, day, data) VALUES (?, ?, ?)", (tid(1), 1, chunk))
    run(
        "INSERT INTO traces VALUES (?, ?, ?, ?, ?, 1, ?, 1, 0, 'p1', NULL)",
        (tid(1), NOW, NOW + 10 * MS, svc, op_name, NOW),
    )
    for key in (svc, -op):
        run("INSERT INTO trace_keys (trace_id, key) VALUES (?, ?)", (tid(1), key))
    run("INSERT INTO request_ids VALUES (?, ?, 1)", (encode_rid(RID_A), tid(1)))
    from crosstrace.server.store.codec import attr_hash

    run("INSERT INTO attr_index VALUES (?, ?)", (attr_hash("openstack.user_id", "u1"), tid(1)))
    s = opener()
    try:
        assert _version(s) == LATEST_VERSION
        assert s.get_trace(tid(1)) == [old]
        s.write_spans([span(1, 2, 1, "glance", "GET /images", NOW + MS)])
        assert [x.span_id for x in s.get_trace(tid(1))] == [sid(1), sid(2)]
        summary = s.get_trace_summary(tid(1))
        assert summary is not None
        assert (summary.span_count, summary.services) == (2, ["glance", "nova-api"])
        assert summary.request_ids == [RID_A]
        for q in (
            TraceQuery(service="nova-api"),
            TraceQuery(operation="GET /servers"),
            TraceQuery(request_id=RID_A),
            TraceQuery(attributes={"openstack.user_id": "u1"}),
            TraceQuery(service="glance"),
        ):
            assert [t.trace_id for t in s.search_traces(q).traces] == [tid(1)], q
        assert [t.trace_id for t in s.traces_for_request(RID_A)] == [tid(1)]
        # Retention removes the upgraded trace with every index entry it had.
        assert s.apply_retention(1) == 1
        assert s.search_traces(TraceQuery(attributes={"openstack.user_id": "u1"})).traces == []
        assert s.traces_for_request(RID_A) == []
        if ph == "?":
            with s._reader() as conn:  # type: ignore[attr-defined]
                for table in ("chunks", "key_chunks", "request_ids", "attr_chunks"):
                    count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    assert count == 0, table
    finally:
        s.close()


def test_index_entries_repeated_across_batches_are_written_once(store: Store) -> None:
    """A trace whose batches repeat the same ids and attribute values (one batch
    per service) gets each index entry once, and every entry stays searchable."""
    attrs = {"openstack.project_id": "p-1", "http.request.method": "GET"}
    for n, svc in enumerate(["nova-api", "nova-conductor", "nova-compute"], start=1):
        store.write_spans(
            [span(7, n, None if n == 1 else 1, svc, f"op{n}", NOW + n * MS, attrs=attrs)]
        )
    for key, value in attrs.items():
        page = store.search_traces(TraceQuery(attributes={key: value}, limit=5))
        assert [t.trace_id for t in page.traces] == [tid(7)]
    for svc in ["nova-api", "nova-conductor", "nova-compute"]:
        assert [t.trace_id for t in store.search_traces(TraceQuery(service=svc)).traces] == [tid(7)]
    if isinstance(store, SQLiteStore):
        with store._reader() as conn:
            rows = conn.execute(
                "SELECT count(*) FROM attr_chunks a JOIN chunks c ON c.id = a.chunk_id"
                " WHERE c.trace_id = ?",
                (tid(7),),
            )
            assert rows.fetchone()[0] == len(attrs)


def test_index_entries_of_a_failed_write_are_written_by_the_next(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write rolled back does not count as having written its index entries: the
    next batch of the same trace writes them."""
    real = store._insert_chunks  # type: ignore[attr-defined]
    calls = []

    def fail_once(conn: Any, rows: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        real(conn, rows)

    monkeypatch.setattr(store, "_insert_chunks", fail_once)
    attrs = {"openstack.user_id": "u-42"}
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.write_spans([span(8, 1, None, "nova-api", "op", NOW, attrs=attrs)])
    assert store.search_traces(TraceQuery(attributes=attrs)).traces == []
    store.write_spans([span(8, 2, 1, "nova-api", "op", NOW + MS, attrs=attrs)])
    page = store.search_traces(TraceQuery(attributes=attrs))
    assert [t.trace_id for t in page.traces] == [tid(8)]


@pytest.mark.parametrize("rare_below", [0, 10_000])
def test_attribute_search_by_common_and_rare_values(
    store: Store, monkeypatch: pytest.MonkeyPatch, rare_below: int
) -> None:
    """An indexed attribute value is searched trace by trace when common and
    collected first when rare (SQLite); both ways give the same page."""
    from crosstrace.server.store import read as sqlcommon

    monkeypatch.setattr(sqlcommon, "RARE_ATTR_CHUNKS", rare_below)
    for n in range(1, 31):
        attrs = {"openstack.user_id": f"u{n % 3}", "http.request.method": "GET"}
        store.write_spans([span(n, 1, None, f"svc{n % 2}", "op", NOW + n * MS, attrs=attrs)])
    page = store.search_traces(TraceQuery(attributes={"openstack.user_id": "u1"}, limit=5))
    assert [t.trace_id for t in page.traces] == [tid(n) for n in (28, 25, 22, 19, 16)]
    assert page.next_cursor is not None
    both = TraceQuery(attributes={"openstack.user_id": "u2", "http.request.method": "GET"})
    assert [t.trace_id for t in store.search_traces(both).traces] == [
        tid(n) for n in range(29, 0, -3)
    ]
    svc_and_user = TraceQuery(service="svc0", attributes={"openstack.user_id": "u1"})
    assert [t.trace_id for t in store.search_traces(svc_and_user).traces] == [
        tid(n) for n in (28, 22, 16, 10, 4)
    ]
