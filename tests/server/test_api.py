"""The query API over data ingested through OTLP/HTTP, against SQLite and PostgreSQL.

Every test ingests through ``POST /v1/traces`` / ``/v1/logs`` and reads back through
``/api/v1/...``: the whole path a client sees, on both real stores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serve_samples import PB, AppClient, log_request, opened, serve_client, span_request, sqlite_url

from crosstrace.ids import generate_request_id


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@dataclass
class Dataset:
    """Two traces of one global request, and its logs."""

    now: int
    trace_a: bytes
    trace_b: bytes
    spans_a: list[dict[str, Any]]
    global_id: str
    local_a: str
    local_b: str
    logs: list[dict[str, Any]]


def _dataset() -> Dataset:
    now = time.time_ns()
    ms = 1_000_000
    global_id, local_a, local_b = (generate_request_id() for _ in range(3))
    trace_a, trace_b = os.urandom(16), os.urandom(16)
    root, client, server = (os.urandom(8) for _ in range(3))
    ids_a = {
        "openstack.request_id": local_a,
        "openstack.global_request_id": global_id,
        "openstack.project_id": "p-one",
        "openstack.domain_id": "d-one",
    }
    start_a = now - 10 * 60_000 * ms
    spans_a = [
        {
            "trace_id": trace_a,
            "span_id": root,
            "name": "POST /servers",
            "kind": 2,
            "start_ns": start_a,
            "end_ns": start_a + 300 * ms,
            "status_code": 2,
            "status_message": "upstream failed",
            "attributes": {
                **ids_a,
                "http.request.method": "POST",
                "http.response.status_code": 500,
            },
            "service": "nova-api",
        },
        {
            "trace_id": trace_a,
            "span_id": client,
            "parent_span_id": root,
            "name": "GET glance",
            "kind": 3,
            "start_ns": start_a + 10 * ms,
            "end_ns": start_a + 250 * ms,
            "attributes": {**ids_a, "url.full": "http://glance/v2/images/x"},
            "service": "nova-api",
        },
        {
            "trace_id": trace_a,
            "span_id": server,
            "parent_span_id": client,
            "name": "GET /v2/images/{id}",
            "kind": 2,
            "start_ns": start_a + 20 * ms,
            "end_ns": start_a + 240 * ms,
            "status_code": 2,
            "status_message": "image not found",
            "attributes": {**ids_a, "db.system": "mysql", "ratio": 0.5, "cached": False},
            "events": [
                {
                    "time_ns": start_a + 230 * ms,
                    "name": "exception",
                    "attributes": {
                        "exception.type": "ImageNotFound",
                        "exception.message": "image x not found",
                        "exception.stacktrace": "Traceback...\nImageNotFound",
                    },
                }
            ],
            "service": "glance-api",
        },
    ]
    start_b = now - 5 * 60_000 * ms
    spans_b = {
        "trace_id": trace_b,
        "span_id": os.urandom(8),
        "name": "GET /v2/images",
        "start_ns": start_b,
        "end_ns": start_b + 20 * ms,
        "attributes": {
            "openstack.request_id": local_b,
            "openstack.global_request_id": global_id,
            "openstack.project_id": "p-two",
            "http.request.method": "GET",
        },
        "service": "glance-api",
    }
    logs = [
        {
            "time_ns": start_a + 235 * ms,
            "severity_number": 17,
            "severity_text": "ERROR",
            "body": "image x not found in store",
            "trace_id": trace_a,
            "span_id": server,
            "attributes": {
                "openstack.request_id": local_a,
                "openstack.global_request_id": global_id,
            },
            "service": "glance-api",
        },
        {
            "time_ns": start_a + 1 * ms,
            "severity_number": 9,
            "body": "POST /servers accepted",
            "attributes": {
                "openstack.request_id": local_a,
                "openstack.global_request_id": global_id,
            },
            "service": "nova-api",
        },
        {
            "time_ns": start_b + 2 * ms,
            "severity_number": 9,
            "body": "listing images",
            "attributes": {
                "openstack.request_id": local_b,
                "openstack.global_request_id": global_id,
            },
            "service": "glance-api",
        },
    ]
    data = Dataset(now, trace_a, trace_b, spans_a, global_id, local_a, local_b, logs)
    data.spans_a.append(spans_b)  # ingested with the rest, by service below
    return data


def _ingest(client: AppClient, data: Dataset) -> None:
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in data.spans_a:
        by_service.setdefault(span["service"], []).append(span)
    for service, spans in by_service.items():
        r = client.post("/v1/traces", content=span_request(spans, service=service), headers=PB)
        assert r.status_code == 200, r.content
    for log in data.logs:
        r = client.post("/v1/logs", content=log_request([log], service=log["service"]), headers=PB)
        assert r.status_code == 200, r.content


@pytest.fixture
def loaded(store_url: str) -> Iterator[tuple[AppClient, Dataset]]:
    data = _dataset()
    with opened(store_url) as store, serve_client(store) as client:
        _ingest(client, data)
        yield client, data


def test_trace_reads_back_field_for_field_as_a_tree(loaded: tuple[AppClient, Dataset]) -> None:
    client, data = loaded
    r = client.get(f"/api/v1/traces/{data.trace_a.hex().upper()}")
    assert r.status_code == 200
    body = r.json()
    assert body["trace_id"] == data.trace_a.hex()
    sent = data.spans_a[:3]
    got = body["spans"]
    assert [s["span_id"] for s in got] == [s["span_id"].hex() for s in sent]
    assert [s["depth"] for s in got] == [0, 1, 2]
    assert [s["children"] for s in got] == [
        [sent[1]["span_id"].hex()],
        [sent[2]["span_id"].hex()],
        [],
    ]
    for want, have in zip(sent, got, strict=True):
        parent = want.get("parent_span_id")
        assert have["parent_span_id"] == (parent.hex() if parent else None)
        assert have["service"] == want["service"]
        assert have["name"] == want["name"]
        assert have["kind"] == want["kind"]
        assert have["start_ns"] == want["start_ns"]
        assert have["end_ns"] == want["end_ns"]
        assert have["duration_ns"] == want["end_ns"] - want["start_ns"]
        assert have["status_code"] == want.get("status_code", 0)
        assert have["status_message"] == want.get("status_message", "")
        assert have["attributes"] == want["attributes"]
        assert have["events"] == want.get("events", [])
        assert have["links"] == []
        assert have["resource"] == {"service.name": want["service"], "host.name": "node-1"}
        assert have["scope"] == "crosstrace"
    assert [s["kind_name"] for s in got] == ["server", "client", "server"]
    assert got[2]["status"] == "error"
    summary = body["summary"]
    assert summary["span_count"] == 3
    assert summary["error_count"] == 2
    assert summary["root_service"] == "nova-api"
    assert summary["root_operation"] == "POST /servers"
    assert summary["services"] == ["glance-api", "nova-api"]
    assert summary["request_ids"] == [data.local_a]
    assert summary["global_request_ids"] == [data.global_id]
    assert (summary["project_id"], summary["domain_id"]) == ("p-one", "d-one")
    assert summary["duration_ns"] == 300_000_000


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [t["trace_id"] for t in response.json()["traces"]]


def test_search_filters(loaded: tuple[AppClient, Dataset]) -> None:
    client, data = loaded
    a, b = data.trace_a.hex(), data.trace_b.hex()
    assert _ids(client.get("/api/v1/traces")) == [b, a]  # newest first
    assert _ids(client.get("/api/v1/traces?error=true")) == [a]
    assert _ids(client.get("/api/v1/traces?error=false")) == [b]
    assert _ids(client.get("/api/v1/traces?service=glance-api")) == [b, a]
    assert _ids(client.get("/api/v1/traces?service=nova-api")) == [a]
    assert _ids(client.get("/api/v1/traces?operation=GET%20glance")) == [a]
    assert _ids(client.get("/api/v1/traces?min_duration=100ms")) == [a]
    assert _ids(client.get("/api/v1/traces?max_duration=0.05s")) == [b]
    assert _ids(client.get(f"/api/v1/traces?request_id={data.local_b}")) == [b]
    assert _ids(client.get(f"/api/v1/traces?request_id={data.global_id}")) == [b, a]
    assert _ids(client.get("/api/v1/traces?project=p-one")) == [a]
    assert _ids(client.get("/api/v1/traces?attr.http.request.method=POST")) == [a]
    assert _ids(client.get("/api/v1/traces?attr.db.system=mysql&error=true")) == [a]
    assert _ids(client.get("/api/v1/traces?start=1h")) == [b, a]
    assert _ids(client.get("/api/v1/traces?start=7m")) == [b]
    assert _ids(client.get("/api/v1/traces?end=7m")) == [a]
    rfc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data.now / 1e9 - 3600))
    assert _ids(client.get(f"/api/v1/traces?start={rfc}&end=now")) == [b, a]


def test_search_pages_with_a_cursor(loaded: tuple[AppClient, Dataset]) -> None:
    client, data = loaded
    first = client.get("/api/v1/traces?limit=1").json()
    assert [t["trace_id"] for t in first["traces"]] == [data.trace_b.hex()]
    assert first["next_cursor"]
    second = client.get(f"/api/v1/traces?limit=1&cursor={first['next_cursor']}").json()
    assert [t["trace_id"] for t in second["traces"]] == [data.trace_a.hex()]
    assert client.get("/api/v1/traces?cursor=not-a-cursor").status_code == 400


def test_request_returns_its_traces_and_logs_in_time_order(
    loaded: tuple[AppClient, Dataset],
) -> None:
    client, data = loaded
    body = client.get(f"/api/v1/requests/{data.global_id}").json()
    assert body["request_id"] == data.global_id
    assert [t["trace_id"] for t in body["traces"]] == [data.trace_a.hex(), data.trace_b.hex()]
    assert [log["body"] for log in body["logs"]] == [
        "POST /servers accepted",
        "image x not found in store",
        "listing images",
    ]
    error_log = body["logs"][1]
    assert error_log["trace_id"] == data.trace_a.hex()
    assert error_log["span_id"] == data.spans_a[2]["span_id"].hex()
    assert (error_log["request_id"], error_log["global_request_id"]) == (
        data.local_a,
        data.global_id,
    )
    assert (error_log["severity_number"], error_log["severity_text"]) == (17, "ERROR")
    assert error_log["service"] == "glance-api"
    local = client.get(f"/api/v1/requests/{data.local_b}").json()
    assert [t["trace_id"] for t in local["traces"]] == [data.trace_b.hex()]
    assert [log["body"] for log in local["logs"]] == ["listing images"]


def test_log_search(loaded: tuple[AppClient, Dataset]) -> None:
    client, data = loaded

    def bodies(query: str) -> list[str]:
        r = client.get("/api/v1/logs?" + query)
        assert r.status_code == 200, r.text
        return [log["body"] for log in r.json()["logs"]]

    assert bodies("level=error") == ["image x not found in store"]
    assert bodies(f"trace_id={data.trace_a.hex()}") == ["image x not found in store"]
    assert bodies("service=nova-api") == ["POST /servers accepted"]
    assert bodies("q=listing") == ["listing images"]
    assert bodies(f"request_id={data.local_a}") == [
        "POST /servers accepted",
        "image x not found in store",
    ]
    assert bodies("start=7m") == ["listing images"]


def test_services_operations_dependencies(loaded: tuple[AppClient, Dataset]) -> None:
    client, _ = loaded
    assert client.get("/api/v1/services").json() == {"services": ["glance-api", "nova-api"]}
    assert client.get("/api/v1/services/nova-api/operations").json() == {
        "service": "nova-api",
        "operations": ["GET glance", "POST /servers"],
    }
    deps = client.get("/api/v1/dependencies?start=1h").json()["dependencies"]
    assert deps == [{"caller": "nova-api", "callee": "glance-api", "calls": 1, "errors": 1}]


@pytest.mark.parametrize(
    ("url", "status", "text"),
    [
        ("/api/v1/traces/abc", 400, "32 hex"),
        ("/api/v1/traces/" + "ab" * 16, 404, "not found"),
        ("/api/v1/requests/req-nope", 400, "request id"),
        ("/api/v1/traces?start=yesterday", 400, "start"),
        ("/api/v1/traces?min_duration=fast", 400, "min_duration"),
        ("/api/v1/traces?request_id=x", 400, "request_id"),
        ("/api/v1/traces?attr.=x", 400, "attr."),
        ("/api/v1/traces?limit=0", 422, "limit"),
        ("/api/v1/traces?error=maybe", 422, "error"),
        ("/api/v1/logs?level=loud", 400, "level"),
        ("/api/v1/logs?trace_id=zz", 400, "trace_id"),
        ("/api/v1/dependencies?end=soon", 400, "end"),
    ],
)
def test_bad_parameters_get_clear_4xx(
    loaded: tuple[AppClient, Dataset], url: str, status: int, text: str
) -> None:
    client, _ = loaded
    r = client.get(url)
    assert r.status_code == status
    assert text in r.text


def test_openapi_lists_every_public_path(loaded: tuple[AppClient, Dataset]) -> None:
    client, _ = loaded
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {
        "/api/v1/traces",
        "/api/v1/traces/{trace_id}",
        "/api/v1/requests/{request_id}",
        "/api/v1/services",
        "/api/v1/services/{name}/operations",
        "/api/v1/dependencies",
        "/api/v1/logs",
        "/healthz",
        "/metrics",
    } <= paths
    assert client.get("/docs").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}


def test_api_token_guards_queries_not_health(store_url: str) -> None:
    with (
        opened(store_url) as store,
        serve_client(store, api_tokens=("sha256:" + "0" * 64, "tok")) as client,
    ):
        r = client.get("/api/v1/services")
        assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz").status_code == 200
        ok = {"authorization": "Bearer tok"}
        assert client.get("/api/v1/services", headers=ok).status_code == 200
        assert client.get("/metrics", headers=ok).status_code == 200
