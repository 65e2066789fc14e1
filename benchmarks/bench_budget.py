"""Does the overhead budget hold when measured from outside the tracer?

Run from the repository root::

    .venv/bin/python benchmarks/bench_budget.py --window 10  # all cases, ~15 min
    .venv/bin/python benchmarks/bench_budget.py --quick      # shorter slices

Method (interleaved, same process, one core): the process is pinned to one CPU.
Two copies of the same instrumented service run side by side: one behind a
middleware with a tracer (budget B, every trace sampled, exporting OTLP/JSON
lines to a file through the real ``BatchExporter``), one behind the same
middleware with tracing off (request ids only; the service's ``span()`` calls
are no-ops). The benchmark alternates ~100 ms slices of each kind of request
and times each slice's CPU on the request thread (``time.thread_time``); the
export thread's CPU time (read from outside through its
``pthread_getcpuclockid`` clock) is added to the traced side. After a warm-up
in which the controller settles, the measured added CPU of a window is::

    median over slice pairs of (traced CPU - untraced CPU) / untraced CPU
      + export thread CPU / untraced CPU                    (same request count)

The median of the pairs, not the ratio of the window's sums: a slice now and
then takes 10-20 % more CPU for reasons outside the process (the host), and
those few slices move a sum by several points. Two copies of the untraced
service measured this way with 20 ms slices differed by at most 0.5 points
per 5 s window (standard deviation 0.16 over 8 windows), the sums by up to
7.5 points (standard deviation 3.6; 2026-11-30); with the 100 ms slices used
now (12 pairs in a 5 s window) the windows' standard deviation was 4.8
points, one window hit by the host at -13.6 % (2026-12-01): use windows of
10 s or more. The median of the pairs still holds what tracing adds to every
slice; a rare, large cost (a full garbage collection) falls into a few slices
only and is undercounted, which is why the sums are printed too.

Separate processes on this shared machine differ by +-20 %, which is why both
kinds run in one process, in alternating slices, on one core. The slices are
longer than the tracer's own alternating phases (~20 ms of CPU, see
``crosstrace.tracing.phases``), which read the process's CPU time: a slice of
the untraced copy inside a phase is work the tracer cannot tell from its
service's, and a phase that holds one takes too long to be compared. (A
service has no such copy beside it.)

Requests: ``light`` does ~50 us of CPU work and opens 5 spans, ``heavy``
~300 us and 20 spans; every span has 3 attributes. One request in 200 fails
(HTTP 500) and one in 2000 is slow (sleeps past the slow threshold, 5 ms,
does no extra CPU work and answers 203, never failing), so the table also
shows whether errors and slow requests are still exported when the budget
leaves little room (a request the host made slow is exported too, and not
counted). A sleep leaves the core idle and the requests after it cold, by a
different amount each time: with one in 500 sleeping 20 ms (until
2026-12-01), a light slice spent about half its time asleep, and two copies
of the untraced service read -2.0 to +3.8 points apart per 10 s window on a
noisy host, against -0.4 to +0.4 with no sleeps in the same session; one in
2000 sleeping 5 ms disturbs less. Servers: WSGI
(``crosstrace.wsgi.RequestIdMiddleware``) and ASGI
(``crosstrace.asgi.RequestIdMiddleware``, driven by a bare event loop).

What a request the budget leaves untraced still costs, and its steps one by
one, is measured by ``benchmarks/bench_floor.py`` with the same method.

Each measured window is one replicate, so a case's figure is the mean of its
``--repeats`` windows with a 95 % confidence interval (Student's t over the
windows), and its verdict says whether that interval lies within +-10 % of
the budget (``within``), wholly above (``over``) or below (``under``) the
band, or overlaps its edge (``can't tell``: more or longer windows, or a
quieter host, would decide). Before each server and request, two copies of
the service with tracing off are measured the same way (``method's error``):
what the method reads where nothing differs, which is how fine a figure this
host can resolve in this run (2026-12-01, 10 s windows: single windows
-0.32 to +0.27 points, the mean of five -0.16 +- 0.13 to +0.07 +- 0.15;
identical copies can sit a little apart for a whole run).

Printed per case: the budget, the measured added CPU (mean of the windows,
95 % interval, verdict), each window's figure and its figure from the sums,
the tracer's own estimate (``controller.last_fraction``, averaged over the same windows) and
its floor (``controller.last_floor``: with no request traced), what it measures
a traced request to cost, in place and from its phases (the whole; after the
last window), what it prices the untraced path at (in place, from its measured
untraced requests, and as calibration found it), the effective ratio, record
and traced fractions, and the share of failed / slow requests whose root span
reached the exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import crosstrace
from crosstrace.asgi import RequestIdMiddleware as AsgiMiddleware
from crosstrace.export import BatchExporter, FileTransport
from crosstrace.httpnames import ATTR_STATUS_CODE
from crosstrace.tracing import Tracer
from crosstrace.tracing.budget import GROUP_RECORDED
from crosstrace.tracing.plan import drop_plan
from crosstrace.wsgi import RequestIdMiddleware as WsgiMiddleware

ATTRS = {"db.system": "sqlite", "db.rows": 3, "cached": False}
SLOW_S = 0.005
ERROR_EVERY = 200
SLOW_EVERY = 2000
#: The status a slow request answers, so that its span is told from a request
#: the host made slow (descheduled past the threshold), which is exported too.
SLOW_STATUS = 203
KINDS = {"light": (50, 5), "heavy": (300, 20)}


# -- the instrumented service ----------------------------------------------------------


def _calibrate_work() -> float:
    """Loop iterations per microsecond of CPU on this machine."""
    n = 200_000
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time_ns()
        _spin(n)
        best = min(best, time.thread_time_ns() - t0)
    return n / (best / 1000)


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x ^= i
    return x


class Service:
    """The service's own code: CPU work split over its spans."""

    def __init__(
        self,
        work_us: int,
        spans: int,
        per_us: float,
        error_every: int = ERROR_EVERY,
        slow_every: int = SLOW_EVERY,
    ) -> None:
        self.spans = spans
        self.loops = max(1, int(work_us * per_us / spans))
        self.count = 0
        #: Failed and slow requests served.
        self.failed = self.slowed = 0
        self.error_every = error_every
        self.slow_every = slow_every

    def handle(self) -> tuple[int, bool]:
        """Do one request's work; returns (status, slow)."""
        self.count += 1
        n = self.count
        for _ in range(self.spans - 1):  # the server span is the first
            with crosstrace.span("db.query", attributes=ATTRS):
                _spin(self.loops)
        _spin(self.loops)
        # Halfway between two multiples, and odd: a slow request never fails.
        slow = n % self.slow_every == (self.slow_every // 2 + 1) % self.slow_every
        if slow:
            self.slowed += 1
            time.sleep(SLOW_S)
        if n % self.error_every == 0:
            self.failed += 1
            return 500, slow
        return (SLOW_STATUS if slow else 200), slow


def wsgi_app(service: Service) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status, _ = service.handle()
        start_response(f"{status} X", [("content-type", "text/plain")])
        return [b"ok"]

    return app


def asgi_app(service: Service) -> Callable[..., Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        status, _ = service.handle()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _environ(i: int) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": f"/v2.1/servers/{i}",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "HTTP_X_OPENSTACK_REQUEST_ID": "req-3f1e2d4c-5b6a-4789-8abc-def012345678",
    }


def _scope(i: int) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": f"/v2.1/servers/{i}",
        "headers": [(b"x-openstack-request-id", b"req-3f1e2d4c-5b6a-4789-8abc-def012345678")],
    }


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
    return None


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


