"""Central tracing settings: ``crosstrace sampling set`` changes what two running
services spend, through a real ``crosstrace serve``.

Two services run as processes of their own (``central_service.py``), each behind
the WSGI middleware with its own tracer and central-settings poller (a short
poll interval keeps the test fast), serving requests of 10 spans and exporting
to ``serve`` over OTLP/HTTP. Starting at a 50 % budget they report a real
overhead; ``sampling set --budget 1%`` for each must reach both tracers within
one poll interval (their next report, which follows the poll that applied it,
says so), and their reported overhead must fall.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_serve_process import ServeProcess

from crosstrace.cli import main

POLL_S = 0.5
SERVICES = ("svc-a", "svc-b")
SERVICE_PROGRAM = Path(__file__).resolve().parent / "central_service.py"


def _until(
    condition: Callable[[], bool], deadline_s: float, what: str, seen: Callable[[], Any] = str
) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {deadline_s:g}s waiting for {what}; last seen: {seen()}"
            )
        time.sleep(0.02)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    server = ServeProcess("--db", f"sqlite:///{tmp_path / 'db.sqlite3'}", "--port", "0")
    try:
        yield server.wait_listening()
    finally:
        server.terminate()


def _reported(url: str) -> dict[str, dict[str, Any]]:
    rows = httpx.get(url + "/api/v1/overhead", timeout=5).json()["services"]
    return {r["service"]: r["reported"] for r in rows}


def test_sampling_set_changes_two_running_services_within_one_poll(serve: str) -> None:
    runner = CliRunner()
    for name in SERVICES:
        r = runner.invoke(
            main, ["sampling", "set", "--service", name, "--budget", "50%", "--url", serve]
        )
        assert r.exit_code == 0, r.output
    services = [
        subprocess.Popen(
            [sys.executable, str(SERVICE_PROGRAM), name, serve, str(POLL_S)],
            stdin=subprocess.PIPE,
        )
        for name in SERVICES
    ]
    try:
        # Under a 50 % budget both trace and report a real overhead.
        _until(
            lambda: all(
                _reported(serve).get(n, {}).get("budget") == 0.5
                and _reported(serve)[n]["overhead"] > 0.05
                for n in SERVICES
            ),
            30,
            "both services to report their overhead at 50 %",
            lambda: _reported(serve),
        )
        before = {n: _reported(serve)[n]["overhead"] for n in SERVICES}
        for name in SERVICES:
            r = runner.invoke(
                main, ["sampling", "set", "--service", name, "--budget", "1%", "--url", serve]
            )
            assert r.exit_code == 0, r.output
            assert "budget=1%" in r.output
        # Within one poll interval (plus the report in flight), both tracers run
        # at 1 %: each report follows the poll that applied the new settings.
        _until(
            lambda: all(_reported(serve)[n].get("budget") == 0.01 for n in SERVICES),
            POLL_S + 1.0,
            "the new budget to reach both tracers",
            lambda: _reported(serve),
        )
        # And what they measure and report falls with it.
        _until(
            lambda: all(_reported(serve)[n]["overhead"] < before[n] / 2 for n in SERVICES),
            45,
            "the reported overhead of both services to fall",
            lambda: (before, _reported(serve)),
        )
        shown = runner.invoke(main, ["sampling", "show", "--url", serve, "--json"])
        assert shown.exit_code == 0, shown.output
        assert '"svc-a"' in shown.output
        assert '"svc-b"' in shown.output
        assert all(_reported(serve)[n]["poll_failures"] == 0 for n in SERVICES)
        assert all(p.poll() is None for p in services)  # still serving throughout
    finally:
        for p in services:
            p.communicate(timeout=30)
