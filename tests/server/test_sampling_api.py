"""``/api/v1/sampling`` and ``/api/v1/overhead``: central tracing settings per service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from serve_samples import AppClient, opened, serve_client, sqlite_url

from crosstrace.server.sampling import SamplingRegistry, parse_settings

API = {"authorization": "Bearer api-tok"}
INGEST = {"authorization": "Bearer ingest-tok"}


@pytest.fixture
def client(tmp_path: Path) -> Any:
    with (
        opened(sqlite_url(tmp_path)) as store,
        serve_client(store, api_tokens=("api-tok",), ingest_tokens=("ingest-tok",)) as c,
    ):
        yield c


def _put(client: AppClient, service: str, body: Any, headers: dict[str, str] = API) -> Any:
    return client.request("PUT", f"/api/v1/sampling/{service}", json=body, headers=headers)


def test_service_settings_merge_over_the_default(client: AppClient) -> None:
    assert _put(client, "_default", {"budget": 0.1, "ratio": 0.5}).status_code == 200
    r = _put(client, "nova-api", {"budget": 0.02})
    assert r.status_code == 200
    assert r.json()["settings"] == {"budget": 0.02, "ratio": 0.5}
    got = client.get("/api/v1/sampling/nova-api", headers=INGEST).json()
    assert got == {"service": "nova-api", "settings": {"budget": 0.02, "ratio": 0.5}}
    other = client.get("/api/v1/sampling/glance-api", headers=INGEST).json()
    assert other["settings"] == {"budget": 0.1, "ratio": 0.5}


def test_etag_gives_304_until_the_settings_change(client: AppClient) -> None:
    first = client.get("/api/v1/sampling/nova-api", headers=INGEST)
    etag = first.headers["etag"]
    again = client.get("/api/v1/sampling/nova-api", headers={**INGEST, "if-none-match": etag})
    assert again.status_code == 304
    _put(client, "nova-api", {"ratio": 0.25})
    changed = client.get("/api/v1/sampling/nova-api", headers={**INGEST, "if-none-match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["settings"]["ratio"] == 0.25


def test_null_unsets_a_setting(client: AppClient) -> None:
    _put(client, "nova-api", {"budget": 0.02, "ratio": 0.5})
    r = _put(client, "nova-api", {"ratio": None})
    assert r.json()["own"] == {"budget": 0.02}


@pytest.mark.parametrize(
    "body",
    [
        {"budget": 2},
        {"ratio": -0.1},
        {"budget": "2%"},
        {"bogus": 1},
        {"rate_limit": float("inf")},
        [1, 2],
        {"slow_threshold": True},
    ],
)
def test_bad_settings_are_a_clear_400(client: AppClient, body: Any) -> None:
    r = client.request(
        "PUT",
        "/api/v1/sampling/nova-api",
        content=json.dumps(body, allow_nan=True),
        headers={**API, "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["detail"]


def test_changing_settings_needs_an_api_token(client: AppClient) -> None:
    assert _put(client, "nova-api", {"budget": 0.02}, headers={}).status_code == 401
    assert _put(client, "nova-api", {"budget": 0.02}, headers=INGEST).status_code == 401
    assert client.get("/api/v1/sampling/nova-api").status_code == 401
    assert client.get("/api/v1/sampling", headers=INGEST).status_code == 401
    assert client.get("/api/v1/overhead", headers=INGEST).status_code == 401


def test_reports_show_budget_against_actual(client: AppClient) -> None:
    _put(client, "nova-api", {"budget": 0.02})
    report = {
        "service": "nova-api",
        "budget": 0.02,
        "overhead": 0.019,
        "floor": 0.004,
        "effective_ratio": 0.3,
        "record_fraction": 1.0,
        "spans_dropped": 4,
    }
    assert client.post("/api/v1/overhead", json=report, headers=INGEST).status_code == 204
    rows = client.get("/api/v1/overhead", headers=API).json()["services"]
    (row,) = rows
    assert row["service"] == "nova-api"
    assert row["budget"] == 0.02
    assert row["reported"]["overhead"] == 0.019
    assert row["reported"]["floor"] == 0.004
    assert row["reported"]["spans_dropped"] == 4
    bad = client.post("/api/v1/overhead", json={"service": "x", "overhead": "lots"}, headers=INGEST)
    assert bad.status_code == 400


def test_settings_survive_a_restart_beside_the_store(tmp_path: Path) -> None:
    path = tmp_path / "crosstrace-sampling.json"
    SamplingRegistry(path).update("nova-api", parse_settings({"budget": 0.05}))
    assert SamplingRegistry(path).effective("nova-api")[0]["settings"] == {"budget": 0.05}
    path.write_text("{not json", encoding="utf-8")
    assert SamplingRegistry(path).all() == {}  # a broken file: logged, starts empty