# -- what reached the exporter -----------------------------------------------------------


class CountingFile(FileTransport):
    """The file transport, counting failed and slow local roots it writes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.errors = 0
        self.slow = 0

    def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
        for s in items:
            if getattr(s, "parent_id", 1) == 0:
                if s.status_code == 2:
                    self.errors += 1
                slow = s.end_ns - s.start_ns >= SLOW_S * 1e9
                if slow and s.attributes.get(ATTR_STATUS_CODE) == SLOW_STATUS:
                    self.slow += 1
        return super().encode(signal, items, resource)


def _thread_cpu_ns(thread: threading.Thread) -> int:
    ident = thread.ident
    if ident is None:
        return 0
    return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))


# -- one case -------------------------------------------------------------------------------


class Case:
    def __init__(
        self,
        server: str,
        kind: str,
        budget: float,
        per_us: float,
        path: str,
        error_every: int = ERROR_EVERY,
        slow_every: int = SLOW_EVERY,
    ) -> None:
        work_us, spans = KINDS[kind]
        self.server, self.kind, self.budget = server, kind, budget
        self.transport = CountingFile(path)
        self.exporter = BatchExporter(self.transport, queue_size=8192, max_delay_s=0.5)
        self.tracer = Tracer(
            f"bench-{server}-{kind}",
            self.exporter,
            sample_ratio=1.0,
            overhead_budget=budget,
            slow_threshold_s=SLOW_S,
        )
        #: Whether the traced side is traced (else it is a second copy with
        #: tracing off: the method's error, see :meth:`untraced_twin`).
        self.traced = True
        self.traced_service = Service(work_us, spans, per_us, error_every, slow_every)
        self.plain_service = Service(work_us, spans, per_us, error_every, slow_every)
        if server == "wsgi":
            traced = WsgiMiddleware(wsgi_app(self.traced_service), tracer=self.tracer)
            #: The application behind the middleware with tracing off.
            self.plain: Any = WsgiMiddleware(wsgi_app(self.plain_service))
            self.run_traced = self._wsgi_runner(traced)
            self.run_plain = self._wsgi_runner(self.plain)
        else:
            loop = asyncio.new_event_loop()
            self.loop = loop
            traced_a = AsgiMiddleware(asgi_app(self.traced_service), tracer=self.tracer)
            self.plain = AsgiMiddleware(asgi_app(self.plain_service))
            self.run_traced = self._asgi_runner(traced_a)
            self.run_plain = self._asgi_runner(self.plain)

    def skip_every_request(self, measure_some: bool = True) -> None:
        """No budget to hold: the traced side runs every request untraced,
        measuring one in 32, as the tracer does until it paces them (or none:
        its own timing left out)."""
        self.tracer.controller = None
        self.tracer.trace_threshold = 0
        self.tracer.costs.follow(0.0)
        if not measure_some:
            self.tracer.accounting.mask = (1 << 62) - 1
        drop_plan(self.tracer)  # planned under the old settings

    def untraced_twin(self) -> None:
        """Make the traced side a second copy of the service with tracing off
        (the method's own error: both sides are the same)."""
        self.skip_every_request()
        self.traced = False
        if self.server == "wsgi":
            self.run_traced = self._wsgi_runner(WsgiMiddleware(wsgi_app(self.traced_service)))
        else:
            self.run_traced = self._asgi_runner(AsgiMiddleware(asgi_app(self.traced_service)))

    @staticmethod
    def _wsgi_runner(app: Any) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                for _ in app(_environ(i), _start_response):
                    pass

        return run

    def _asgi_runner(self, app: Any) -> Callable[[int], None]:
        async def many(n: int) -> None:
            for i in range(n):
                await app(_scope(i), _receive, _send)

        def run(n: int) -> None:
            self.loop.run_until_complete(many(n))

        return run

    def slice_size(self, slice_s: float) -> int:
        """Requests in a slice of *slice_s* seconds (timed warm, on both sides)."""
        self.run_plain(50)
        self.run_traced(50)
        t0 = time.perf_counter()
        self.run_plain(200)
        self.run_traced(200)
        per = (time.perf_counter() - t0) / 400
        return max(1, int(slice_s / per))

    def measure(self, seconds: float, n: int) -> dict[str, float]:
        """Alternate slices for *seconds*; CPU per side and the tracer's view."""
        cpu_t = cpu_p = 0
        reqs = 0
        pairs: list[float] = []
        export0 = _thread_cpu_ns(self.exporter._thread)
        estimates: list[float] = []
        floors: list[float] = []
        ctl = self.tracer.controller
        last_tick = ctl.next_tick_ns if ctl is not None else 0
        end = time.monotonic() + seconds
        flip = False
        while time.monotonic() < end:
            flip = not flip
            cpu = [0, 0]
            for traced in (flip, not flip):  # alternate which goes first
                t0 = time.thread_time_ns()
                (self.run_traced if traced else self.run_plain)(n)
                cpu[traced] = time.thread_time_ns() - t0
            cpu_p += cpu[False]
            cpu_t += cpu[True]
            pairs.append((cpu[True] - cpu[False]) / cpu[False])
            reqs += n
            if ctl is not None and ctl.next_tick_ns != last_tick:
                last_tick = ctl.next_tick_ns
                estimates.append(ctl.last_fraction)
                floors.append(ctl.last_floor)
        export = _thread_cpu_ns(self.exporter._thread) - export0 if self.traced else 0
        costs = self.tracer.costs
        off, rec = costs.off_ns(), costs.measured(GROUP_RECORDED)
        whole = costs.phases.per_trace()
        return {
            "in_place": rec - off if rec is not None and off is not None else float("nan"),
            "whole": whole if whole is not None else float("nan"),
            "added": statistics.median(pairs) + export / cpu_p,
            "added_mean": (cpu_t + export - cpu_p) / cpu_p,
            "export_share": export / cpu_p,
            "estimate": statistics.fmean(estimates) if estimates else float("nan"),
            "floor": statistics.fmean(floors) if floors else float("nan"),
            "ratio": self.tracer.effective_ratio,
            "record": self.tracer.record_fraction,
            "traced": ctl.trace_fraction if ctl is not None else 1.0,
            "reqs": reqs,
        }

    def close(self) -> None:
        self.exporter.shutdown(5.0)
        if self.server == "asgi":
            self.loop.close()


# Student's t, two-sided 95 %, by degrees of freedom (the nearest lower one
# listed is used; 1.96 past the table).
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04, 60: 2.00}  # fmt: skip


