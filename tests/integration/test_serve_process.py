"""``crosstrace serve`` as a real process: SIGKILL mid-stream, SIGTERM, and the
tracer exporting to it over OTLP/HTTP and over RabbitMQ."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serve_samples import PB, simple_batch

pytestmark = pytest.mark.slow

LISTENING = re.compile(r"listening on (http://\S+)")


class ServeProcess:
    """``crosstrace serve`` in a subprocess; its output is drained by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-c", "from crosstrace.cli import main; main()", "serve", *args]
        full_env = {**os.environ, "CROSSTRACE_CONFIG": "", **(env or {})}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                self._listening.set()

    def wait_listening(self, timeout: float = 30) -> str:
        if not self._listening.wait(timeout):
            self.kill()
            raise AssertionError("serve did not start:\n" + "\n".join(self.lines))
        assert self.url is not None
        return self.url

    def wait_line(self, text: str, timeout: float = 30) -> None:
        _wait_for(lambda: any(text in line for line in self.lines), timeout, text)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._close()


@pytest.fixture
def processes() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for proc in started:
        proc.kill()


def _wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _trace_hex(body: bytes) -> str:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest.FromString(body)
    return str(req.resource_spans[0].scope_spans[0].spans[0].trace_id.hex())


def _span_ids(base: str, trace_hex: str) -> set[str]:
    r = httpx.get(f"{base}/api/v1/traces/{trace_hex}", timeout=10)
    if r.status_code == 404:
        return set()
    r.raise_for_status()
    return {s["span_id"] for s in r.json()["spans"]}


