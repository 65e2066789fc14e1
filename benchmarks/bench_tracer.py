"""Tracer benchmark: crosstrace vs the OpenTelemetry Python SDK, in one run.

Run from the repository root (needs the ``bench`` extra)::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_tracer.py            # all parts
    .venv/bin/python benchmarks/bench_tracer.py --quick    # fewer repeats

Parts:

1. ``recorded``: span start+end with 3 attributes, recorded and handed to a
   batching exporter whose transport discards. crosstrace: ratio 1, no budget,
   :class:`~crosstrace.export.BatchExporter`. OpenTelemetry SDK: ``ALWAYS_ON``
   sampler, ``BatchSpanProcessor`` with an exporter that discards. Measured as
   a one-span trace and as a ten-span trace (a root and nine children, per span).
   Runs alternate between the two tracers; medians of the repeats are reported.
2. ``unsampled``: a span opened inside a trace that is neither sampled nor
   recorded (crosstrace: ratio 0 and record fraction 0; SDK: ``ParentBased
   (ALWAYS_OFF)``), plus crosstrace unconfigured.
3. ``budget``: a steady synthetic load (each request: ~2 ms of CPU work, one
   SERVER span and five children with 3 attributes; every kept span is encoded
   as OTLP protobuf + gzip, then discarded). Blocks of tracing off and on
   alternate; the measured overhead is ``(cpu/request traced - cpu/request
   untraced) / cpu/request traced`` from ``time.process_time`` (all threads,
   export thread included), median over the blocks, after the controller has
   settled. Reported for each budget setting, with the effective ratio and
   record fraction the controller chose, and without a budget for reference.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import crosstrace
from crosstrace import config
from crosstrace.export import BatchExporter, OtlpHttpTransport, Transport
from crosstrace.tracing import tracer as tr

#: Export queue bound on both sides, large enough that neither drops spans.
QUEUE = 65536
ATTRS = {"http.request.method": "GET", "http.response.status_code": 200, "cached": False}


class DiscardTransport(Transport):
    """Encodes nothing, sends nothing (the SDK side uses an exporter that discards)."""

    def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
        return b""

    def send(self, signal: str, payload: bytes) -> None:
        return None


class EncodeThenDiscard(Transport):
    """Real OTLP protobuf + gzip encoding, then discard: the export CPU is real."""

    def __init__(self) -> None:
        self._otlp = OtlpHttpTransport("http://127.0.0.1:9")

    def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
        return self._otlp.encode(signal, items, resource)

    def send(self, signal: str, payload: bytes) -> None:
        return None


def otel_tracers() -> tuple[Any, Any, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    on = TracerProvider(sampler=ALWAYS_ON)
    on.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=QUEUE))
    off = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    off.add_span_processor(BatchSpanProcessor(Discard()))
    return on.get_tracer("bench"), off.get_tracer("bench"), (on, off)


def per_op(fn: Callable[[int], None], n: int) -> float:
    """Nanoseconds per operation of ``fn(n)``."""
    t0 = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t0) / n


# -- workloads -----------------------------------------------------------------------------


def ct_one_span(n: int) -> None:
    span = crosstrace.span
    for _ in range(n):
        with span("op", attributes=ATTRS):
            pass


def ct_ten_spans(n: int) -> None:
    span = crosstrace.span
    for _ in range(n // 10):
        with span("root", attributes=ATTRS):
            for _ in range(9):
                with span("child", attributes=ATTRS):
                    pass


def make_otel_one(t: Any) -> Callable[[int], None]:
    def run(n: int) -> None:
        start = t.start_as_current_span
        for _ in range(n):
            with start("op", attributes=ATTRS):
                pass

    return run


def make_otel_ten(t: Any) -> Callable[[int], None]:
    def run(n: int) -> None:
        start = t.start_as_current_span
        for _ in range(n // 10):
            with start("root", attributes=ATTRS):
                for _ in range(9):
                    with start("child", attributes=ATTRS):
                        pass

    return run


def ct_child_in_unrecorded(n: int) -> None:
    span = crosstrace.span
    with span("root"):
        for _ in range(n):
            with span("child", attributes=ATTRS):
                pass


def make_otel_child_unsampled(t: Any) -> Callable[[int], None]:
    def run(n: int) -> None:
        start = t.start_as_current_span
        with start("root"):
            for _ in range(n):
                with start("child", attributes=ATTRS):
                    pass

    return run


def empty_loop(n: int) -> None:
    for _ in range(n):
        pass


# -- parts ---------------------------------------------------------------------------------


def configure_recording() -> BatchExporter:
    crosstrace.configure(
        service_name="bench",
        transport=DiscardTransport(),
        sample_ratio=1.0,
        overhead_budget=0,
        slow_threshold=0,
        queue_size=QUEUE,
    )
    exporter = crosstrace.export.active()
    assert exporter is not None
    return exporter


def bench_recorded(repeats: int, n: int) -> dict[str, float]:
    otel_on, _, _ = otel_tracers()
    exporter = configure_recording()
    runs: dict[str, list[float]] = {k: [] for k in ("ct1", "ot1", "ct10", "ot10")}
    warm = max(1000, n // 10)
    ct_one_span(warm)
    make_otel_one(otel_on)(warm)
    for _ in range(repeats):
        runs["ct1"].append(per_op(ct_one_span, n))
        runs["ot1"].append(per_op(make_otel_one(otel_on), n))
        runs["ct10"].append(per_op(ct_ten_spans, n))
        runs["ot10"].append(per_op(make_otel_ten(otel_on), n))
    exporter.force_flush(10)
    stats = exporter.stats()
    config.shutdown()
    out = {k: statistics.median(v) for k, v in runs.items()}
    out["ct_dropped_share"] = stats["spans_dropped"] / max(
        1, stats["spans_dropped"] + stats["spans_queued"]
    )
    return out


def bench_unsampled(repeats: int, n: int) -> dict[str, float]:
    _, otel_off, _ = otel_tracers()
    t = crosstrace.configure(
        service_name="bench", transport="none", sample_ratio=0.0, overhead_budget=0
    )
    t.record_threshold = 0  # record nothing: the head-dropped, unrecorded case
    runs: dict[str, list[float]] = {k: [] for k in ("ct", "ot", "empty", "unconf")}
    ct_child_in_unrecorded(n)
    for _ in range(repeats):
        runs["ct"].append(per_op(ct_child_in_unrecorded, n))
        runs["ot"].append(per_op(make_otel_child_unsampled(otel_off), n))
        runs["empty"].append(per_op(empty_loop, n))
    config.shutdown()
    for _ in range(repeats):
        runs["unconf"].append(per_op(ct_one_span, n))
    return {k: statistics.median(v) for k, v in runs.items()}


_WORK = 0


def calibrate_work(target_s: float) -> int:
    n = 10000
    while True:
        t0 = time.process_time()
        busy(n)
        dt = time.process_time() - t0
        if dt > 0.05:
            return max(1, int(n * target_s / dt))
        n *= 2


def busy_python(n: int) -> int:
    """Interpreted work: integer arithmetic in a Python loop."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1000003
    return acc


