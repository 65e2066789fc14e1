"""What tracing costs: counted on the hot path, priced off it.

The overhead budget needs the CPU time tracing adds to the service. Timing
every span would itself cost more than a small budget allows, and timing only
the tracer's own functions misses most of the cost (the ``with`` protocol,
allocation, the garbage collector, context variables, the middleware's share).
So the work is split:

* **Counting** (:class:`Accounting`): the tracer adds a few integers once per
  trace, when its local root ends (recorded roots, spans, kept spans) or when a
  trace is not recorded. Nothing is timed per span.
* **Pricing** (:class:`CostModel`): the cost of each unit is measured by
  running the real code paths (a recorded and an unrecorded local root, child
  spans with three attributes, kept spans handed to a discarding sink) in a
  private tracer, timed with :func:`time.thread_time_ns` so that only this
  thread's CPU counts, garbage collections included. It runs when the budget is
  set and again every :data:`RECALIBRATE_S` seconds from the controller's tick
  (never from a span), and its own CPU time is part of what tracing spent.
  Middleware may add a *probe* (:meth:`CostModel.add_probe`): one request
  through its own code with tracing on and off, so the per-request cost
  includes the work it does for tracing (reading the trace headers, the span's
  attributes, the status hook).
* **The export thread** measures its own CPU with :func:`time.thread_time_ns`
  (:meth:`crosstrace.export.BatchExporter.cpu_ns`): encoding, compression and
  I/O are measured, not estimated.

:class:`~crosstrace.tracing.sampling.OverheadController` multiplies counts by
prices once per window and adds the export thread's CPU.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from crosstrace.tracing.sampling import OverheadController

__all__ = [
    "CONTROL_EVERY",
    "GROUP_CONTROL",
    "GROUP_DEFERRED",
    "GROUP_RECORDED",
    "RECALIBRATE_S",
    "SAMPLE_EVERY",
    "Accounting",
    "CostModel",
    "Probe",
]

log = logging.getLogger("crosstrace.tracer")

#: Seconds between two calibrations (the first runs when a budget is set).
RECALIBRATE_S = 30.0
#: One request in this many runs with tracing off, its CPU time measured (the
#: control group; its failures and slow runs are still exported).
CONTROL_EVERY = 64
#: One request in this many of the others has its CPU time measured.
SAMPLE_EVERY = 32
#: Measured groups.
GROUP_CONTROL = 0
GROUP_DEFERRED = 1
GROUP_RECORDED = 2
#: Weight each window keeps of the measurements before it (about 5 windows).
DECAY = 0.8
#: Effective samples a group needs before its mean replaces the calibrated price.
MIN_SAMPLES = 20.0

#: ``probe(tracer, children)`` returns a function that runs one request through
#: a copy of a middleware: traced by *tracer* (untraced when ``None``), its
#: application opening *children* spans of three attributes.
Probe = Callable[[Any, int], Callable[[], None]]


class Accounting:
    """Counters the tracer updates once per trace (plain ints, no lock)."""

    __slots__ = ("bypassed", "kept_spans", "roots", "spans", "unrecorded")

    def __init__(self) -> None:
        #: Local roots recorded (their segment settled, kept or dropped).
        self.roots = 0
        #: Spans recorded, local roots included.
        self.spans = 0
        #: Spans of kept segments, handed to the exporter.
        self.kept_spans = 0
        #: Local roots of traces not recorded (a non-recording span).
        self.unrecorded = 0
        #: Requests an entry point ran untraced (outside the traced fraction).
        self.bypassed = 0

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """``(roots, spans, kept_spans, unrecorded, bypassed)``."""
        return self.roots, self.spans, self.kept_spans, self.unrecorded, self.bypassed


class _DiscardSink:
    """A sink that drops what it gets (calibration prices the hand-over only)."""

    def export_spans(self, spans: Any) -> None:
        return None

    def export_log(self, record: Any) -> None:
        return None

    def cpu_ns(self) -> int:
        return 0


class CostModel:
    """Nanoseconds of CPU per unit of tracing work, measured in this process.

    Every price is the difference between the traced and the untraced run of
    the same code (so work the service does anyway is not charged):

    * ``root_ns``: a recorded local root (start, attributes, end, drop);
    * ``span_ns``: a recorded child span with three attributes;
    * ``keep_ns``: a kept span handed to the exporter (redaction, queueing);
    * ``unrecorded_ns``: the local root of a trace that is not recorded;
    * ``deferred_child_ns``: a child span under such a root (usually negative:
      a span under a non-recording root costs less than with tracing off).

    With a middleware probe (:meth:`add_probe`) the roots are priced through the
    middleware itself (reading the headers, naming, the status hook); else
    through :func:`~crosstrace.tracing.tracer.span` roots. Until the first
    calibration the prices are conservative defaults.
    """

    __slots__ = (
        "_eff_n",
        "_eff_sum",
        "_last_controls",
        "_make_tracer",
        "_n",
        "_next_ns",
        "_off",
        "_open_span",
        "_probe",
        "_sum",
        "bypass_ns",
        "calibration_ns",
        "calibrations",
        "control_every",
        "deferred_child_ns",
        "keep_ns",
        "root_ns",
        "scaffold_ns",
        "span_ns",
        "tickets",
        "unrecorded_ns",
    )

    #: Requests per calibration run, and children per request.
    ROUNDS = 150
    CHILDREN = 4

    def __init__(
        self,
        make_tracer: Callable[..., Any] | None = None,
        open_span: Callable[..., Any] | None = None,
        off: Any = None,
    ) -> None:
        # What calibration runs: the tracer class, its span opener and the
        # tracer meaning "off" (given by the tracer module, so that this module
        # does not import the layer above).
        self._make_tracer = make_tracer
        self._open_span = open_span
        self._off = off
        self._probe: Probe | None = None
        self.root_ns = 12_000.0
        self.span_ns = 4_000.0
        self.keep_ns = 1_000.0
        self.unrecorded_ns = 2_000.0
        self.deferred_child_ns = 0.0
        #: What an entry point's tracing scaffolding costs a request whatever
        #: its group (the control group pays it too, so it is priced apart).
        self.scaffold_ns = 0.0
        #: What a request run untraced (outside the traced fraction) still costs.
        self.bypass_ns = 0.0
        #: One request in this many is in the control group.
        self.control_every = CONTROL_EVERY
        #: CPU spent calibrating so far (counted as tracing cost).
        self.calibration_ns = 0
        self.calibrations = 0
        self._next_ns = 0
        #: Numbers the requests, for the control group and the measured sample.
        self.tickets = itertools.count(1)
        # Measured thread CPU per group: this window, and decayed over windows.
        self._sum = [0, 0, 0]
        self._n = [0, 0, 0]
        self._eff_sum = [0.0, 0.0, 0.0]
        self._eff_n = [0.0, 0.0, 0.0]
        self._last_controls = 0

    @property
    def has_probe(self) -> bool:
        """Whether a middleware probe prices the roots."""
        return self._probe is not None

    def add_probe(self, probe: Probe) -> None:
        """Price local roots through a middleware (the first one registered);
        the next calibration uses it."""
        if self._probe is None:
            self._probe = probe
            self._next_ns = 0

    def observe(self, group: int, cpu_ns: int) -> None:
        """One measured request: its thread CPU time, by group (no lock: a lost
        update under a race is one sample less)."""
        self._sum[group] += cpu_ns
        self._n[group] += 1

    def fold(self) -> None:
        """Close a window: fold its measurements into the decayed sums."""
        self._last_controls = self._n[GROUP_CONTROL]
        for g in (GROUP_CONTROL, GROUP_DEFERRED, GROUP_RECORDED):
            s, n = self._sum[g], self._n[g]
            self._sum[g] = self._n[g] = 0
            self._eff_sum[g] = self._eff_sum[g] * DECAY + s
            self._eff_n[g] = self._eff_n[g] * DECAY + n

    def measured(self, group: int) -> float | None:
        """The decayed mean CPU of a group's requests, once it has enough samples."""
        n = self._eff_n[group]
        return self._eff_sum[group] / n if n >= MIN_SAMPLES else None

    def baseline_ns(self, requests: int) -> float | None:
        """What this window's requests would have cost without tracing: the
        traced and untraced ones plus the control group, at the control
        group's mean CPU."""
        control = self.measured(GROUP_CONTROL)
        if control is None:
            return None
        return (requests + self._last_controls) * control

    def record_ns(
        self, roots: int, spans: int, kept: int, unrecorded: int, bypassed: int = 0
    ) -> float:
        """The request-thread CPU the counted work cost.

        Measured where possible: a recorded (or deferred) request costs its
        group's mean CPU minus the control group's (tracing off), corrected for
        its children (a span under a non-recording root is cheaper than with
        tracing off). Until a group has enough samples, the calibrated prices
        stand in. Children of unrecorded roots are estimated from the recorded
        traces' spans per root.
        """
        children = max(0, spans - roots)
        per_root = children / roots if roots else float(self.CHILDREN)
        correction = per_root * self.deferred_child_ns
        control = self.measured(GROUP_CONTROL)
        recorded = self.measured(GROUP_RECORDED)
        deferred = self.measured(GROUP_DEFERRED)
        scaffold = (roots + unrecorded + self._last_controls) * self.scaffold_ns
        scaffold += bypassed * self.bypass_ns
        if control is not None and recorded is not None:
            rec_cost = roots * max(0.0, recorded - control + correction)
        else:
            rec_cost = roots * self.root_ns + children * self.span_ns + kept * self.keep_ns
        if control is not None and deferred is not None:
            def_cost = unrecorded * max(0.0, deferred - control + correction)
        else:
            def_cost = unrecorded * max(0.0, self.unrecorded_ns + correction)
        return scaffold + rec_cost + def_cost

    def maybe_recalibrate(self) -> None:
        """Calibrate again when :data:`RECALIBRATE_S` passed since the last time."""
        if time.monotonic_ns() >= self._next_ns:
            self.calibrate()

    def calibrate(self) -> None:
        """Measure every price by running the real code paths (a few ms of CPU)."""
        t_start = time.thread_time_ns()
        try:
            self._calibrate()
            self.calibrations += 1
        except Exception:
            log.debug("cost calibration failed", exc_info=True)
        finally:
            self.calibration_ns += time.thread_time_ns() - t_start
            self._next_ns = time.monotonic_ns() + int(RECALIBRATE_S * 1e9)

    def _calibrate(self) -> None:
        make, span = self._make_tracer, self._open_span
        if make is None or span is None:
            return
        k = self.CHILDREN
        keep = make("calibrate", _DiscardSink(), sample_ratio=1.0)
        drop = make("calibrate", _DiscardSink(), sample_ratio=0.0)
        unrec = make("calibrate", None, sample_ratio=0.0)
        unrec.record_threshold = 0
        control = make("calibrate", None, sample_ratio=0.0)
        control.controller = OverheadController(1.0)
        control.costs.control_every = 1  # every request in the control group
        bypass = make("calibrate", None, sample_ratio=0.0)
        bypass.trace_threshold = 0  # every request untraced
        probe = self._probe or self._span_probe(span, self._off)
        cost: dict[tuple[Any, int], float] = {}
        runs = [(t, c) for t in (None, drop, keep, unrec, control, bypass) for c in (0, k)]
        for t, c in runs:  # warm up
            probe(t, c)()
        for t, c in runs:
            cost[t, c] = self._time(probe(t, c))
        off0, offk = cost[None, 0], cost[None, k]
        off_child = (offk - off0) / k
        self.root_ns = max(100.0, cost[drop, 0] - off0)
        self.span_ns = max(100.0, (cost[drop, k] - cost[drop, 0]) / k - off_child)
        self.keep_ns = max(0.0, (cost[keep, k] - cost[drop, k]) / (k + 1))
        self.unrecorded_ns = max(0.0, cost[unrec, 0] - off0)
        self.deferred_child_ns = (cost[unrec, k] - cost[unrec, 0]) / k - off_child
        self.scaffold_ns = max(0.0, cost[control, 0] - off0)
        self.bypass_ns = max(0.0, cost[bypass, 0] - off0)

    def _time(self, run: Callable[[], None]) -> float:
        """Median CPU per call of three batches."""
        n = self.ROUNDS // 3
        out = []
        for _ in range(3):
            t0 = time.thread_time_ns()
            for _ in range(n):
                run()
            out.append((time.thread_time_ns() - t0) / n)
        return sorted(out)[1]

    @staticmethod
    def _span_probe(span: Callable[..., Any], off: Any) -> Probe:
        """Without a middleware: roots opened by ``span()`` itself."""
        attrs = {"calibrate.a": 1, "calibrate.b": "x", "calibrate.c": True}

        def probe(tracer: Any, children: int) -> Callable[[], None]:
            t = tracer if tracer is not None else off

            def run() -> None:
                with span("calibrate", 2, attrs, t):
                    for _ in range(children):
                        with span("calibrate.child", 1, attrs, t):
                            pass

            return run

        return probe
