"""``crosstrace why`` and ``crosstrace errors`` against a real backend (the
``serve`` app under uvicorn on a loopback port, SQLite store)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crosstrace.cli import main
from crosstrace.cli.query import ENV_API_TOKEN, ENV_URL
from crosstrace.demo.servers import serve_asgi
from crosstrace.server.app import create_app
from crosstrace.server.model import SpanRecord
from crosstrace.server.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent / "server" / "analysis"))
from analysis_builders import CLIENT, SERVER, T0, Trace

GID = "req-6f1c2a4e-9a1b-4c2d-8e3f-0123456789ab"
TRACE = (1).to_bytes(16, "big").hex()


def _failed(n: int, caller: str) -> list[SpanRecord]:
    now = time.time_ns() - 3_600_000_000_000 + n * 1_000_000_000
    t = Trace()
    t.add(
        "top",
        None,
        0,
        100,
        service=caller,
        kind=SERVER,
        http=504,
        error="HTTP 504",
        attrs={"openstack.global_request_id": GID},
    )
    t.add("call", "top", 5, 90, service=caller, kind=CLIENT, error="ReadTimeout: timed out")
    t.add("vol", "call", 10, 180, service="volume", kind=SERVER, http=202)
    t.add("query", "vol", 11, 170, service="volume", op="volume.db.find_capacity")
    shift = T0 - now  # an hour-old trace, inside the default windows
    for s in t.list():
        s.trace_id = n.to_bytes(16, "big")
        s.start_ns -= shift
        s.end_ns -= shift
    return t.list()


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = open_store("sqlite:///" + str(tmp_path_factory.mktemp("why") / "store.sqlite3"))
    store.write_spans(_failed(1, "compute") + _failed(2, "compute-api"))
    server = serve_asgi(create_app(store), "why-backend", start_timeout=20)
    try:
        yield server.url
    finally:
        server.stop(20)
        store.close()


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={ENV_URL: "", ENV_API_TOKEN: ""})


def test_why_prints_the_verdict_chain_and_the_masked_cause(backend: str) -> None:
    result = _run("why", TRACE, "--url", backend)
    assert result.exit_code == 0, result.output
    assert "error" in result.output
    assert "root cause: volume / volume.db.find_capacity" in result.output
    assert "masked_timeout" in result.output
    assert "gave up waiting" in result.output


def test_why_json_for_a_request_id(backend: str) -> None:
    result = _run("why", GID, "--url", backend, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["request_id"] == GID
    assert doc["root_cause"]["name"] == "volume.db.find_capacity"


def test_why_refuses_a_malformed_id_and_reports_an_unknown_one(backend: str) -> None:
    bad = _run("why", "nonsense", "--url", backend)
    assert bad.exit_code == 2
    assert "trace id" in bad.output
    unknown = _run("why", "ab" * 16, "--url", backend)
    assert unknown.exit_code == 2
    assert "not found" in unknown.output
    assert "Traceback" not in unknown.output


def test_errors_table_and_json(backend: str) -> None:
    table = _run("errors", "--since", "1d", "--url", backend)
    assert table.exit_code == 0, table.output
    assert "volume / volume.db.find_capacity" in table.output
    doc = json.loads(_run("errors", "--since", "1d", "--url", backend, "--json").stdout)
    (group,) = doc["groups"]
    assert group["count"] == 2
    filtered = _run("errors", "--since", "1d", "--service", "image", "--url", backend)
    assert "no failures" in filtered.output
