"""The error index in both stores and the Diagnoser that keeps it: error groups
over a window, filters and scope in the SQL, re-analysis, usual durations."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from analysis_builders import CLIENT, MS, SERVER, T0, Trace

from crosstrace.server.model import SpanRecord
from crosstrace.server.query.diagnose import Diagnoser
from crosstrace.server.store import Store, open_store
from crosstrace.server.store.causes import ProjectScope

WINDOW = (T0 - 3600 * 1000 * MS, T0 + 3600 * 1000 * MS)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    s = open_store(url)
    yield s
    s.close()


def _trace(n: int, caller: str, project: str, *, fail: bool = True, at_ms: float = 0) -> Trace:
    """A boot whose volume insert fails, repeated by *caller*; or a clean one."""
    t = Trace()
    err = "Failed to create volume" if fail else None
    t.add(
        "top",
        None,
        at_ms,
        at_ms + 100,
        service=caller,
        kind=SERVER,
        http=500 if fail else 202,
        error=err,
        attrs={"openstack.project_id": project},
    )
    t.add(
        "call", "top", at_ms + 5, at_ms + 90, service=caller, kind=CLIENT, http=500 if fail else 202
    )
    t.add(
        "vol",
        "call",
        at_ms + 10,
        at_ms + 80,
        service="volume",
        kind=SERVER,
        http=500 if fail else 202,
    )
    t.add(
        "insert",
        "vol",
        at_ms + 20,
        at_ms + 30,
        service="volume",
        op="volume.db.insert",
        error=f"IntegrityError: duplicate volume name vm-{n}" if fail else None,
    )
    for s in t.list():
        s.trace_id = n.to_bytes(16, "big")
    return t


def _write(store: Store, spans: list[SpanRecord]) -> None:
    store.write_spans(spans)


def test_copies_in_several_services_make_one_group_counted_per_trace(store: Store) -> None:
    for n, caller in enumerate(["compute", "compute-api", "compute", "compute-api"], 1):
        _write(store, _trace(n, caller, f"p{n % 2}", at_ms=n).list())
    _write(store, _trace(9, "compute", "p0", fail=False).list())
    diag = Diagnoser(store)
    groups, start, end = diag.groups(*WINDOW)
    assert (start, end) == WINDOW
    assert len(groups) == 1
    g = groups[0]
    assert (g.signature.service, g.signature.operation) == ("volume", "volume.db.insert")
    assert g.signature.message == "duplicate volume name vm-<n>"
    assert g.count == 4
    assert g.projects == ["p0", "p1"]
    assert g.sample_trace_ids[0] == (4).to_bytes(16, "big")


def test_filters_and_scope_are_applied_in_the_query(store: Store) -> None:
    for n in range(1, 5):
        _write(store, _trace(n, "compute", f"p{n % 2}", at_ms=n).list())
    diag = Diagnoser(store)
    assert diag.groups(*WINDOW, project_id="p1")[0][0].count == 2
    assert diag.groups(*WINDOW, service="volume")[0][0].count == 4
    assert diag.groups(*WINDOW, service="compute")[0] == []
    scoped = diag.groups(*WINDOW, scope=ProjectScope(frozenset({"p0"})))[0]
    assert scoped[0].count == 2
    assert scoped[0].projects == ["p0"]
    assert diag.groups(*WINDOW, scope=ProjectScope(frozenset()))[0] == []
    assert diag.groups(T0 + 3600 * 1000 * MS, T0 + 7200 * 1000 * MS)[0] == []


def test_a_trace_that_grows_is_analysed_again(store: Store) -> None:
    t = _trace(1, "compute", "p0")
    spans = t.list()
    _write(store, [s for s in spans if s.service != "volume"])  # the callee's batch is late
    diag = Diagnoser(store)
    first = diag.groups(*WINDOW)[0]
    assert first[0].signature.service == "compute"
    _write(store, [s for s in spans if s.service == "volume"])
    assert store.error_traces_to_analyse(*WINDOW)  # the index sees the change
    again = diag.groups(*WINDOW)[0]
    assert [g.signature.service for g in again] == ["volume"]


def test_handled_error_in_a_successful_trace_makes_no_group_and_is_not_redone(
    store: Store,
) -> None:
    t = Trace()
    t.add("api", None, 0, 50, service="api", kind=SERVER, http=200)
    t.add("cache", "api", 1, 2, service="api", error="CacheMiss: not cached")
    _write(store, t.list())
    diag = Diagnoser(store)
    assert diag.groups(*WINDOW)[0] == []
    assert store.error_traces_to_analyse(*WINDOW) == []


def test_group_detail_lists_its_traces_and_unknown_group_is_none(store: Store) -> None:
    for n in range(1, 4):
        _write(store, _trace(n, "compute", "p0", at_ms=n).list())
    diag = Diagnoser(store)
    (g,), _, _ = diag.groups(*WINDOW)
    detail = diag.group(g.group_id, *WINDOW)
    assert detail is not None
    assert detail.group.count == 3
    assert [t.trace_id for t in detail.traces] == [n.to_bytes(16, "big") for n in (3, 2, 1)]
    assert diag.group("0" * 16, *WINDOW) is None


def test_trace_and_request_analysis_read_the_store(store: Store) -> None:
    for n in range(1, 4):
        _write(store, _trace(n, "compute", "p0", fail=n == 3, at_ms=n).list())
    diag = Diagnoser(store)
    a = diag.trace((3).to_bytes(16, "big"))
    assert a is not None
    assert a.root_cause is not None
    assert a.root_cause.name == "volume.db.insert"
    assert a.root_cause.evidence.usual_duration_ns == 10 * MS
    assert diag.trace((77).to_bytes(16, "big")) is None
    assert diag.request("req-99999999-9999-4999-8999-999999999999") is None


def test_prune_drops_causes_of_traces_that_are_gone(store: Store) -> None:
    spans = _trace(1, "compute", "p0").list()
    shift = T0 - (time.time_ns() - 7200 * 1000 * MS)  # two hours ago
    for s in spans:
        s.start_ns -= shift
        s.end_ns -= shift
    _write(store, spans)
    window = (T0 - shift - 3600 * 1000 * MS, T0 - shift + 3600 * 1000 * MS)
    diag = Diagnoser(store)
    assert diag.groups(*window)[0]
    assert store.prune_error_causes() == 0
    store.apply_retention(max_age_ns=3600 * 1000 * MS)  # keeps the last hour
    assert store.prune_error_causes() == 1
    assert store.error_causes(*window) == []
