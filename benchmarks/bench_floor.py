"""What a request the overhead budget leaves untraced still costs, in place.

Run from the repository root::

    .venv/bin/python benchmarks/bench_floor.py            # the untraced path, four cases
    .venv/bin/python benchmarks/bench_floor.py --pieces   # its steps, in place and in a loop

The service, its two copies (traced, tracing off) and the interleaved,
same-process method are those of ``benchmarks/bench_budget.py``; here the
traced copy's tracer leaves every request untraced.

Without ``--pieces``: what a request the budget leaves untraced still costs
(the traced service with every request skipped, against the same service
with tracing off), per request, as the median and mean of the per-slice-pair
differences: with the usual failures and slow requests, without them, with
every request failing (its server span exported after the fact), and two
copies of the untraced service (the method's own error). Beside it, what the
tracer prices the untraced path at in place over the same requests
(``CostModel.skipped_ns``, from the requests it measured; what it
prices them at, not the failures' spans): the figure from outside in the
case without failures is what that price should read.

With ``--pieces``: the untraced path taken apart (WSGI). Wrappers around the
middleware with tracing off add its steps one by one (a function call, the
skip decision, the two clock reads of the slow check, the request's context
marked untraced), each timed in place against the bare middleware by the
same interleaved slices, beside what the step costs in a loop of its own;
last, the whole untraced path.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_budget import (
    ERROR_EVERY,
    KINDS,
    SLOW_EVERY,
    Case,
    Service,
    _calibrate_work,
    _slice_pairs,
    asgi_app,
    wsgi_app,
)
from crosstrace.asgi import RequestIdMiddleware as AsgiMiddleware
from crosstrace.context import RequestContext
from crosstrace.tracing import Tracer
from crosstrace.tracing.spans import get_current_span
from crosstrace.wsgi import RequestIdMiddleware as WsgiMiddleware

FLOOR_CASES = (
    ("untraced path, failures and slow requests included", ERROR_EVERY, SLOW_EVERY, False),
    ("untraced path, no failures or slow requests", 1 << 62, 1 << 62, False),
    ("every request failing (server span exported after the fact)", 1, 1 << 62, False),
    ("two copies of the service with tracing off (the method's error)", 1 << 62, 1 << 62, True),
)


def floor_table(args: argparse.Namespace, per_us: float, tmp: str) -> None:
    """The untraced path's cost in place (see the module docstring)."""
    seconds = args.window * args.repeats
    print(
        "| server | request | case | median ns/request | mean ns/request | slice pairs | "
        "tracer's price in place, ns |"
    )
    print("|---|---|---|---|---|---|---|")
    for server in args.servers.split(","):
        for kind in args.kinds.split(","):
            for i, (label, error_every, slow_every, plain) in enumerate(FLOOR_CASES):
                path = os.path.join(tmp, f"floor-{server}-{kind}-{i}.jsonl")
                case = Case(server, kind, 0.0, per_us, path, error_every, slow_every)
                case.skip_every_request()
                if plain:
                    other = Service(*KINDS[kind], per_us, error_every, slow_every)
                    if server == "wsgi":
                        case.run_traced = case._wsgi_runner(WsgiMiddleware(wsgi_app(other)))
                    else:
                        asgi = AsgiMiddleware(asgi_app(other))
                        case.run_traced = case._asgi_runner(asgi)
                n = case.slice_size(args.slice_ms / 1000)
                _slice_pairs(case.run_traced, case.run_plain, n, min(2.0, seconds))  # warm-up
                # Measure as many untraced requests as the tracer would after a
                # window of this many (the warm-up's, about two seconds' worth).
                case.tracer.costs.fold(case.tracer.accounting)
                med, mean, pairs = _slice_pairs(case.run_traced, case.run_plain, n, seconds)
                costs = case.tracer.costs
                costs.fold(case.tracer.accounting)
                priced = "—" if plain or costs._floor is None else f"{costs.skipped_ns():,.0f}"
                print(
                    f"| {server} | {kind} | {label} | {med:,.0f} | {mean:,.0f} | {pairs} | "
                    f"{priced} |",
                    flush=True,
                )
                case.close()


