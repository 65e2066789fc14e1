"""Error signatures and groups."""

from __future__ import annotations

from analysis_builders import CLIENT, SERVER, T0, Trace

from crosstrace.server.analysis import (
    CauseRow,
    Signature,
    analyse_trace,
    group_causes,
    normalise_message,
    signature_of,
)


def test_normalise_replaces_ids_uuids_numbers_hosts_and_paths() -> None:
    text = (
        "Image 948c02bc46355a4c9243f114800d6e8e for req-2b810dda-a7d8-4693-84d5-b5fe14deaec4 "
        "on 10.0.0.12:8774 at /var/lib/nova/instances/x took 3.5s "
        "(uuid 0cae9447-f607-4d06-84a9-bb5bb9f551f3, see http://h/x?y=1)"
    )
    assert normalise_message(text) == (
        "Image <hex> for <req> on <ip> at <path> took <n>s (uuid <uuid>, see <url>"
    )
    assert normalise_message("sha256 and v2 stay") == "sha256 and v2 stay"


def test_same_signature_same_group_id_and_different_messages_differ() -> None:
    a = Signature("vol", "insert", "IntegrityError", normalise_message("dup name 1"))
    b = Signature("vol", "insert", "IntegrityError", normalise_message("dup name 2"))
    c = Signature("vol", "insert", "IntegrityError", normalise_message("disk full"))
    assert a.group_id == b.group_id != c.group_id


def _volume_failure(top_service: str) -> Trace:
    """A volume insert error repeated by whichever service called it."""
    t = Trace()
    t.add("top", None, 0, 100, service=top_service, kind=SERVER, error="Failed to create volume")
    t.add("call", "top", 5, 90, service=top_service, kind=CLIENT, http=500)
    t.add("vol", "call", 10, 80, service="volume", kind=SERVER, http=500)
    t.add(
        "insert",
        "vol",
        20,
        30,
        service="volume",
        op="volume.db.insert",
        error="IntegrityError: duplicate volume name vm-17",
    )
    return t


def test_copies_of_one_error_in_several_services_fall_into_the_origins_group() -> None:
    rows = []
    for n, caller in enumerate(["compute", "compute-api", "compute"]):
        a = analyse_trace(_volume_failure(caller).list())
        assert a.root_cause is not None
        rows.append(CauseRow(bytes([n]) * 16, T0 + n, signature_of(a.root_cause), f"p{n % 2}"))
    groups = group_causes(rows)
    assert len(groups) == 1
    g = groups[0]
    assert g.signature.service == "volume"
    assert g.signature.operation == "volume.db.insert"
    assert g.count == 3
    assert g.projects == ["p0", "p1"]
    assert g.first_seen_ns == T0
    assert g.last_seen_ns == T0 + 2
    assert g.sample_trace_ids[0] == bytes([2]) * 16  # newest first


def test_series_counts_failures_per_bucket_over_the_window() -> None:
    sig = Signature("s", "op", "E", "m")
    rows = [CauseRow(bytes([i]) * 16, 1000 + t, sig) for i, t in enumerate([0, 5, 95])]
    (g,) = group_causes(rows, start_ns=1000, end_ns=1100, buckets=10)
    assert g.bucket_ns == 10
    assert [c for _, c in g.series] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert g.to_json()["series"][0] == {"start_ns": 1000, "count": 2}


def test_groups_are_ordered_by_count() -> None:
    a, b = Signature("s", "a", "E", "m"), Signature("s", "b", "E", "m")
    rows = [CauseRow(bytes([1]) * 16, 1, a)] + [CauseRow(bytes([i]) * 16, i, b) for i in (2, 3)]
    assert [g.signature.operation for g in group_causes(rows)] == ["b", "a"]
    assert group_causes([]) == []