_BLOCK = b"x" * 256


def busy_c(n: int) -> int:
    """Work done in C (SHA-256 of n/8 blocks of 256 bytes): far less sensitive to
    the interpreter's memory layout, so a smaller effect can be measured."""
    h = hashlib.sha256()
    update = h.update
    for _ in range(n // 8):
        update(_BLOCK)
    return len(h.digest())


busy = busy_python


def request(work: int) -> None:
    span = crosstrace.span
    with span("GET /v2/servers", kind=crosstrace.SpanKind.SERVER, attributes=ATTRS):
        per = work // 6
        busy(per)
        for i in range(5):
            with span(f"step{i}", attributes=ATTRS):
                busy(per)


def block(work: int, seconds: float, exporter: BatchExporter | None) -> float:
    """Run requests for *seconds*; CPU seconds per request (all threads)."""
    c0 = time.process_time()
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        request(work)
        count += 1
    if exporter is not None:
        exporter.force_flush(5)
    return (time.process_time() - c0) / count


def bench_budget(
    budget: float, blocks: int, block_s: float, settle_s: float, record_nothing: bool = False
) -> dict[str, float]:
    work = calibrate_work(0.002)
    t = crosstrace.configure(
        service_name="bench",
        transport=EncodeThenDiscard(),
        sample_ratio=0.0 if record_nothing else 1.0,
        overhead_budget=budget,
        slow_threshold=0,
        export_delay=0.05,
        queue_size=100000,
        batch_size=512,
    )
    exporter = crosstrace.export.active()
    if record_nothing:
        t.record_threshold = 0  # an installed tracer that records nothing at all
    settle_end = time.monotonic() + settle_s
    while time.monotonic() < settle_end:
        request(work)
    base: list[float] = []
    traced: list[float] = []
    ratios: list[float] = []
    fractions: list[float] = []
    for i in range(blocks):
        # ABBA order: a drift in the machine's load during a pair hits both halves.
        for traced_turn in (False, True) if i % 2 == 0 else (True, False):
            if traced_turn:
                tr._set_tracer(t)
                if t.controller is not None:
                    t.controller.reset_window()
                traced.append(block(work, block_s, exporter))
                ratios.append(t.effective_ratio)
                fractions.append(t.record_fraction)
            else:
                tr._set_tracer(None)
                base.append(block(work, block_s, None))
    stats = exporter.stats() if exporter is not None else {}
    config.shutdown()
    overheads = [(tt - bb) / tt for tt, bb in zip(traced, base, strict=True)]
    return {
        "budget": budget,
        "overhead": statistics.median(overheads),
        "overhead_mean": statistics.mean(overheads),
        "overhead_2se": 2 * statistics.stdev(overheads) / len(overheads) ** 0.5,
        "overhead_p25": statistics.quantiles(overheads, n=4)[0],
        "overhead_p75": statistics.quantiles(overheads, n=4)[2],
        "cpu_per_request_us": statistics.median(base) * 1e6,
        "ratio": statistics.median(ratios),
        "record_fraction": statistics.median(fractions),
        "dropped": float(stats.get("spans_dropped", 0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter blocks")
    parser.add_argument(
        "--parts", default="recorded,unsampled,budget", help="comma-separated parts to run"
    )
    parser.add_argument(
        "--budgets", default="0.01,0.02,0.05", help="overhead budgets for the budget part"
    )
    parser.add_argument(
        "--work",
        choices=("python", "c"),
        default="python",
        help="budget part: request work in a Python loop or in C (SHA-256)",
    )
    args = parser.parse_args(argv)
    global busy
    busy = busy_python if args.work == "python" else busy_c
    parts = set(args.parts.split(","))
    repeats, n = (5, 20000) if args.quick else (9, 50000)
    blocks, block_s, settle_s = (8, 0.5, 4.0) if args.quick else (20, 1.0, 8.0)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"date {time.strftime('%Y-%m-%d')}, repeats {repeats}, n {n}")

    if "recorded" in parts:
        r = bench_recorded(repeats, n)
        print("\n[recorded] span start+end, 3 attributes, median ns per span")
        print(
            f"  one-span trace   crosstrace {r['ct1']:8.0f}  otel-sdk {r['ot1']:8.0f}"
            f"  ratio {r['ct1'] / r['ot1']:.3f} (1/{r['ot1'] / r['ct1']:.1f})"
        )
        print(
            f"  ten-span trace   crosstrace {r['ct10']:8.0f}  otel-sdk {r['ot10']:8.0f}"
            f"  ratio {r['ct10'] / r['ot10']:.3f} (1/{r['ot10'] / r['ct10']:.1f})"
        )
        print(f"  crosstrace spans dropped by the bounded queue: {r['ct_dropped_share']:.1%}")
    if "unsampled" in parts:
        u = bench_unsampled(repeats, n * 4)
        print("\n[unsampled] span inside an unsampled, unrecorded trace, median ns per span")
        print(
            f"  crosstrace {u['ct']:6.0f}  otel-sdk {u['ot']:6.0f}"
            f"  ratio {u['ct'] / u['ot']:.3f}  (empty loop {u['empty']:.0f})"
        )
        print(f"  crosstrace unconfigured (no tracer) {u['unconf']:6.0f}")
    if "budget" in parts:
        print(
            f"\n[budget] steady load, ~2 ms CPU per request ({args.work} work), "
            "6 spans per request, ABBA blocks"
        )
        ref = bench_budget(0.0, max(4, blocks // 2), block_s, 1.0)
        print(
            f"  no budget: overhead {ref['overhead']:.2%}"
            f"  (IQR {ref['overhead_p25']:.2%}..{ref['overhead_p75']:.2%},"
            f" mean {ref['overhead_mean']:.2%} +- {ref['overhead_2se']:.2%}),"
            f" {ref['cpu_per_request_us']:.0f} us CPU/request untraced"
        )
        null = bench_budget(0.0, blocks, block_s, 1.0, record_nothing=True)
        print(
            f"  tracer recording nothing (ratio 0, record fraction 0): overhead"
            f" {null['overhead']:.2%} (IQR {null['overhead_p25']:.2%}..{null['overhead_p75']:.2%},"
            f" mean {null['overhead_mean']:.2%} +- {null['overhead_2se']:.2%})"
        )
        for b in (float(x) for x in args.budgets.split(",")):
            res = bench_budget(b, blocks, block_s, settle_s)
            print(
                f"  budget {b:.2%}: measured {res['overhead']:.2%}"
                f" (IQR {res['overhead_p25']:.2%}..{res['overhead_p75']:.2%},"
                f" mean {res['overhead_mean']:.2%} +- {res['overhead_2se']:.2%}),"
                f" measured/setting {res['overhead'] / b:.2f},"
                f" effective ratio {res['ratio']:.3f},"
                f" record fraction {res['record_fraction']:.2f}"
            )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
