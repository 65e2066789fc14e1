"""The security review's probes: JSON/gzip bombs, DNS rebinding, overflowing
parameters, file modes, concurrent ingest, tokens on the command line."""

from __future__ import annotations

import gzip
import json
import stat
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_samples import JSON, PB, AppClient, opened, simple_batch

from crosstrace.server.app import ServerApp, create_app, host_allowed
from crosstrace.server.ingest.http import JSON_MEMORY_FACTOR
from crosstrace.server.settings import SettingsError, resolve
from crosstrace.server.store import Store

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened(f"sqlite:///{tmp_path / 'db' / 'store.sqlite3'}") as s:
        yield s


@pytest.fixture
def app(store: Store) -> Iterator[tuple[ServerApp, AppClient]]:
    server = create_app(store, allowed_hosts=LOOPBACK, max_concurrent_ingest=4)
    client = AppClient(server)
    try:
        yield server, client
    finally:
        client.close()


def _bomb() -> bytes:
    """About 30 MB of empty JSON objects, gzipped to a few tens of kB."""
    inner = b",".join([b"{}"] * 10_000_000)
    return gzip.compress(b'{"resourceSpans":[' + inner + b"]}", 9)


def test_gzip_json_bomb_is_refused_within_the_memory_bound(
    app: tuple[ServerApp, AppClient],
) -> None:
    _, client = app
    bomb = _bomb()
    size = len(gzip.decompress(bomb))
    headers = {**JSON, "content-encoding": "gzip", "host": "localhost"}
    tracemalloc.start()
    try:
        r = client.post("/v1/traces", content=bomb, headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413, r.text
    assert peak <= JSON_MEMORY_FACTOR * size
    print(f"bomb: {len(bomb)} B gzip, {size} B JSON, peak {peak} B ({peak / size:.1f}x)")


def test_ordinary_json_is_accepted_and_stays_within_the_bound(
    app: tuple[ServerApp, AppClient],
) -> None:
    _, client = app
    spans = [
        {
            "traceId": f"{i + 1:032x}",
            "spanId": f"{i + 1:016x}",
            "name": "GET /v2.1/servers/{id}",
            "kind": 2,
            "startTimeUnixNano": "1763800000000000000",
            "endTimeUnixNano": "1763800000100000000",
            "attributes": [
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "http.response.status_code", "value": {"intValue": "200"}},
            ],
        }
        for i in range(2000)
    ]
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "nova"}}]
                    },
                    "scopeSpans": [{"spans": spans}],
                }
            ]
        }
    ).encode()
    tracemalloc.start()
    try:
        r = client.post("/v1/traces", content=body, headers={**JSON, "host": "localhost"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert peak <= JSON_MEMORY_FACTOR * len(body)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:4318", True),
        ("127.0.0.1:4318", True),
        ("[::1]:4318", True),
        ("evil.example", False),
        ("evil.example:4318", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_dns_rebinding_host_is_refused(
    app: tuple[ServerApp, AppClient], host: str, allowed: bool
) -> None:
    _, client = app
    r = client.get("/api/v1/services", headers={"host": host})
    assert (r.status_code == 200) is allowed, (host, r.status_code)
    if not allowed:
        assert r.status_code == 400
        assert host_allowed(host, LOOPBACK) is False


def test_host_check_covers_ingest_too(app: tuple[ServerApp, AppClient]) -> None:
    _, client = app
    body, _ = simple_batch(1)
    assert (
        client.post("/v1/traces", content=body, headers={**PB, "host": "evil"}).status_code == 400
    )


@pytest.mark.parametrize(
    "query",
    [
        "start=99999999999999999999999999d",
        "start=" + "9" * 400 + "h",
        "end=0001-01-01T00:00:00Z",
        "start=300000w",
        "min_duration=99999999999999999999999h",
        "max_duration=" + "9" * 400 + "s",
        "start=\u0663h",  # an Arabic-Indic digit is not a number here
    ],
)
def test_overflowing_time_and_duration_parameters_are_400(
    app: tuple[ServerApp, AppClient], query: str
) -> None:
    _, client = app
    r = client.get(f"/api/v1/traces?{query}", headers={"host": "localhost"})
    assert r.status_code == 400, (query, r.status_code, r.text)
    r = client.get(f"/api/v1/dependencies?{query}", headers={"host": "localhost"})
    assert r.status_code in (400, 200)  # dependencies take start/end only
    if query.startswith(("start", "end")):
        assert r.status_code == 400


def test_store_files_are_private(tmp_path: Path, store: Store) -> None:
    body, _ = simple_batch(1)
    server = create_app(store)
    client = AppClient(server)
    try:
        assert client.post("/v1/traces", content=body, headers=PB).status_code == 200
    finally:
        client.close()
    directory = tmp_path / "db"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_concurrent_ingest_beyond_the_limit_is_429(app: tuple[ServerApp, AppClient]) -> None:
    server, client = app
    body, _ = simple_batch(1)
    server.ingest.active = server.ingest.max_concurrent  # as many as allowed are in flight
    r = client.post("/v1/traces", content=body, headers={**PB, "host": "localhost"})
    assert r.status_code == 429
    assert r.headers["retry-after"]
    server.ingest.active = 0
    r = client.post("/v1/traces", content=body, headers={**PB, "host": "localhost"})
    assert r.status_code == 200


def test_tokens_on_the_command_line_draw_a_warning() -> None:
    settings = resolve({"api_tokens": ("s3cr3t-token",)}, env={})
    warning = settings.argv_token_warning()
    assert warning is not None
    assert "--api-token" in warning
    assert resolve({}, env={"CROSSTRACE_API_TOKEN": "s3cr3t-token"}).argv_token_warning() is None


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(SettingsError, match="go together"):
        resolve({"tls_cert": str(cert)}, env={})