def test_sigkill_mid_stream_loses_no_acknowledged_batch(
    tmp_path: Path, processes: list[ServeProcess]
) -> None:
    """Every batch that got a 200 before SIGKILL is queryable after a restart."""
    db = "sqlite:///" + str(tmp_path / "kill.sqlite3")
    args = ("--db", db, "--port", "0", "--retention", "off")
    server = ServeProcess(*args)
    processes.append(server)
    url = server.wait_listening()
    acknowledged: list[tuple[str, set[str]]] = []
    stop = threading.Event()

    def client(spans: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                body, ids = simple_batch(spans)
                try:
                    r = http.post("/v1/traces", content=body, headers=PB)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    acknowledged.append((_trace_hex(body), {i.hex() for i in ids}))

    # Bodies of 800 spans go through the decode workers, those of 20 do not.
    threads = [threading.Thread(target=client, args=(n,)) for n in (20, 20, 800)]
    for t in threads:
        t.start()
    _wait_for(lambda: len(acknowledged) >= 60, what="60 acknowledged batches")
    server.proc.send_signal(signal.SIGKILL)  # mid-stream: the clients are still sending
    for t in threads:
        t.join(30)
    stop.set()
    assert server.proc.wait(10) == -signal.SIGKILL
    server.kill()  # reap the output reader
    restarted = ServeProcess(*args)
    processes.append(restarted)
    base = restarted.wait_listening()
    missing = [trace for trace, ids in acknowledged if _span_ids(base, trace) != ids]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged batches lost"
    assert restarted.terminate() == 0


def test_sigterm_shuts_down_gracefully(tmp_path: Path, processes: list[ServeProcess]) -> None:
    db = "sqlite:///" + str(tmp_path / "term.sqlite3")
    # The sample batches are dated 2025: keep them from the default 7-day retention.
    server = ServeProcess("--db", db, "--port", "0", "--retention", "off")
    processes.append(server)
    url = server.wait_listening()
    assert any("store: sqlite:///" in line for line in server.lines)
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    body, ids = simple_batch(3)
    assert httpx.post(f"{url}/v1/traces", content=body, headers=PB).status_code == 200
    assert server.terminate() == 0
    assert server.lines[-1] == "stopped"
    again = ServeProcess("--db", db, "--port", "0", "--retention", "off")
    processes.append(again)
    base = again.wait_listening()
    assert _span_ids(base, _trace_hex(body)) == {i.hex() for i in ids}


TRACER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import crosstrace
    from crosstrace import SpanKind

    settings = json.loads(sys.argv[1])
    crosstrace.configure(
        service_name=settings.pop("service"),
        sample_ratio=1.0,
        overhead_budget=0,
        **settings,
    )
    traces = {}
    for i in range(40):
        with crosstrace.span("GET /servers", kind=SpanKind.SERVER) as root:
            ids = [root.span_id]
            with crosstrace.span("SELECT servers", attributes={"db.system": "mysql"}) as db:
                ids.append(db.span_id)
            with crosstrace.span("GET glance", kind=SpanKind.CLIENT) as call:
                ids.append(call.span_id)
        traces[format(root.trace_id, "032x")] = [format(s, "016x") for s in ids]
    crosstrace.config.shutdown(10)
    print(json.dumps(traces))
    """
)


def _run_tracer(settings: dict[str, object]) -> dict[str, set[str]]:
    out = subprocess.run(
        [sys.executable, "-c", TRACER_SCRIPT, json.dumps(settings)],
        capture_output=True,
        timeout=60,
        check=True,
        env={**os.environ, "CROSSTRACE_CONFIG_FILE": ""},
    )
    traces = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert len(traces) == 40
    return {trace: set(ids) for trace, ids in traces.items()}


def test_tracer_exports_to_serve_over_http(tmp_path: Path, processes: list[ServeProcess]) -> None:
    db = "sqlite:///" + str(tmp_path / "e2e.sqlite3")
    server = ServeProcess("--db", db, "--port", "0")
    processes.append(server)
    url = server.wait_listening()
    traces = _run_tracer({"service": "e2e-http", "transport": "otlp", "endpoint": url})
    for trace, ids in traces.items():
        assert _span_ids(url, trace) == ids
    services = httpx.get(f"{url}/api/v1/services").json()["services"]
    assert services == ["e2e-http"]
    assert server.terminate() == 0


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_tracer_exports_over_rabbitmq_to_two_consumers(
    amqp_url: str, amqp_queue_name: str, postgres_schema_url: str, processes: list[ServeProcess]
) -> None:
    """The tracer's AMQP transport -> one queue -> two serve --consume -> PostgreSQL."""
    common = (
        "--db",
        postgres_schema_url,
        "--consume",
        amqp_url,
        "--queue",
        amqp_queue_name,
        "--routing-key",
        amqp_queue_name,
        "--prefetch",
        "1",
        "--retention",
        "off",
    )
    api = ServeProcess(*common, "--port", "0")
    worker = ServeProcess(*common, "--no-http")
    processes += [api, worker]
    url = api.wait_listening()
    for proc in (api, worker):
        proc.wait_line("consuming queue")
    try:
        traces = _run_tracer(
            {
                "service": "e2e-amqp",
                "transport": "amqp",
                "amqp_url": amqp_url,
                "amqp_queue": amqp_queue_name,
                "amqp_routing_key": amqp_queue_name,
                "batch_size": 6,
            }
        )
        _wait_for(
            lambda: all(_span_ids(url, t) == ids for t, ids in traces.items()),
            timeout=60,
            what="every span queryable",
        )
        assert api.terminate() == 0
        assert worker.terminate() == 0
    finally:
        import kombu

        with kombu.Connection(amqp_url) as conn:
            kombu.Queue(amqp_queue_name)(conn.channel()).delete()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_decode_workers_exit_when_the_server_is_killed(
    tmp_path: Path, processes: list[ServeProcess]
) -> None:
    """SIGKILL gives the server no chance to stop its decode workers: they notice
    and exit by themselves."""
    db = "sqlite:///" + str(tmp_path / "workers.sqlite3")
    server = ServeProcess("--db", db, "--port", "0", "--decode-workers", "2")
    processes.append(server)
    server.wait_listening()
    assert any("2 worker process(es)" in line for line in server.lines)
    children = _children(server.proc.pid)
    assert len(children) >= 2  # the two workers (and multiprocessing's tracker)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    _wait_for(lambda: all(_gone(p) for p in children), 10, "the workers to exit")
