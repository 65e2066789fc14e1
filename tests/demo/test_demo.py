"""``crosstrace demo``: the fault plan, the RPC layer, and whole runs checked
against what the backend stored (SQLite + kombu memory://, and RabbitMQ +
PostgreSQL)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from crosstrace.cli import main
from crosstrace.demo import faults as F
from crosstrace.demo.backend import BackendClient, start_backend
from crosstrace.demo.faults import CATALOGUE, FaultInjector, FaultKind
from crosstrace.demo.rpc import MessagingTimeout, RemoteError, RpcClient, RpcServer

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5
STATUS_ERROR = 2


# --------------------------------------------------------------------- fault plan


def test_fault_plan_is_reproducible_from_the_seed() -> None:
    """The same seed gives the same faults and callers, in the same order."""
    a = FaultInjector(7, identities=4).plan(300)
    b = FaultInjector(7, identities=4).plan(300)
    c = FaultInjector(8, identities=4).plan(300)
    assert a == b
    assert [p.fault for p in a] != [p.fault for p in c]
    assert [p.index for p in a] == list(range(300))


def test_fault_plan_follows_the_documented_rates() -> None:
    """Over many requests each fault's share is close to its documented rate."""
    n = 20_000
    plan = FaultInjector(1, identities=4).plan(n)
    for kind, rate in F.DEFAULT_RATES.items():
        share = sum(1 for p in plan if p.fault is kind) / n
        assert abs(share - rate) < 0.01, (kind, share, rate)


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="sum to at most 1"):
        FaultInjector(1, rates={FaultKind.IMAGE_500: 0.7, FaultKind.NETWORK_QUOTA: 0.6})
    with pytest.raises(ValueError, match="clean requests"):
        FaultInjector(1, rates={FaultKind.NONE: 0.5})


def test_injector_arms_faults_by_global_request_id() -> None:
    injector = FaultInjector(1)
    injector.arm("req-00000000-0000-4000-8000-000000000001", FaultKind.IMAGE_500)
    assert injector.fault_for("req-00000000-0000-4000-8000-000000000001") is FaultKind.IMAGE_500
    assert injector.fault_for("req-00000000-0000-4000-8000-000000000002") is FaultKind.NONE
    assert injector.fault_for(None) is FaultKind.NONE


# ----------------------------------------------------------------------------- RPC


class _Endpoint:
    def __init__(self) -> None:
        self.casts: list[int] = []
        self.cast_seen = threading.Event()

    def add(self, a: int, b: int) -> int:
        return a + b

    def fail(self) -> None:
        raise KeyError("no such host")

    def stuck(self) -> Any:
        return RpcServer.NO_REPLY

    def note(self, value: int) -> None:
        self.casts.append(value)
        self.cast_seen.set()

    def hidden(self) -> str:
        return "should not be callable"


@pytest.fixture
def rpc_pair(amqp_queue_name: str) -> Iterator[tuple[RpcClient, _Endpoint, str]]:
    endpoint = _Endpoint()
    exchange = amqp_queue_name + "-x"
    topic = amqp_queue_name
    server = RpcServer(
        "memory://", exchange, topic, endpoint, methods=("add", "fail", "stuck", "note")
    )
    server.start()
    client = RpcClient("memory://", exchange)
    client.start()
    try:
        yield client, endpoint, topic
    finally:
        client.stop()
        server.stop()


def test_rpc_call_returns_the_result(rpc_pair: tuple[RpcClient, _Endpoint, str]) -> None:
    client, _, topic = rpc_pair
    assert [client.call(topic, "add", timeout=5, a=i, b=10) for i in range(5)] == [
        10,
        11,
        12,
        13,
        14,
    ]


def test_rpc_call_raises_the_remote_error(rpc_pair: tuple[RpcClient, _Endpoint, str]) -> None:
    client, _, topic = rpc_pair
    with pytest.raises(RemoteError) as info:
        client.call(topic, "fail", timeout=5)
    assert info.value.exc_type == "KeyError"
    assert "no such host" in info.value.message


def test_rpc_call_times_out_when_no_reply_comes(
    rpc_pair: tuple[RpcClient, _Endpoint, str],
) -> None:
    client, _, topic = rpc_pair
    with pytest.raises(MessagingTimeout, match="stuck"):
        client.call(topic, "stuck", timeout=0.3)


