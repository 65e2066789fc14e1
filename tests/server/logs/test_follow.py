"""One request followed across the hosts of a collected tree."""

from __future__ import annotations

import pytest
from logtree import GLOBAL, MSG_ID, NEUTRON_REQ, OTHER_REQ, REQ, Tree

from crosstrace.server.logs.follow import (
    HOP_REQUEST_ID,
    HOP_RPC,
    HOP_USED_REQUEST_ID,
    follow_request,
    host_of,
)
from crosstrace.server.logs.importer import import_file
from crosstrace.server.model import LogQuery, LogRecord
from crosstrace.server.store import Store


@pytest.fixture
def imported(store: Store, tree: Tree) -> Store:
    """A store holding the tree's logs."""
    for path in tree.files:
        assert import_file(store, path).error is None
    return store


def site(r: LogRecord) -> str:
    return f"{r.service}@{host_of(r)}"


def test_request_lines_from_both_computes_in_time_order(imported: Store) -> None:
    """The request's lines come oldest first from every host, with the server-side RPC
    lines (no request id) and the callee's own request found through the ids."""
    followed = follow_request(imported.search_logs, REQ)
    lines = followed.lines
    assert [r.time_ns for r in lines] == sorted(r.time_ns for r in lines)
    assert {host_of(r) for r in lines} == {"ctl1", "cmp1", "cmp2"}
    assert [site(r) for r in lines] == [
        "nova-api@ctl1",
        "nova-api@ctl1",
        "nova-api@ctl1",
        "nova-conductor@ctl1",  # received message with unique_id (no request id)
        "nova-conductor@ctl1",
        "nova-compute@cmp1",
        "nova-compute@cmp1",
        "nova-compute@cmp2",  # received message msg_id (no request id)
        "nova-compute@cmp2",
        "neutron-server@ctl1",  # its own request id, named by cmp2's "used request id"
        "nova-compute@cmp2",
        "nova-compute@cmp2",
        "nova-compute@cmp1",
    ]
    assert all(OTHER_REQ not in (r.request_id, r.global_request_id) for r in lines)
    assert NEUTRON_REQ in followed.followed
    assert MSG_ID in followed.followed
    assert not followed.truncated


def test_hops_between_services_and_hosts(imported: Store) -> None:
    """Each caller -> callee step is marked with what shows it: the RPC message id on
    both sides, the "used request id" line, the same request id."""
    followed = follow_request(imported.search_logs, REQ)
    lines = followed.lines
    hops = [(h.kind, site(lines[h.caller]), site(lines[h.callee]), h.via) for h in followed.hops]
    assert hops == [
        (HOP_RPC, "nova-api@ctl1", "nova-conductor@ctl1", "1a2b3c4d5e6f40718293a4b5c6d7e8f9"),
        (HOP_REQUEST_ID, "nova-conductor@ctl1", "nova-compute@cmp1", REQ),
        (HOP_RPC, "nova-compute@cmp1", "nova-compute@cmp2", MSG_ID),
        (HOP_USED_REQUEST_ID, "nova-compute@cmp2", "neutron-server@ctl1", NEUTRON_REQ),
    ]


def test_global_request_id_joins_the_services(imported: Store) -> None:
    """Followed by its global id, the request shows nova's and neutron's lines; neutron
    is reached through the "used request id" line."""
    followed = follow_request(imported.search_logs, GLOBAL)
    assert {site(r) for r in followed.lines} >= {"neutron-server@ctl1", "nova-compute@cmp2"}
    kinds = {(site(followed.lines[h.callee]), h.kind) for h in followed.hops}
    assert ("neutron-server@ctl1", HOP_USED_REQUEST_ID) in kinds


def test_limit_cuts_and_says_so(imported: Store) -> None:
    """At most `limit` lines, flagged as truncated."""
    followed = follow_request(imported.search_logs, REQ, limit=4)
    assert len(followed.lines) <= 4
    assert followed.truncated


def test_unknown_request_is_empty(imported: Store) -> None:
    followed = follow_request(imported.search_logs, "req-00000000-0000-4000-8000-000000000000")
    assert (followed.lines, followed.hops) == ([], [])
    assert imported.search_logs(LogQuery(request_id=OTHER_REQ))


def test_scope_narrows_every_search(imported: Store) -> None:
    """With allowed projects, neither the request's own lines nor the lines followed
    through its calls show another project's records (or records of none)."""
    followed = follow_request(imported.search_logs, REQ, allowed_projects=frozenset({"demo"}))
    assert followed.lines
    assert {r.project_id for r in followed.lines} == {"demo"}
    assert "neutron-server@ctl1" not in {site(r) for r in followed.lines}