def interval(values: Sequence[float]) -> tuple[float, float]:
    """The mean of *values* (independent replicates) and the half-width of
    its 95 % confidence interval (``inf`` with fewer than two)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("inf")
    df = len(values) - 1
    t = _T95[max(k for k in _T95 if k <= df)] if df <= max(_T95) else 1.96
    return mean, t * statistics.stdev(values) / len(values) ** 0.5


def verdict(budget: float, mean: float, half: float) -> str:
    """Whether the interval ``mean +- half`` lies within +-10 % of *budget*."""
    low, high = mean - half, mean + half
    if 0.9 * budget <= low and high <= 1.1 * budget:
        return "within"
    if low > 1.1 * budget:
        return "over"
    if high < 0.9 * budget:
        return "under"
    return "can't tell"


def run_case(
    server: str,
    kind: str,
    budget: float,
    args: argparse.Namespace,
    per_us: float,
    path: str,
    twin: bool = False,
) -> dict[str, Any]:
    """One case: a warm-up, then ``--repeats`` windows; with *twin*, the
    traced side is a second copy with tracing off (the method's error)."""
    case = Case(server, kind, budget, per_us, path)
    if twin:
        case.untraced_twin()
    n = case.slice_size(args.slice_ms / 1000)
    case.measure(min(args.warmup, 2.0) if twin else args.warmup, n)  # no controller to settle
    windows = [case.measure(args.window, n) for _ in range(args.repeats)]
    case.exporter.force_flush(5.0)
    mean, half = interval([w["added"] for w in windows])
    out = {
        "server": server,
        "kind": kind,
        "budget": budget,
        "added": mean,
        "half": half,
        "verdict": "—" if twin else verdict(budget, mean, half),
        "added_all": [w["added"] for w in windows],
        "added_mean_all": [w["added_mean"] for w in windows],
        "export_share": statistics.median(w["export_share"] for w in windows),
        "estimate": statistics.median(w["estimate"] for w in windows),
        "floor": statistics.median(w["floor"] for w in windows),
        "in_place": windows[-1]["in_place"],
        "whole": windows[-1]["whole"],
        "ratio": windows[-1]["ratio"],
        "record": windows[-1]["record"],
        "traced": windows[-1]["traced"],
        "errors_kept": case.transport.errors / max(1, case.traced_service.failed),
        "slow_kept": case.transport.slow / max(1, case.traced_service.slowed),
        "calibrations": case.tracer.costs.calibrations,
        "path_ns": case.tracer.costs.skipped_ns(),
        "path_calibrated_ns": case.tracer.costs.bypass_ns,
    }
    case.close()
    return out


def _slice_pairs(
    run_a: Callable[[int], None], run_b: Callable[[int], None], n: int, seconds: float
) -> tuple[float, float, int]:
    """Alternate slices of *n* requests of *a* and *b* (which goes first
    alternating) for *seconds*: the median and mean per-request CPU of *a*
    over *b* (ns), and the pairs measured."""
    diffs: list[float] = []
    total_a = total_b = 0
    end = time.monotonic() + seconds
    flip = False
    while time.monotonic() < end:
        flip = not flip
        cpu = {}
        for first in (flip, not flip):
            t0 = time.thread_time_ns()
            (run_a if first else run_b)(n)
            cpu[first] = time.thread_time_ns() - t0
        diffs.append((cpu[True] - cpu[False]) / n)
        total_a += cpu[True]
        total_b += cpu[False]
    return statistics.median(diffs), (total_a - total_b) / (n * len(diffs)), len(diffs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="wsgi,asgi")
    p.add_argument("--kinds", default="light,heavy")
    p.add_argument("--budgets", default="0.01,0.02,0.10")
    p.add_argument("--warmup", type=float, default=6.0, help="seconds before measuring")
    p.add_argument("--window", type=float, default=4.0, help="seconds per measured window")
    p.add_argument("--repeats", type=int, default=5, help="measured windows per case")
    p.add_argument("--slice-ms", type=float, default=100.0)
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    p.add_argument("--quick", action="store_true", help="warm-up 3 s, windows of 2 s")
    p.add_argument(
        "--no-twins",
        dest="twins",
        action="store_false",
        help="skip the method's error (two copies with tracing off) before each request kind",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.window = 3.0, 2.0
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    per_us = _calibrate_work()
    print(
        f"# bench_budget  {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  "
        f"python {platform.python_version()}  pinned to cpu {cpu}  "
        f"load {os.getloadavg()[0]:.1f}  ({os.cpu_count()} cpus, shared)"
    )
    print(
        "| server | request | budget | measured added CPU (mean of windows, 95 % interval) | "
        "verdict | windows | "
        "windows, from the sums | tracer's estimate | tracer's floor | export thread | "
        "traced request, in place / whole (µs) | untraced path, in place / calibrated (ns) | "
        "eff. ratio | record fraction | traced fraction | errors exported | slow exported |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for server in args.servers.split(","):
            for kind in args.kinds.split(","):
                budgets = [float(b) for b in args.budgets.split(",")]
                for budget in ([None] if args.twins else []) + budgets:
                    path = os.path.join(tmp, f"{server}-{kind}-{budget}.jsonl")
                    twin = budget is None
                    r = run_case(server, kind, budget or 0.0, args, per_us, path, twin)
                    windows = " ".join(f"{a * 100:.2f}" for a in r["added_all"])
                    sums = " ".join(f"{a * 100:.2f}" for a in r["added_mean_all"])
                    if twin:
                        print(
                            f"| {server} | {kind} | method's error (tracing off on both "
                            f"sides) | {r['added'] * 100:+.2f} ± {r['half'] * 100:.2f} % | — | "
                            f"{windows} | {sums} |" + " — |" * 10,
                            flush=True,
                        )
                        continue  # nothing was exported: no file
                    print(
                        f"| {server} | {kind} | {budget * 100:g} % | "
                        f"{r['added'] * 100:+.2f} ± {r['half'] * 100:.2f} % | {r['verdict']} | "
                        f"{windows} | {sums} | "
                        f"{r['estimate'] * 100:.2f} % | {r['floor'] * 100:.2f} % | "
                        f"{r['export_share'] * 100:.2f} % | "
                        f"{r['in_place'] / 1000:.1f} / {r['whole'] / 1000:.1f} | "
                        f"{r['path_ns']:.0f} / {r['path_calibrated_ns']:.0f} | "
                        f"{r['ratio']:.3f} | {r['record']:.3f} | {r['traced']:.3f} | "
                        f"{r['errors_kept'] * 100:.0f} % | {r['slow_kept'] * 100:.0f} % |",
                        flush=True,
                    )
                    os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
