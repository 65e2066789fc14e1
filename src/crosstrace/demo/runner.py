"""``crosstrace demo``: start the backend and the cloud, drive boots, check, summarise.

Steps: start ``crosstrace serve`` (a child process, SQLite in the data
directory), point the services' tracing at it, start the cloud, drive the boot
requests with a progress bar, write the ground truth, flush the exporters and
poll the query API until every boot request's trace is there with every
service it reached, then print a summary: counts per fault kind as the client
saw them and as the backend stored them, and where to look next. Without
``--once`` a trickle of boots continues until Ctrl-C.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from crosstrace.demo import faults as F
from crosstrace.demo.backend import Backend, BackendClient, start_backend
from crosstrace.demo.cloud import Cloud, CloudConfig, Timings
from crosstrace.demo.driver import Driver
from crosstrace.demo.faults import CATALOGUE, FaultInjector, FaultKind
from crosstrace.demo.groundtruth import GroundTruth, RequestOutcome
from crosstrace.demo.identity import AUTH_FILE, IDENTITIES, write_auth_file
from crosstrace.demo.instrument import Tracing
from crosstrace.demo.verdicts import KindScore, score_verdicts
from crosstrace.redact import mask_password

__all__ = ["DemoError", "DemoSettings", "RequestCheck", "Verification", "run"]

log = logging.getLogger(__name__)

GROUND_TRUTH_FILE = "groundtruth.json"
SUMMARY_FILE = "summary.json"


class DemoError(RuntimeError):
    """The demo cannot run (a part failed to start): a message for the user."""


@dataclass(slots=True)
class DemoSettings:
    """What ``crosstrace demo`` was asked to do."""

    data_dir: Path
    requests: int = 200
    seed: int = 1
    once: bool = False
    port: int = 4318
    broker_url: str = "memory://"
    volume_db_url: str | None = None
    concurrency: int = 8
    timings: Timings = field(default_factory=Timings)
    #: Seconds between two trickle requests after the summary.
    trickle_interval: float = 3.0
    #: How long to wait for the backend to hold every trace.
    verify_timeout: float = 60.0
    #: Run the backend with access control on (identities in ``data_dir/auth.toml``).
    auth: bool = False


@dataclass(slots=True)
class RequestCheck:
    """What the backend holds for one boot request."""

    outcome: RequestOutcome
    trace_ids: list[str] = field(default_factory=list)
    services: set[str] = field(default_factory=set)
    error_count: int = 0
    span_count: int = 0

    @property
    def complete(self) -> bool:
        """One trace, spanning every service the request reached."""
        return len(self.trace_ids) == 1 and F.SERVICES_REACHED[self.outcome.fault] <= self.services

    @property
    def has_error(self) -> bool:
        return self.error_count > 0


@dataclass(slots=True)
class Verification:
    """The backend's view of the run, next to the client's."""

    checks: list[RequestCheck]
    error_traces_found: int
    seconds: float

    @property
    def incomplete(self) -> list[RequestCheck]:
        return [c for c in self.checks if not c.complete]


class Demo:
    """One demo run: backend, cloud, driver and ground truth."""

    def __init__(self, settings: DemoSettings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.data_dir = settings.data_dir
        self.injector = FaultInjector(settings.seed, identities=len(IDENTITIES))
        self.ground_truth = GroundTruth(
            settings.seed,
            {str(k): v for k, v in self.injector.rates.items()},
            settings.timings.slow_threshold,
        )
        self.backend: Backend | None = None
        self.client: BackendClient | None = None
        self.tracing: Tracing | None = None
        self.cloud: Cloud | None = None
        self.driver: Driver | None = None
        self.started_ns = 0
        self.drive_seconds = 0.0
        self.tokens: dict[str, str] = {}

    @property
    def ground_truth_path(self) -> Path:
        return self.data_dir / GROUND_TRUTH_FILE

    # -- start / stop ---------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.console.status("starting crosstrace serve and the cloud..."):
            tokens = write_auth_file(self.data_dir) if s.auth else {}
            self.backend = start_backend(
                self.data_dir, s.port, auth_file=self.data_dir / AUTH_FILE if s.auth else None
            )
            self.client = BackendClient(self.backend.url, token=tokens.get("demo-admin"))
            self.tracing = Tracing(
                self.backend.url,
                slow_threshold_s=s.timings.slow_threshold,
                token=tokens.get("demo-ingest"),
            )
            self.tokens = tokens
            cloud = Cloud(
                CloudConfig(
                    injector=self.injector,
                    ground_truth=self.ground_truth,
                    data_dir=self.data_dir,
                    broker_url=s.broker_url,
                    volume_db_url=s.volume_db_url,
                    timings=s.timings,
                ),
                kit_factory=self.tracing.kit,
            )
            try:
                cloud.start()
            except Exception as exc:
                raise DemoError(
                    f"the cloud could not start: {type(exc).__name__}: {exc}\n"
                    f"(RPC broker {_safe_url(s.broker_url)}, volume DB "
                    f"{_safe_url(s.volume_db_url or 'SQLite in the data dir')})"
                ) from exc
            self.cloud = cloud
        self.driver = Driver(
            self.cloud.compute_url,
            self.injector,
            self.ground_truth,
            concurrency=s.concurrency,
            timeout=s.timings.build_timeout + s.timings.scheduler_timeout + 30,
        )
        volume_db = s.volume_db_url or f"sqlite:///{self.data_dir / 'volume.sqlite3'}"
        self.console.print(f"[bold]web UI[/]    {self.backend.url}/  (errors now: open this first)")
        self.console.print(f"[bold]backend[/]   {self.backend.url}  (store in {self.data_dir})")
        if self.tokens:
            self.console.print(
                f"[bold]auth[/]      on: identities in {self.data_dir / AUTH_FILE}; tokens:"
            )
            for name, token in self.tokens.items():
                self.console.print(f"            {name}: {token}", markup=False, highlight=False)
            self.console.print(
                "            e.g. curl -H 'Authorization: Bearer <token>' "
                f"{self.backend.url}/api/v1/traces",
                markup=False,
                highlight=False,
            )
        self.console.print(f"[bold]cloud[/]     compute API {self.cloud.compute_url}")
        self.console.print(f"[bold]RPC[/]       {_safe_url(s.broker_url)}")
        self.console.print(f"[bold]volume DB[/] {_safe_url(volume_db)}")

    def stop(self) -> None:
        """Stop the cloud, flush tracing, stop the backend (each step best effort)."""
        if self.cloud is not None:
            self.cloud.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        if self.client is not None:
            self.client.close()
        if self.backend is not None:
            self.backend.stop()

    # -- the run --------------------------------------------------------------

    def drive(self) -> list[RequestOutcome]:
        """Send the planned boot requests with a progress bar."""
        if self.driver is None:
            raise RuntimeError("start() first")
        n = self.settings.requests
        plan = self.injector.plan(n)
        failed = 0
        self.started_ns = time.time_ns()
        start = time.perf_counter()
        with Progress(
            TextColumn("[bold]booting servers"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=self.console,
        ) as progress:
            task = progress.add_task("boot", total=n, failed=0)

            def done(outcome: RequestOutcome) -> None:
                nonlocal failed
                if not outcome.ok:
                    failed += 1
                progress.update(task, advance=1, failed=failed)

            outcomes = self.driver.run(plan, on_done=done)
        self.drive_seconds = time.perf_counter() - start
        self.ground_truth.write(self.ground_truth_path)
        return outcomes

    def verify(self) -> Verification:
        """Flush the exporters, then poll the backend until every trace is complete."""
        if self.client is None or self.tracing is None:
            raise RuntimeError("start() first")
        start = time.perf_counter()
        self.tracing.flush()
        checks = [RequestCheck(o) for o in self.ground_truth.outcomes()]
        pending = list(checks)
        deadline = time.monotonic() + self.settings.verify_timeout
        with self.console.status("waiting for the backend to hold every trace..."):
            while pending:
                for check in pending:
                    self._load(check)
                pending = [c for c in pending if not c.complete]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
                self.tracing.flush()
            # One more read of every trace: late error segments may have landed.
            for check in checks:
                self._load(check)
        since = _dt.datetime.fromtimestamp(self.started_ns / 1e9 - 1, _dt.UTC).isoformat()
        errors = sum(1 for _ in self.client.search(error="true", start=since))
        return Verification(checks, errors, time.perf_counter() - start)

    def _load(self, check: RequestCheck) -> None:
        if self.client is None:
            return
        try:
            found = self.client.request(check.outcome.global_request_id)
        except Exception as exc:
            log.debug("backend lookup failed: %s", exc)
            return
        traces = found.get("traces", [])
        check.trace_ids = [t["trace_id"] for t in traces]
        check.services = {svc for t in traces for svc in t["services"]}
        check.error_count = sum(int(t["error_count"]) for t in traces)
        check.span_count = sum(int(t["span_count"]) for t in traces)

    # -- summary --------------------------------------------------------------

    def summary(self, result: Verification) -> None:
        """Print what happened, what the backend holds, and where to look."""
        outcomes = [c.outcome for c in result.checks]
        n = len(outcomes)
        failed = [o for o in outcomes if not o.ok]
        slow_threshold = self.settings.timings.slow_threshold
        slow = [o for o in outcomes if o.latency_s is not None and o.latency_s > slow_threshold]
        latencies = sorted(o.latency_s for o in outcomes if o.latency_s is not None)
        console = self.console
        console.print()
        console.print(
            f"[bold]{n} boot requests[/] in {self.drive_seconds:.1f}s "
            f"(seed {self.settings.seed}): [green]{n - len(failed)} succeeded[/], "
            f"[red]{len(failed)} failed[/], [yellow]{len(slow)} slow[/] "
            f"(> {slow_threshold:g}s); latency p50 "
            f"{_ms(statistics.median(latencies) if latencies else 0)}, max "
            f"{_ms(latencies[-1] if latencies else 0)}"
        )
        table = Table(
            title="Boot requests by injected fault",
            caption="client: statuses the client got; stored: traces with errors in crosstrace",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("fault", no_wrap=True)
        table.add_column("n", justify="right")
        table.add_column("client", justify="right")
        table.add_column("failed", justify="right")
        table.add_column("stored", justify="right")
        table.add_column("root cause")
        by_kind: dict[FaultKind, list[RequestCheck]] = {}
        for check in result.checks:
            by_kind.setdefault(check.outcome.fault, []).append(check)
        rows: dict[str, dict[str, Any]] = {}
        for kind, spec in CATALOGUE.items():
            checks = by_kind.get(kind, [])
            statuses = Counter(c.outcome.status for c in checks)
            status_text = ",".join(
                f"{count}x{status if status is not None else '-'}"
                for status, count in statuses.most_common()
            )
            root = spec.root_cause
            cause = "-"
            if root is not None:
                cause = f"{root.service}: {root.error_type or 'slow'}"
            row = {
                "requests": len(checks),
                "statuses": {str(k): v for k, v in statuses.items()},
                "failed": sum(1 for c in checks if not c.outcome.ok),
                "error_traces": sum(1 for c in checks if c.has_error),
                "complete_traces": sum(1 for c in checks if c.complete),
            }
            rows[str(kind)] = row
            table.add_row(
                str(kind),
                str(row["requests"]),
                status_text or "-",
                str(row["failed"]),
                str(row["error_traces"]),
                cause,
            )
        console.print(table)
        scores = self.verdicts(result)
        groups = self._error_groups()
        self._print_verdicts(scores, groups)
        self._write_summary(result, rows, scores, groups)
        backend_errors = sum(1 for c in result.checks if c.has_error)
        console.print(
            f"backend: {sum(1 for c in result.checks if c.complete)}/{n} traces complete "
            f"(every service reached), {backend_errors} with errors; the error search "
            f"(/api/v1/traces?error=true) finds {result.error_traces_found} since the run began."
        )
        for check in result.incomplete[:5]:
            missing = sorted(F.SERVICES_REACHED[check.outcome.fault] - check.services)
            console.print(
                f"[red]incomplete[/] {check.outcome.global_request_id} "
                f"({check.outcome.fault}): {len(check.trace_ids)} trace(s), missing {missing}"
            )
        self._where_to_look(result)

    def verdicts(self, result: Verification) -> dict[FaultKind, KindScore]:
        """crosstrace's verdict on each boot request, scored against the truth."""
        client = self.client
        if client is None:
            return {}

        def analyse(trace_id: str, slow_s: float) -> dict[str, Any] | None:
            try:
                return client.analysis(trace_id, slow=f"{slow_s:g}s")
            except Exception as exc:
                log.debug("analysis of %s failed: %s", trace_id, exc)
                return None

        pairs = [
            (c.outcome, c.trace_ids[0] if len(c.trace_ids) == 1 else None) for c in result.checks
        ]
        with self.console.status("asking crosstrace why each request failed..."):
            return score_verdicts(pairs, analyse, self.settings.timings.slow_threshold)

    def _error_groups(self) -> int | None:
        """How many error groups the backend holds for the run."""
        if self.client is None:
            return None
        since = _dt.datetime.fromtimestamp(self.started_ns / 1e9 - 1, _dt.UTC).isoformat()
        try:
            return len(self.client.errors(start=since).get("groups", []))
        except Exception as exc:
            log.debug("error groups unavailable: %s", exc)
            return None

    def _print_verdicts(self, scores: dict[FaultKind, KindScore], groups: int | None) -> None:
        table = Table(
            title="Root cause: crosstrace's verdict beside the injected truth",
            caption="right: verdict and top candidate (service / operation) match the truth",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("injected", no_wrap=True)
        table.add_column("true root cause")
        table.add_column("crosstrace says (most often)")
        table.add_column("right", justify="right", no_wrap=True)
        table.add_column("groups", justify="right")
        for kind, score in scores.items():
            if not score.requests:
                continue
            top = score.answers.most_common(1)[0][0] if score.answers else "-"
            accuracy = score.accuracy or 0.0
            style = "green" if accuracy >= 0.95 else "red"
            table.add_row(
                f"{kind}",
                score.truth,
                top.replace("error: ", "", 1),
                f"[{style}]{score.right}/{score.requests} ({accuracy:.0%})[/]",
                str(len(score.groups)) if CATALOGUE[kind].is_failure else "-",
            )
        self.console.print(table)
        slow_clean = scores[FaultKind.NONE].slow_clean if FaultKind.NONE in scores else 0
        notes = []
        if slow_clean:
            notes.append(f"{slow_clean} clean request(s) slow from load alone are left out")
        if groups is not None:
            notes.append(f"the backend holds {groups} error group(s) for the run")
        if notes:
            self.console.print("; ".join(notes) + ".")

    def _write_summary(
        self,
        result: Verification,
        rows: dict[str, dict[str, Any]],
        scores: dict[FaultKind, KindScore] | None = None,
        groups: int | None = None,
    ) -> None:
        """The summary's figures as JSON (``summary.json``), for scripts."""
        outcomes = [c.outcome for c in result.checks]
        threshold = self.settings.timings.slow_threshold
        doc = {
            "seed": self.settings.seed,
            "requests": len(outcomes),
            "succeeded": sum(1 for o in outcomes if o.ok),
            "failed": sum(1 for o in outcomes if not o.ok),
            "slow": sum(1 for o in outcomes if (o.latency_s or 0) > threshold),
            "slow_threshold_s": threshold,
            "drive_seconds": round(self.drive_seconds, 3),
            "complete_traces": sum(1 for c in result.checks if c.complete),
            "error_traces": sum(1 for c in result.checks if c.has_error),
            "error_traces_found_by_search": result.error_traces_found,
            "by_fault": rows,
            "verdicts": {str(k): v.to_json() for k, v in (scores or {}).items()},
            "error_groups": groups,
            "backend_url": self.backend.url if self.backend else None,
            "ground_truth": str(self.ground_truth_path),
        }
        path = self.data_dir / SUMMARY_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def _where_to_look(self, result: Verification) -> None:
        if self.backend is None:
            return
        url = self.backend.url
        example = next(
            (
                c.outcome
                for c in result.checks
                if c.outcome.fault is FaultKind.VOLUME_DUPLICATE and c.has_error
            ),
            next((c.outcome for c in result.checks if not c.outcome.ok), None),
        )
        console = self.console
        console.print()
        console.print("[bold]Where to look[/]")
        console.print(f"  web UI            {url}/  (errors now, then one click to a root cause)")
        console.print(f"  failed traces     {url}/api/v1/traces?error=true")
        threshold = self.settings.timings.slow_threshold
        console.print(f"  slow traces       {url}/api/v1/traces?min_duration={threshold:g}s")
        tids: list[str] = []
        if example is not None:
            gid = example.global_request_id
            console.print(f"  one failed boot   ({example.fault}, traces and logs)")
            console.print(f"                    {url}/api/v1/requests/{gid}")
            tids = self.ground_truth.trace_ids(gid)
            console.print(f"                    {url}/requests/{gid}  (web UI)")
            if tids:
                console.print(f"  its trace         {url}/api/v1/traces/{tids[0]}")
                console.print(f"                    {url}/traces/{tids[0]}  (web UI)")
            console.print(f"  its logs          {url}/api/v1/logs?request_id={gid}")
        commands = cli_commands(
            url,
            example.global_request_id if example is not None else None,
            tids[0] if tids else None,
            min_duration=f"{threshold:g}s",
        )
        console.print(f"  services          {url}/api/v1/services")
        console.print(f"  call graph        {url}/api/v1/dependencies")
        console.print(f"  API reference     {url}/docs")
        console.print(f"  service logs      {self.data_dir / 'logs'}")
        console.print(f"  ground truth      {self.ground_truth_path}")
        console.print()
        console.print("[bold]From the command line[/]")
        flag = next((c.split(" --url ", 1)[1] for _, c in commands if " --url " in c), None)
        url_flag = f" --url {flag}" if flag else ""
        if tids:
            commands.append(("why it failed", f"crosstrace why {tids[0]}{url_flag}"))
        commands.append(("error groups", f"crosstrace errors{url_flag}"))
        for label, command in commands:
            console.print(f"  {label:<17} {command}", highlight=False, markup=False, soft_wrap=True)

    def trickle(self) -> None:
        """One boot every few seconds until Ctrl-C (KeyboardInterrupt)."""
        if self.driver is None:
            raise RuntimeError("start() first")
        self.console.print()
        self.console.print(
            f"Sending one boot request every {self.settings.trickle_interval:g}s; "
            "press Ctrl-C to stop."
        )
        while True:
            time.sleep(self.settings.trickle_interval)
            planned = self.injector.next_request()
            outcome = self.driver.boot(planned)
            self.console.print(
                f"  boot #{planned.index}: {outcome.status} "
                f"{'ok' if outcome.ok else outcome.error or ''} "
                f"[dim]({planned.fault}, {outcome.global_request_id})[/]",
                highlight=False,
            )
            self.ground_truth.write(self.ground_truth_path)


def cli_commands(
    url: str,
    global_request_id: str | None,
    trace_id: str | None,
    *,
    min_duration: str | None = None,
) -> list[tuple[str, str]]:
    """(label, command) pairs of the query commands for the summary.

    ``--url`` is added when *url* is not where the commands look by default."""
    from crosstrace.cli.query import DEFAULT_URL

    flag = "" if url.rstrip("/") == DEFAULT_URL else f" --url {url}"
    commands = [("failed traces", f"crosstrace traces --error{flag}")]
    if min_duration:
        commands.append(("slow traces", f"crosstrace traces --min-duration {min_duration}{flag}"))
    if global_request_id:
        commands.append(("one failed boot", f"crosstrace request {global_request_id}{flag}"))
    if trace_id:
        commands.append(("its trace", f"crosstrace trace {trace_id}{flag}"))
    return commands


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _safe_url(url: str) -> str:
    return mask_password(url)


def run(settings: DemoSettings, console: Console | None = None) -> int:
    """Run the demo; returns the exit status (0: every trace stored and complete)."""
    console = console or Console()
    demo = Demo(settings, console)
    status = 1
    try:
        demo.start()
        demo.drive()
        result = demo.verify()
        demo.ground_truth.write(demo.ground_truth_path)
        demo.summary(result)
        status = 0 if not result.incomplete else 1
        if not settings.once:
            demo.trickle()
    except KeyboardInterrupt:
        console.print("\nstopping...")
    finally:
        demo.stop()
    return status
