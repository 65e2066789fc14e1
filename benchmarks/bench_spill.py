"""What a traced request leaves the requests after it, and what the phases see of it.

Run from the repository root::

    .venv/bin/python benchmarks/bench_spill.py                 # heavy request, 20 % traced
    .venv/bin/python benchmarks/bench_spill.py --kind light --fraction 0.2

The service and the two copies of it (traced, tracing off) are those of
``benchmarks/bench_budget.py``, with no failures or slow requests. The
budget's controller is taken out and the traced fraction fixed, so that
nothing moves while it runs; the traced copy's traces are recorded and
dropped (as under a small budget). The process is pinned to one CPU.

Two tables, each from blocks of ~400 requests of the traced copy followed by
as many of the copy with tracing off, every request's CPU time on the request
thread read around it (``time.thread_time_ns``; both copies pay those reads):

1. *After a traced request*: the traced requests, and the untraced ones by
   how many requests after the last traced one they came, each as its extra
   CPU over the copy with tracing off (median and mean), then the added CPU
   per request of the whole traced copy and what that makes per traced
   request. The tracer's own phases run as usual.
2. *Along an untraced phase*: the tracer's untraced phases made long
   (``--untraced-ms``), their requests by their position in the phase, in
   bins: how long what the traced phase before leaves lasts.

``--settle N`` sets how many requests at the start of an untraced phase are
measured with the traced phase before it (the tracer's
``SETTLE_REQUESTS``), to see what the phases' figure makes of a longer one.

Last, what the tracer's phases measured a traced request to cost (their
figure) beside the per-request figure of table 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_budget as bb
import crosstrace.tracing.phases as phases_module
from crosstrace.tracing.plan import TRACE_ALL, drop_plan
from crosstrace.wsgi import RequestIdMiddleware

NEVER = 1 << 62
BLOCK = 400


def _case(kind: str, fraction: float, path: str, per_us: float) -> bb.Case:
    case = bb.Case("wsgi", kind, 0.0, per_us, path, NEVER, NEVER)
    t = case.tracer
    t.controller = None
    t.trace_threshold = int(fraction * TRACE_ALL)
    t.costs.follow(fraction)
    t.threshold = 0  # recorded, not kept: as under a small budget
    drop_plan(t)
    return case


def _timed(app: Any) -> int:
    environ = bb._environ(0)
    t0 = time.thread_time_ns()
    for _ in app(environ, bb._start_response):
        pass
    return time.thread_time_ns() - t0


def _traced_app(case: bb.Case) -> Any:
    return RequestIdMiddleware(bb.wsgi_app(case.traced_service), tracer=case.tracer)


def after_traced(kind: str, fraction: float, seconds: float, per_us: float, tmp: str) -> None:
    case = _case(kind, fraction, os.path.join(tmp, "after.jsonl"), per_us)
    traced_app, acct = _traced_app(case), case.tracer.accounting
    for _ in range(2_000):  # warm-up
        _timed(traced_app)
        _timed(case.plain)
    traced: list[int] = []
    after: dict[int, list[int]] = defaultdict(list)
    plain: list[int] = []
    since = NEVER
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(BLOCK):
            roots = acct.roots
            cpu = _timed(traced_app)
            if acct.roots != roots:
                traced.append(cpu)
                since = 0
            else:
                since += 1
                after[min(since, 12)].append(cpu)
        plain.extend(_timed(case.plain) for _ in range(BLOCK))
    med, mean = statistics.median(plain), statistics.fmean(plain)
    print(f"\n{kind} request, traced fraction {fraction} (planned), {seconds:.0f} s")
    print("| request | extra CPU over tracing off, median / mean (ns) | requests |")
    print("|---|---|---|")
    print(
        f"| traced | {statistics.median(traced) - med:,.0f} / "
        f"{statistics.fmean(traced) - mean:,.0f} | {len(traced)} |"
    )
    for k in sorted(after):
        v = after[k]
        label = f"untraced, {k} after a traced one" if k < 12 else "untraced, 12 or more after"
        print(
            f"| {label} | {statistics.median(v) - med:,.0f} / "
            f"{statistics.fmean(v) - mean:,.0f} | {len(v)} |"
        )
    count = len(traced) + sum(len(v) for v in after.values())
    total = sum(traced) + sum(sum(v) for v in after.values())
    added = total / count - mean
    share = len(traced) / count
    whole = case.tracer.costs.phases.per_trace()
    figure = "none yet" if whole is None else f"{whole:,.0f} ns"
    print(
        f"\nadded CPU per request {added:,.0f} ns ({added / mean:.2%}), traced share "
        f"{share:.3f}: {added / share:,.0f} ns per traced request, all told; the "
        f"phases' figure {figure}"
    )
    case.close()


def along_untraced(
    kind: str, fraction: float, seconds: float, untraced_ms: float, per_us: float, tmp: str
) -> None:
    saved = phases_module.UNTRACED_NS
    phases_module.UNTRACED_NS = int(untraced_ms * 1e6)
    try:
        case = _case(kind, fraction, os.path.join(tmp, "along.jsonl"), per_us)
        traced_app, phases = _traced_app(case), case.tracer.costs.phases
        for _ in range(2_000):
            _timed(traced_app)
            _timed(case.plain)
        bins: dict[int, list[int]] = defaultdict(list)
        plain: list[int] = []
        position = 0
        width = 10
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(BLOCK):
                untraced = phases.untraced
                cpu = _timed(traced_app)
                if untraced:
                    bins[position // width].append(cpu)
                    position += 1
                else:
                    position = 0
            plain.extend(_timed(case.plain) for _ in range(BLOCK))
        mean = statistics.fmean(plain)
        print(
            f"\n{kind} request, traced fraction {fraction}, untraced phases of "
            f"{untraced_ms:g} ms, {seconds:.0f} s"
        )
        print("| requests into the untraced phase | extra CPU over tracing off, mean (ns) | n |")
        print("|---|---|---|")
        for b in sorted(bins):
            v = bins[b]
            if len(v) >= 100:
                extra = statistics.fmean(v) - mean
                print(f"| {b * width}-{b * width + width - 1} | {extra:,.0f} | {len(v)} |")
        case.close()
    finally:
        phases_module.UNTRACED_NS = saved


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="heavy", choices=sorted(bb.KINDS))
    p.add_argument("--fraction", type=float, default=0.2, help="planned traced fraction, >0")
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--untraced-ms", type=float, default=40.0)
    p.add_argument(
        "--settle",
        type=int,
        default=None,
        help="settling requests at the start of an untraced phase (default: the tracer's)",
    )
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    args = p.parse_args(argv)
    if not 0.0 < args.fraction <= 1.0:
        p.error("--fraction must be above 0 and at most 1 (what follows a traced request)")
    if args.settle is not None:
        if args.settle < 0:
            p.error("--settle must be 0 or more")
        phases_module.SETTLE_REQUESTS = args.settle
    cpu = args.cpu if args.cpu is not None else (os.cpu_count() or 1) - 1
    os.sched_setaffinity(0, {cpu})
    per_us = bb._calibrate_work()
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# bench_spill  {now}  pinned to cpu {cpu}")
    with tempfile.TemporaryDirectory() as tmp:
        after_traced(args.kind, args.fraction, args.seconds, per_us, tmp)
        along_untraced(args.kind, args.fraction, args.seconds, args.untraced_ms, per_us, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
