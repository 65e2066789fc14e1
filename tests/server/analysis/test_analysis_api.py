"""The analysis and error-group routes: contract fields, 404 for unknown ids, 400
for malformed ones, an answer (never a 500) for a trace with cycles."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from analysis_builders import CLIENT, SERVER, T0, Trace, log

from crosstrace.server.model import SpanRecord
from crosstrace.server.store import Store, open_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_samples import AppClient, serve_client

GID = "req-11111111-1111-4111-8111-111111111111"
LOCAL = "req-22222222-2222-4222-8222-222222222222"
WINDOW = {"start": "2027-01-01T00:00:00Z", "end": "2027-12-31T00:00:00Z"}


def _failed(n: int, caller: str) -> list[SpanRecord]:
    t = Trace()
    t.add(
        "top",
        None,
        n,
        n + 100,
        service=caller,
        kind=SERVER,
        http=500,
        error="HTTP 500",
        attrs={"openstack.project_id": "p1", "openstack.global_request_id": GID},
    )
    t.add("call", "top", n + 5, n + 90, service=caller, kind=CLIENT, http=500)
    t.add("vol", "call", n + 10, n + 80, service="volume", kind=SERVER, http=500)
    t.add(
        "insert",
        "vol",
        n + 20,
        n + 30,
        service="volume",
        op="volume.db.insert",
        error=f"IntegrityError: duplicate volume name vm-{n}",
    )
    for s in t.list():
        s.trace_id = n.to_bytes(16, "big")
    return t.list()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    s.write_spans(_failed(1, "compute") + _failed(2, "compute-api"))
    s.write_logs(
        [
            log(
                "c-vol",
                5,
                "Traceback (most recent call last):\nKeyError: 'x'",
                level="ERROR",
                request_id=LOCAL,
            )
        ]
    )
    yield s
    s.close()


@pytest.fixture
def client(store: Store) -> Iterator[AppClient]:
    with serve_client(store) as c:
        yield c


def test_trace_analysis_has_the_contract_fields(client: AppClient) -> None:
    r = client.get(f"/api/v1/traces/{(1).to_bytes(16, 'big').hex()}/analysis")
    assert r.status_code == 200
    doc = r.json()
    assert doc["verdict"] == "error"
    root = doc["root_cause"]
    assert (root["service"], root["name"], root["reason"]) == (
        "volume",
        "volume.db.insert",
        "deepest_error",
    )
    for key in ("span_id", "exception_type", "message", "evidence"):
        assert key in root
    assert doc["chain"][-1] == root["span_id"]
    assert {c["name"] for c in doc["consequences"]} == {"top", "call", "vol"}
    assert doc["last_traced_element"]["span_id"] == root["span_id"]


def test_request_analysis_over_traces_and_logs_only(client: AppClient) -> None:
    r = client.get(f"/api/v1/requests/{GID}/analysis")
    assert r.status_code == 200
    assert r.json()["root_cause"]["name"] == "volume.db.insert"
    assert len(r.json()["trace_ids"]) == 2
    logs_only = client.get(f"/api/v1/requests/{LOCAL}/analysis").json()
    assert logs_only["verdict"] == "error"
    assert logs_only["root_cause"]["span_id"] is None
    assert logs_only["root_cause"]["exception_type"] == "KeyError"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/api/v1/traces/{'ab' * 16}/analysis", 404),
        ("/api/v1/traces/not-a-trace/analysis", 400),
        (f"/api/v1/traces/{'ab' * 16}/analysis?slow=fast", 400),
        ("/api/v1/requests/req-99999999-9999-4999-8999-999999999999/analysis", 404),
        ("/api/v1/requests/req-NOT-A-UUID/analysis", 400),
        ("/api/v1/errors?start=yesterday", 400),
        ("/api/v1/errors?start=1h&end=2h", 400),
        (f"/api/v1/errors/{'0' * 16}", 404),
        ("/api/v1/errors/xyz", 400),
    ],
)
def test_unknown_ids_are_404_and_malformed_400(client: AppClient, path: str, status: int) -> None:
    assert client.get(path).status_code == status


def test_error_groups_one_per_origin_with_detail(client: AppClient) -> None:
    r = client.get("/api/v1/errors", params=WINDOW)
    assert r.status_code == 200
    (group,) = r.json()["groups"]
    assert group["count"] == 2
    assert group["signature"]["service"] == "volume"
    assert group["projects"] == ["p1"]
    assert sum(p["count"] for p in group["series"]) == 2
    assert client.get("/api/v1/errors", params={**WINDOW, "service": "nova"}).json()["groups"] == []
    detail = client.get(f"/api/v1/errors/{group['group_id']}", params=WINDOW)
    assert detail.status_code == 200
    assert [t["trace_id"] for t in detail.json()["traces"]] == [
        (2).to_bytes(16, "big").hex(),
        (1).to_bytes(16, "big").hex(),
    ]


def test_a_trace_with_a_parent_cycle_gets_an_answer(store: Store, client: AppClient) -> None:
    tid = (7).to_bytes(16, "big")
    a, b = (b"\x01" * 8), (b"\x02" * 8)
    store.write_spans(
        [
            SpanRecord(tid, a, b, "x", 1, T0, T0 + 10, "s", status_code=2),
            SpanRecord(tid, b, a, "y", 1, T0 + 1, T0 + 5, "s", status_code=2),
        ]
    )
    r = client.get(f"/api/v1/traces/{tid.hex()}/analysis")
    assert r.status_code == 200
    assert any("cycle" in n for n in r.json()["notes"])


def test_openapi_documents_the_routes(client: AppClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/traces/{trace_id}/analysis",
        "/api/v1/requests/{request_id}/analysis",
        "/api/v1/errors",
        "/api/v1/errors/{group_id}",
    ):
        assert path in paths
