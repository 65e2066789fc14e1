"""Central tracing settings: ``crosstrace sampling set`` changes what two running
services spend, through a real ``crosstrace serve``.

Two services run in this process, each behind the WSGI middleware with its own
tracer and central-settings poller (a short poll interval keeps the test fast),
serving requests of 10 spans in a thread of their own and exporting to
``serve`` over OTLP/HTTP. Starting at a 50 % budget they record every trace;
``sampling set --budget 1%`` for each must reach both tracers within one poll
interval, and their reported overhead must fall.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_serve_process import ServeProcess

import crosstrace
from crosstrace.central import SamplingPoller
from crosstrace.cli import main
from crosstrace.export import BatchExporter, OtlpHttpTransport
from crosstrace.tracing import Tracer
from crosstrace.wsgi import RequestIdMiddleware

POLL_S = 0.5
SERVICES = ("svc-a", "svc-b")


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


class Service:
    """One service: middleware, tracer, exporter, poller and a request loop."""

    def __init__(self, name: str, url: str) -> None:
        self.exporter = BatchExporter(OtlpHttpTransport(url), max_delay_s=0.2)
        self.tracer = Tracer(name, self.exporter, sample_ratio=1.0, overhead_budget=0.5)
        self.poller = SamplingPoller(
            url, self.tracer, POLL_S, dropped=lambda: self.exporter.spans_dropped
        )
        self.app = RequestIdMiddleware(self._app, tracer=self.tracer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        for _ in range(9):
            with crosstrace.span("work", attributes={"a": 1, "b": "x", "c": True}):
                sum(range(200))
        start_response("200 OK", [])
        return [b"ok"]

    def _loop(self) -> None:
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "SERVER_NAME": "t", "SERVER_PORT": "80"}
        while not self._stop.is_set():
            for _ in self.app(dict(env), lambda *a: None):
                pass

    def start(self) -> Service:
        self.poller.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.poller.stop()
        self._thread.join(5)
        self.exporter.shutdown(5)


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
    services = [Service(name, serve).start() for name in SERVICES]
    try:
        # Under a 50 % budget both record every trace and report a real overhead.
        _until(
            lambda: all(
                _reported(serve).get(s.tracer.resource["service.name"], {}).get("overhead", 0)
                > 0.02
                for s in services
            ),
            20,
            "both services to report their overhead at 50 %",
        )
        before = {n: _reported(serve)[n]["overhead"] for n in SERVICES}
        for name in SERVICES:
            r = runner.invoke(
                main, ["sampling", "set", "--service", name, "--budget", "1%", "--url", serve]
            )
            assert r.exit_code == 0, r.output
            assert "budget=1%" in r.output
        # Within one poll interval (plus the request in flight), both tracers run at 1 %.
        _until(
            lambda: all(
                s.tracer.controller and s.tracer.controller.budget == 0.01 for s in services
            ),
            POLL_S + 1.0,
            "the new budget to reach both tracers",
        )
        # And what they measure and report falls with it.
        _until(
            lambda: all(
                _reported(serve)[n].get("budget") == 0.01
                and _reported(serve)[n]["overhead"] < before[n] / 2
                for n in SERVICES
            ),
            45,
            "the reported overhead of both services to fall",
            lambda: (before, _reported(serve)),
        )
        shown = runner.invoke(main, ["sampling", "show", "--url", serve, "--json"])
        assert shown.exit_code == 0, shown.output
        assert '"svc-a"' in shown.output
        assert '"svc-b"' in shown.output
        assert all(s.poller.failures == 0 for s in services)
    finally:
        for s in services:
            s.stop()