def test_rpc_refuses_methods_not_exposed(rpc_pair: tuple[RpcClient, _Endpoint, str]) -> None:
    client, _, topic = rpc_pair
    with pytest.raises(RemoteError, match="unknown RPC method"):
        client.call(topic, "hidden", timeout=5)


def test_rpc_cast_reaches_the_server(rpc_pair: tuple[RpcClient, _Endpoint, str]) -> None:
    client, endpoint, topic = rpc_pair
    client.cast(topic, "note", value=42)
    assert endpoint.cast_seen.wait(5)
    assert endpoint.casts == [42]


# ----------------------------------------------------------------- whole demo runs


@dataclass
class DemoRun:
    data_dir: Path
    result: Result
    client: BackendClient
    ground_truth: dict[str, Any]
    summary: dict[str, Any]

    def boots(self) -> list[dict[str, Any]]:
        return [*self.ground_truth["faults"], *self.ground_truth["requests_without_fault"]]


def _run_demo(data_dir: Path, *args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(
        main,
        ["demo", "--once", "--fast", "--port", "0", "--data-dir", str(data_dir), *args],
        env={"COLUMNS": "160"},
        catch_exceptions=False,
    )


@pytest.fixture
def demo_run_factory() -> Iterator[Any]:
    """Runs the demo, then restarts ``crosstrace serve`` over the store it left."""
    backends = []
    runs: list[DemoRun] = []

    def make(data_dir: Path, *args: str) -> DemoRun:
        result = _run_demo(data_dir, *args)
        assert result.exit_code == 0, result.output
        backend = start_backend(data_dir, port=0)
        backends.append(backend)
        run = DemoRun(
            data_dir,
            result,
            BackendClient(backend.url),
            json.loads((data_dir / "groundtruth.json").read_text()),
            json.loads((data_dir / "summary.json").read_text()),
        )
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.client.close()
    for backend in backends:
        backend.stop()


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """One demo run (40 boots, a seed that injects every fault kind) on the
    embedded defaults: kombu memory:// and SQLite, with the backend restarted
    over its store afterwards."""
    data_dir = tmp_path_factory.mktemp("demo")
    result = _run_demo(data_dir, "--requests", "40", "--seed", "4")
    assert result.exit_code == 0, result.output
    backend = start_backend(data_dir, port=0)
    run = DemoRun(
        data_dir,
        result,
        BackendClient(backend.url),
        json.loads((data_dir / "groundtruth.json").read_text()),
        json.loads((data_dir / "summary.json").read_text()),
    )
    try:
        yield run
    finally:
        run.client.close()
        backend.stop()


def _table_rows(output: str) -> dict[str, list[str]]:
    """The summary table's rows: fault, n, client statuses, failed, stored errors."""
    kinds = {str(k) for k in FaultKind}
    rows = {}
    for line in output.splitlines():
        if "crosstrace's verdict" in line:  # the next table is the verdicts'
            break
        cells = line.split()
        if len(cells) >= 5 and cells[0] in kinds:
            rows[cells[0]] = cells[:5]
    return rows


def check_summary_matches_backend(run: DemoRun) -> None:
    """The printed summary, summary.json and the query API agree, kind by kind."""
    rows = _table_rows(run.result.output)
    by_kind: dict[str, list[dict[str, Any]]] = {str(k): [] for k in FaultKind}
    for entry in run.boots():
        by_kind[entry["fault"]].append(entry)
    total_failed = 0
    for kind, entries in by_kind.items():
        stored = [run.client.request(e["global_request_id"])["traces"] for e in entries]
        error_traces = sum(1 for traces in stored if any(t["error_count"] > 0 for t in traces))
        failed = sum(1 for e in entries if not 200 <= (e["status"] or 0) < 300)
        total_failed += failed
        figures = run.summary["by_fault"][kind]
        assert figures["requests"] == len(entries), kind
        assert figures["failed"] == failed, kind
        assert figures["error_traces"] == error_traces, kind
        assert rows[kind][1] == str(len(entries)), rows[kind]
        assert rows[kind][3] == str(failed), rows[kind]
        assert rows[kind][4] == str(error_traces), rows[kind]
        # A failing fault fails at the client and leaves an error trace every time;
        # a clean or slow request does neither.
        if CATALOGUE[FaultKind(kind)].is_failure:
            assert failed == error_traces == len(entries), kind
        else:
            assert failed == error_traces == 0, kind
    assert run.summary["failed"] == total_failed
    since = run.ground_truth["started_at"] - 5
    found = sum(
        1
        for t in run.client.search(error="true", start=_rfc3339(since))
        if set(t["global_request_ids"]) & {e["global_request_id"] for e in run.boots()}
    )
    assert found == total_failed
    assert f"{total_failed} failed" in run.result.output


def _rfc3339(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def check_traces_complete(run: DemoRun, db_system: str) -> None:
    """One trace per boot, spanning every service it reached, parents linked,
    SERVER spans for HTTP hops and for RPC calls (oslo.messaging), DB spans in the
    volume service."""
    http_services = {F.SVC_COMPUTE_API, F.SVC_IMAGE, F.SVC_NETWORK, F.SVC_VOLUME}
    rpc_services = {F.SVC_SCHEDULER, F.SVC_COMPUTE}
    for entry in run.boots():
        fault = FaultKind(entry["fault"])
        traces = run.client.request(entry["global_request_id"])["traces"]
        assert len(traces) == 1, entry
        assert traces[0]["trace_id"] == entry["trace_id"], entry
        spans = run.client.trace(entry["trace_id"])["spans"]
        reached = F.SERVICES_REACHED[fault]
        assert reached <= {s["service"] for s in spans}, (entry, {s["service"] for s in spans})
        ids = {s["span_id"] for s in spans}
        roots = [s for s in spans if s["parent_span_id"] is None]
        assert len(roots) == 1, (entry["global_request_id"], [s["name"] for s in roots])
        assert roots[0]["service"] == F.SVC_COMPUTE_API
        assert roots[0]["kind"] == SERVER
        for s in spans:
            assert s["parent_span_id"] is None or s["parent_span_id"] in ids, s
        for service in reached & http_services:
            assert any(s["service"] == service and s["kind"] == SERVER for s in spans), service
        for service in reached & rpc_services:
            assert any(s["service"] == service and s["kind"] == SERVER for s in spans), service
        if F.SVC_VOLUME in reached:
            db_spans = [
                s
                for s in spans
                if s["service"] == F.SVC_VOLUME and s["attributes"].get("db.system") == db_system
            ]
            assert db_spans, entry
        # Every span carries the request's global id or belongs to its trace by id.
        server_spans = [s for s in spans if s["kind"] in (SERVER, CONSUMER)]
        for s in server_spans:
            assert (
                s["attributes"].get("openstack.global_request_id") == entry["global_request_id"]
            ), s


def check_logs_carry_global_id(run: DemoRun) -> None:
    """Each service's log file has lines with the global id of every request it
    served, and the backend returns those logs for the request id."""
    logs = {
        name: (run.data_dir / "logs" / f"{name}.log").read_text()
        for name in F.SERVICES_REACHED[FaultKind.NONE]
    }
    for entry in run.boots():
        gid = entry["global_request_id"]
        reached = F.SERVICES_REACHED[FaultKind(entry["fault"])]
        for service in reached:
            assert f"[{gid} req-" in logs[service], (service, gid)
        stored = run.client.request(gid)["logs"]
        assert reached <= {r["service"] for r in stored}, (gid, {r["service"] for r in stored})
        assert all(r["global_request_id"] == gid for r in stored)


def check_ground_truth_against_store(run: DemoRun) -> None:
    """Every injected fault's trace is stored, with its errors in the right
    services and its root-cause span where the catalogue says."""
    assert run.ground_truth["faults"], "the run injected no fault"
    for entry in run.ground_truth["faults"]:
        kind = FaultKind(entry["fault"])
        spans = run.client.trace(entry["trace_id"])["spans"]
        root = entry["root_cause"]
        at_root = [
            s for s in spans if (s["service"], s["name"]) == (root["service"], root["operation"])
        ]
        assert at_root, (kind, root)
        for service, operation in F.ERRORS_SEEN[kind]:
            assert any(
                s["service"] == service
                and s["name"] == operation
                and s["status_code"] == STATUS_ERROR
                for s in spans
            ), (kind, service, operation)
        errors = [s for s in spans if s["status_code"] == STATUS_ERROR]
        if entry["is_failure"]:
            assert errors, kind
        else:
            assert not errors, kind
        if kind in (FaultKind.IMAGE_NOT_FOUND, FaultKind.IMAGE_500, FaultKind.VOLUME_DUPLICATE):
            types = {
                e["attributes"].get("exception.type", "").rsplit(".", 1)[-1]
                for s in at_root
                for e in s["events"]
            }
            assert root["error_type"] in types, (kind, types)
        if kind is FaultKind.VOLUME_DB_TIMEOUT:
            slow_db = max(s["duration_ns"] for s in at_root)
            assert slow_db >= run.ground_truth["slow_threshold_s"] * 1e9, slow_db
        assert entry["status"] == entry["expected_status"], entry
    for entry in run.ground_truth["requests_without_fault"]:
        traces = run.client.request(entry["global_request_id"])["traces"]
        assert [t["error_count"] for t in traces] == [0], entry


@pytest.mark.slow
def test_demo_summary_scores_crosstraces_verdict_against_the_truth(sqlite_run: DemoRun) -> None:
    """Beside the injected truth the summary prints crosstrace's own root cause per
    fault kind: the answer it gives most is the true cause, one error group each."""
    verdicts = sqlite_run.summary["verdicts"]
    assert "crosstrace's verdict beside the injected truth" in sqlite_run.result.output
    failed = right = 0
    for kind, spec in CATALOGUE.items():
        score = verdicts[str(kind)]
        if not score["requests"]:
            continue
        expected = {True: "error", False: "slow"}[spec.is_failure] if spec.root_cause else "ok"
        cause = spec.root_cause
        truth = f"{cause.service} / {cause.operation}" if cause else "nothing"
        assert score["most_common_answer"] == f"{expected}: {truth}", (kind, score)
        if spec.is_failure:
            failed += score["requests"]
            right += score["right"]
            assert len(score["error_groups"]) == 1, (kind, score)
    assert right >= 0.9 * failed
    assert sqlite_run.summary["error_groups"] == sum(
        1 for k, s in CATALOGUE.items() if s.is_failure and verdicts[str(k)]["requests"]
    )


def test_demo_summary_matches_the_backend(sqlite_run: DemoRun) -> None:
    """`crosstrace demo --once` exits 0 and its counts per fault kind are the backend's."""
    assert {e["fault"] for e in sqlite_run.boots()} == {str(k) for k in FaultKind}
    check_summary_matches_backend(sqlite_run)


@pytest.mark.slow
def test_demo_traces_are_complete(sqlite_run: DemoRun) -> None:
    check_traces_complete(sqlite_run, "sqlite")


@pytest.mark.slow
def test_demo_logs_carry_the_global_request_id(sqlite_run: DemoRun) -> None:
    check_logs_carry_global_id(sqlite_run)


@pytest.mark.slow
def test_demo_ground_truth_matches_the_store(sqlite_run: DemoRun) -> None:
    check_ground_truth_against_store(sqlite_run)


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_demo_over_rabbitmq_and_postgresql(
    amqp_url: str, postgres_schema_url: str, tmp_path: Path, demo_run_factory: Any
) -> None:
    """The same run with RPC over real RabbitMQ and the volume DB on real PostgreSQL."""
    run = demo_run_factory(
        tmp_path,
        "--requests",
        "30",
        "--seed",
        "23",
        "--broker",
        amqp_url,
        "--volume-db",
        postgres_schema_url,
    )
    assert "amqp://guest:***@" in run.result.output
    check_summary_matches_backend(run)
    check_traces_complete(run, "postgresql")
    check_logs_carry_global_id(run)
    check_ground_truth_against_store(run)


def test_demo_reports_a_taken_port(tmp_path: Path) -> None:
    """A port already in use is a clear error, not a traceback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["demo", "--once", "--requests", "1", "--port", str(port), "--data-dir", str(tmp_path)],
        )
    assert result.exit_code == 1
    assert "crosstrace serve did not start" in result.output
    assert "--port 0" in result.output
    assert "Traceback" not in result.output


def test_demo_reports_an_unreachable_volume_database(tmp_path: Path) -> None:
    """A volume DB that cannot be reached is a clear error naming it, not a traceback."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--once",
            "--requests",
            "1",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--volume-db",
            f"postgresql://127.0.0.1:{port}/nowhere",
        ],
    )
    assert result.exit_code == 1
    assert "the cloud could not start" in result.output
    assert f"postgresql://127.0.0.1:{port}/nowhere" in result.output
    assert "Traceback" not in result.output
