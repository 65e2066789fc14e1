"""Calibration: tracing's work priced by running its real code paths.

What the budget cannot measure where it is paid, and what stands in until
it has enough samples (:class:`~crosstrace.tracing.budget.CostModel`), is
priced here: a recorded and an unrecorded local root, child spans with three
attributes, kept spans handed to a discarding sink, a request of the
budget's control group and one run untraced, each run in private tracers
through the same code a service runs (a middleware's *probe* when one is
registered, else :func:`~crosstrace.tracing.tracer.span` roots), between
bits of application-like work (:func:`churn`), and timed with
:func:`time.thread_time_ns`. Each price is a difference between the traced
and the untraced run of the same code, so work the service does anyway is
not charged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from crosstrace.tracing.sampling import OverheadController

__all__ = [
    "CHILDREN",
    "CHURN",
    "CLOCK_READS",
    "PASSES",
    "ROUNDS",
    "Probe",
    "churn",
    "prices",
    "run",
    "span_probe",
]

#: Requests per variant in one calibration (split over interleaved passes),
#: and children per request.
ROUNDS = 60
PASSES = 12
CHILDREN = 4
#: Iterations of busy work a probe's application does before its spans and in
#: each of them: calibration then runs with the caches and branch predictors
#: an application leaves behind, not the warm ones of a tight loop (tracing
#: code between application code costs about twice what it does in a loop).
CHURN = 48

#: Reads of the thread's CPU clock timed per pass (what measuring a request
#: costs: two of them).
CLOCK_READS = 32

#: ``probe(tracer, children)`` returns a function that runs one request through
#: a copy of a middleware: traced by *tracer* (untraced when ``None``), its
#: application opening *children* spans of three attributes.
Probe = Callable[[Any, int], Callable[[], None]]


def churn() -> int:
    """Application-like busy work for the cost probes (see :data:`CHURN`)."""
    x = 0
    for i in range(CHURN):
        x ^= i
    return x


class _DiscardSink:
    """A sink that drops what it gets (calibration prices the hand-over only)."""

    def export_spans(self, spans: Any) -> None:
        return None

    def export_log(self, record: Any) -> None:
        return None

    def cpu_ns(self) -> int:
        return 0


def run(
    make: Callable[..., Any], span: Callable[..., Any], off: Any, probe: Probe | None
) -> dict[str, list[float]]:
    """One calibration: each price (see :func:`prices`) as found by each of
    :data:`PASSES` interleaved passes. *make* builds a tracer, *span* opens a
    span, *off* is the tracer meaning "off" (given by the tracer module, so
    that this module does not import the layer above); *probe* runs requests
    through a middleware (``None``: through ``span()`` roots)."""
    k = CHILDREN
    keep = make("calibrate", _DiscardSink(), sample_ratio=1.0)
    drop = make("calibrate", _DiscardSink(), sample_ratio=0.0)
    unrec = make("calibrate", None, sample_ratio=0.0)
    unrec.record_threshold = 0
    control = make("calibrate", None, sample_ratio=0.0)
    control.controller = OverheadController(1.0)
    control.costs.control_every = 1  # every request in the control group
    bypass = make("calibrate", None, sample_ratio=0.0)
    bypass.trace_threshold = 0  # every request untraced
    bypass.accounting.mask = (1 << 62) - 1  # and none measured
    probe = probe or span_probe(span, off)
    variants: list[tuple[Any, int]] = [
        (t, c) for t in (None, drop, keep, unrec, control, bypass) for c in (0, k)
    ]
    runs = [probe(t, c) for t, c in variants]
    for r in runs:  # warm up
        r()
    # Interleaved rounds: each round times every variant once, and each price
    # is taken from its per-round values, so that a slow drift of the machine
    # (another process, frequency) cancels out.
    found: dict[str, list[float]] = {}
    n = max(1, ROUNDS // PASSES)
    for _ in range(PASSES):
        cost: dict[tuple[Any, int], float] = {}
        for (t, c), r in zip(variants, runs, strict=True):
            t0 = time.thread_time_ns()
            for _ in range(n):
                r()
            cost[t, c] = (time.thread_time_ns() - t0) / n
        for name, value in prices(cost, drop, keep, unrec, control, bypass).items():
            found.setdefault(name, []).append(value)
        t0 = time.thread_time_ns()
        for _ in range(CLOCK_READS):
            time.thread_time_ns()
        found.setdefault("clock_ns", []).append((time.thread_time_ns() - t0) / (CLOCK_READS + 1))
    return found


def prices(
    cost: dict[tuple[Any, int], float],
    drop: Any,
    keep: Any,
    unrec: Any,
    control: Any,
    bypass: Any,
) -> dict[str, float]:
    """The prices one pass gives, from each variant's CPU per request (*cost*,
    by tracer and children; ``None``: tracing off): see
    :class:`~crosstrace.tracing.budget.CostModel` for what each one is."""
    k = CHILDREN
    off0, offk = cost[None, 0], cost[None, k]
    off_child = (offk - off0) / k
    return {
        "root_ns": max(100.0, cost[drop, 0] - off0),
        "span_ns": max(100.0, (cost[drop, k] - cost[drop, 0]) / k - off_child),
        "keep_ns": max(0.0, (cost[keep, k] - cost[drop, k]) / (k + 1)),
        "unrecorded_ns": max(0.0, cost[unrec, 0] - off0),
        "deferred_child_ns": (cost[unrec, k] - cost[unrec, 0]) / k - off_child,
        "scaffold_ns": max(0.0, cost[control, 0] - off0),
        "bypass_ns": max(0.0, cost[bypass, 0] - off0),
        "bypass_child_ns": (cost[bypass, k] - cost[bypass, 0]) / k - off_child,
    }


def span_probe(span: Callable[..., Any], off: Any) -> Probe:
    """Without a middleware: roots opened by ``span()`` itself."""
    attrs = {"calibrate.a": 1, "calibrate.b": "x", "calibrate.c": True}

    def probe(tracer: Any, children: int) -> Callable[[], None]:
        t = tracer if tracer is not None else off

        def run() -> None:
            with span("calibrate", 2, attrs, t):
                churn()
                for _ in range(children):
                    with span("calibrate.child", 1, attrs, t):
                        churn()

        return run

    return probe