def _pieces(tracer: Tracer, plain: Any) -> dict[str, tuple[Callable[[], Any], Any]]:
    """Steps of the untraced path, each as a loop body and as a WSGI app: a
    wrapper around *plain* (the middleware with tracing off) doing the step
    and the steps above it."""
    context = RequestContext()

    def decide() -> int:
        left = tracer.skips_left
        if left:
            tracer.skips_left = left - 1
            return 1
        return tracer.skip_request()

    def mark() -> None:
        context.untraced = True
        if get_current_span() is not None:
            raise AssertionError("no span is current here")

    def wrapper(environ: Any, sr: Any) -> Any:
        return plain(environ, sr)

    def decision(environ: Any, sr: Any) -> Any:
        decide()
        return plain(environ, sr)

    def clocks(environ: Any, sr: Any) -> Any:
        decide()
        start = time.time_ns()
        body = plain(environ, sr)
        _ = time.time_ns() - start >= tracer.slow_ns > 0
        return body

    def marked(environ: Any, sr: Any) -> Any:
        decide()
        start = time.time_ns()
        mark()
        body = plain(environ, sr)
        _ = time.time_ns() - start >= tracer.slow_ns > 0
        return body

    return {
        "a wrapper function": (lambda: None, wrapper),
        "+ the skip decision (the budget's countdown)": (decide, decision),
        "+ two clock reads (`time_ns`, the slow check)": (time.time_ns, clocks),
        "+ the request marked untraced (its context; no current span)": (mark, marked),
    }


def _loop_ns(body: Callable[[], Any], loops: int = 200_000) -> float:
    """CPU per call of *body* in a loop of its own (ns)."""
    t0 = time.thread_time_ns()
    for _ in range(loops):
        body()
    return (time.thread_time_ns() - t0) / loops


def pieces_table(args: argparse.Namespace, per_us: float, tmp: str) -> None:
    """What each step of the untraced path costs in place (between requests of
    real work) against in a loop, WSGI (see the module docstring)."""
    seconds = args.window * args.repeats
    print(
        "| request | step | in place, median / mean ns per request | in a loop, ns | slice pairs |"
    )
    print("|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        never = 1 << 62  # no failures or slow requests: nothing exported after the fact
        path = os.path.join(tmp, f"pieces-{kind}.jsonl")
        case = Case("wsgi", kind, 0.0, per_us, path, never, never)
        case.skip_every_request(measure_some=False)
        n = case.slice_size(args.slice_ms / 1000)
        steps: list[tuple[str, tuple[Callable[[], Any] | None, Any]]]
        steps = list(_pieces(case.tracer, case.plain).items())
        steps.append(("the whole untraced path (the middleware itself)", (None, None)))
        for label, (body, app) in steps:
            run = case.run_traced if app is None else case._wsgi_runner(app)
            _slice_pairs(run, case.run_plain, n, min(2.0, seconds))  # warm-up
            med, mean, pairs = _slice_pairs(run, case.run_plain, n, seconds)
            shown = "—" if body is None else f"{_loop_ns(body):.0f}"
            print(
                f"| {kind} | {label} | {med:,.0f} / {mean:,.0f} | {shown} | {pairs} |",
                flush=True,
            )
        case.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="wsgi,asgi")
    p.add_argument("--kinds", default="light,heavy")
    p.add_argument("--window", type=float, default=4.0, help="seconds per measured window")
    p.add_argument("--repeats", type=int, default=3, help="windows (a case runs window x repeats)")
    p.add_argument("--slice-ms", type=float, default=100.0)
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    p.add_argument(
        "--pieces",
        action="store_true",
        help="the untraced path's steps in place against in a loop (WSGI)",
    )
    args = p.parse_args(argv)
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    per_us = _calibrate_work()
    print(
        f"# bench_floor  {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  "
        f"python {platform.python_version()}  pinned to cpu {cpu}  "
        f"load {os.getloadavg()[0]:.1f}  ({os.cpu_count()} cpus, shared)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        (pieces_table if args.pieces else floor_table)(args, per_us, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
