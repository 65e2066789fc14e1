"""What tracing costs: counted on the hot path, measured where it is paid.

The overhead budget needs the CPU time tracing adds to the service. Timing
every span would itself cost more than a small budget allows, and timing the
tracer's own functions in a loop misses most of the cost: a traced request
among many untraced ones costs two to four times what it costs in a loop of
traced requests (its code and data have gone cold in between), and the
garbage collector, context variables and the middleware's share come on top.
So the work is split:

* **Counting** (:class:`Accounting`): the tracer adds a few integers once per
  trace, when its local root ends (recorded roots, spans, kept spans) or when a
  trace is not recorded, and once per request the budget leaves untraced
  (:mod:`crosstrace.tracing.plan`). Nothing is timed per span.
* **Measuring in place** (:meth:`CostModel.observe`): some untraced requests
  (the control group: tracing off, as far as the application can tell) and
  some or all traced ones have their thread CPU time measured; a traced
  request costs its group's mean less the control group's. The HTTP
  middleware time the parts of the untraced requests they measure around
  the application in turn with and without the untraced path's own steps,
  which prices that path in place (:meth:`CostModel.skipped_ns`). Root
  spans built after the fact for untraced requests that failed or were slow
  are timed one by one (:meth:`CostModel.add_late`).
* **Measuring the whole** (:mod:`crosstrace.tracing.phases`): what a traced
  request costs the process, the slower code after it and its garbage
  collected later included, from alternating phases of traced and untraced
  requests; it replaces the in-place figure once it has enough comparisons.
* **Pricing** (:class:`CostModel`): what the measurements cannot see, and
  what stands in until they have enough samples, is measured by running the
  real code paths in private tracers (:mod:`crosstrace.tracing.calibration`).
  It runs when the budget is set and again from the controller's tick (never
  from a span), every :data:`RECALIBRATE_S` seconds or less often, so that
  it takes at most :data:`CALIBRATION_SHARE` of what the budget allows; its own CPU time
  is part of what tracing spent. A price is the median of what the last
  :data:`KEEP_CALIBRATIONS` calibrations found. Middleware adds a *probe*
  (:meth:`CostModel.add_probe`): one request through its own code with
  tracing on and off.
* **The budget's own work** (planning the untraced requests with the phases'
  switches, closing a window, calibrating) is timed where it runs, the plan
  in a random sample of its calls (:data:`~crosstrace.tracing.plan.PLAN_TIMED`),
  and counted in every window as tracing cost that no knob scales
  (:attr:`CostModel.own_ns`): on a light request it is a few tenths of a
  point, what the estimate of a small budget's floor missed before.
* **The export thread** measures its own CPU with :func:`time.thread_time_ns`
  (:meth:`crosstrace.export.BatchExporter.cpu_ns`): encoding, compression and
  I/O are measured, not estimated.

:class:`~crosstrace.tracing.sampling.OverheadController` turns these into
what tracing spent in each window and adjusts its knobs.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from crosstrace.tracing import calibration
from crosstrace.tracing.calibration import Probe
from crosstrace.tracing.phases import Phases

__all__ = [
    "CALIBRATION_SHARE",
    "CONTROL_EVERY",
    "GROUP_CONTROL",
    "GROUP_DEFERRED",
    "GROUP_RECORDED",
    "GROUP_SKIPPED",
    "KEEP_CALIBRATIONS",
    "MAX_RECALIBRATE_S",
    "MEASURED_PER_WINDOW",
    "MEASURE_ALL_BELOW",
    "RECALIBRATE_S",
    "SAMPLE_EVERY",
    "WHOLE_BOUNDS",
    "Accounting",
    "CostModel",
    "close_window",
]

log = logging.getLogger("crosstrace.tracer")

#: Seconds between two calibrations (the first runs when a budget is set),
#: at least; more when calibrating would take over :data:`CALIBRATION_SHARE`
#: of what the budget allows (a small budget, a process using little CPU),
#: up to :data:`MAX_RECALIBRATE_S`.
RECALIBRATE_S = 30.0
CALIBRATION_SHARE = 0.1
MAX_RECALIBRATE_S = 600.0
#: A price is the (lower) median of what this many of the last calibrations found:
#: one finds the small ones (an untraced request's, ~1 us) within a few us,
#: as the difference of two timings of a probe request (~20 us).
KEEP_CALIBRATIONS = 5
#: One request in this many runs with tracing off, its CPU time measured (the
#: control group; its failures and slow runs are still exported).
CONTROL_EVERY = 64
#: One request in this many of the others has its CPU time measured.
SAMPLE_EVERY = 32
#: Measured groups: requests a traced entry point ran with tracing off (the
#: control group), unrecorded and recorded traces, and requests the budget
#: left untraced (one in :data:`CONTROL_EVERY` of those is measured).
GROUP_CONTROL = 0
GROUP_DEFERRED = 1
GROUP_RECORDED = 2
GROUP_SKIPPED = 3
_GROUPS = (GROUP_CONTROL, GROUP_DEFERRED, GROUP_RECORDED, GROUP_SKIPPED)
#: Untraced requests measured per window, about: one in a power of two of
#: them, from the last window's count (at least one in 4, at most one in 1024).
#: Each costs several microseconds in place (four clock reads, a plan): at 128
#: a window the budget's own work was 0.6-1.4 % of the benchmark's light
#: request's CPU, at 32 0.2-0.4 %. What they give needs few: the price of
#: the untraced path is a difference of two medians of what runs around the
#: application (see :meth:`CostModel.skipped_ns`), within ~100 ns window by
#: window from 512 samples of each kind, and a mean of whole requests
#: decayed over ~5 windows.
MEASURED_PER_WINDOW = 32
#: Below this traced fraction every traced request is measured (they are few,
#: and each costs more than in a busy loop: its code and data are cold).
MEASURE_ALL_BELOW = 0.25
#: Weight each window keeps of the measurements before it (about 5 windows).
DECAY = 0.8
#: Effective samples a group needs before its mean replaces the calibrated price.
MIN_SAMPLES = 20.0
#: The untraced path in place is the difference of two medians (see
#: :meth:`CostModel.skipped_ns`): of the last this many measured untraced
#: requests timed around the application with its steps and without them,
#: once each kind has this many.
FLOOR_SAMPLES = 512
MIN_FLOOR_SAMPLES = 128
#: The range, as multiples of a traced request's calibrated price, of what
#: the alternating phases may say it costs the process (their figure is a
#: difference of two noisy means; outside it, it is noise).
WHOLE_BOUNDS = (0.5, 4.0)


class Accounting:
    """Counters the tracer updates once per trace (plain ints, no lock)."""

    __slots__ = ("bypassed", "kept_spans", "late", "mask", "roots", "spans", "unrecorded")

    def __init__(self) -> None:
        #: Local roots recorded (their segment settled, kept or dropped).
        self.roots = 0
        #: Spans recorded, local roots included.
        self.spans = 0
        #: Spans of kept segments, handed to the exporter.
        self.kept_spans = 0
        #: Local roots of traces not recorded (a non-recording span).
        self.unrecorded = 0
        #: Requests an entry point ran untraced (outside the traced fraction),
        #: counted when planned (:func:`~crosstrace.tracing.plan.skip_request`;
        #: a dropped plan uncounts the ones not served).
        self.bypassed = 0
        #: Root spans of untraced requests exported after the fact (failed or
        #: slow); also counted in :attr:`roots`.
        self.late = 0
        #: Untraced requests measured: one in ``mask + 1`` (see
        #: :meth:`CostModel.fold`).
        self.mask = 31

    def served(self) -> int:
        """Requests counted so far, traced or not (a root exported after the
        fact is an untraced request's, counted in :attr:`bypassed`)."""
        return self.roots - self.late + self.unrecorded + self.bypassed

    def snapshot(self) -> tuple[int, int, int, int, int, int]:
        """``(roots, spans, kept_spans, unrecorded, bypassed, late)``."""
        return self.roots, self.spans, self.kept_spans, self.unrecorded, self.bypassed, self.late


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
        "_bypassed_last",
        "_eff_n",
        "_eff_sum",
        "_floor",
        "_floor_samples",
        "_floor_turn",
        "_history",
        "_last_controls",
        "_late_last",
        "_late_window",
        "_make_tracer",
        "_n",
        "_next_ns",
        "_off",
        "_open_span",
        "_probe",
        "_sum",
        "bypass_child_ns",
        "bypass_ns",
        "calibrations",
        "children_per_root",
        "clock_ns",
        "control_every",
        "deferred_child_ns",
        "keep_ns",
        "own_ns",
        "phases",
        "reads_ns",
        "root_ns",
        "sample_every",
        "scaffold_ns",
        "span_ns",
        "tickets",
        "unrecorded_ns",
    )

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
        #: What a request run untraced (outside the traced fraction) still costs,
        #: and what each of its spans costs against tracing off (about
        #: nothing: both look for a tracer and find none to use).
        self.bypass_ns = 0.0
        self.bypass_child_ns = 0.0
        #: One read of the thread's CPU clock (a request measured takes two;
        #: zero until calibrated).
        self.clock_ns = 0.0
        #: Spans per local root beside the root itself, decayed over windows
        #: (what untraced and unrecorded requests are assumed to open).
        self.children_per_root = float(calibration.CHILDREN)
        #: One traced request in this many is in the control group (0: none,
        #: while the budget leaves requests untraced: they are the control).
        self.control_every = CONTROL_EVERY
        #: One traced request in this many has its CPU time measured.
        self.sample_every = SAMPLE_EVERY
        #: CPU the budget's own work has taken on the request threads so far
        #: (calibration, planning the untraced requests, closing the
        #: controller's windows): tracing cost whatever is traced.
        self.own_ns = 0
        #: The clock reads of the untraced and control requests measured so
        #: far (four and two each), priced (:attr:`clock_ns`): the budget's
        #: own work too, not timed (a request measured does not count them
        #: as its own).
        self.reads_ns = 0
        self.calibrations = 0
        self._next_ns = 0
        # Each price from the last calibrations (see :data:`KEEP_CALIBRATIONS`).
        self._history: dict[str, deque[float]] = {}
        #: Numbers the requests, for the control group and the measured sample.
        self.tickets = itertools.count(1)
        # Measured thread CPU per group: this window, and decayed over windows.
        self._sum = [0] * len(_GROUPS)
        self._n = [0] * len(_GROUPS)
        self._eff_sum = [0.0] * len(_GROUPS)
        self._eff_n = [0.0] * len(_GROUPS)

        # Whether the next measured untraced request is timed with the
        # untraced path's steps (see :meth:`floor_turn`), the last of each
        # kind, and what the untraced path costs in place (``None``: not
        # enough samples yet).
        self._floor_turn = False
        self._floor_samples: tuple[deque[int], deque[int]] = (
            deque(maxlen=FLOOR_SAMPLES),
            deque(maxlen=FLOOR_SAMPLES),
        )
        self._floor: float | None = None
        self._last_controls = 0
        self._bypassed_last = 0
        # CPU of the root spans exported after the fact: this window, the last.
        self._late_window = 0
        self._late_last = 0
        #: The plan's alternating phases, which measure a traced request's whole cost.
        self.phases = Phases()

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
            self._history.clear()  # the prices without it are not comparable

    def observe(self, group: int, cpu_ns: int) -> None:
        """One measured request: its thread CPU time, by group (no lock: a lost
        update under a race is one sample less)."""
        self._sum[group] += cpu_ns
        self._n[group] += 1

    def floor_turn(self) -> bool:
        """Whether the measured untraced request an HTTP middleware is about
        to serve is timed with the untraced path's own steps or without them:
        in turn (see :meth:`skipped_ns`)."""
        turn = self._floor_turn = not self._floor_turn
        return turn

    def observe_untraced(self, with_steps: bool, around_ns: int, request_ns: int) -> None:
        """One measured untraced request (see :meth:`floor_turn`): *around_ns*
        is the CPU of what ran around the application (with the untraced
        path's steps or without them: two clock reads' gaps, one before the
        application and one after), *request_ns* the whole request's, two
        clock reads inside it included. Timed with the steps it is also one
        of :data:`GROUP_SKIPPED`, less those two reads."""
        self._floor_samples[with_steps].append(around_ns)
        if with_steps:
            self.observe(GROUP_SKIPPED, request_ns - int(2 * self.clock_ns))

    def add_late(self, cpu_ns: int) -> None:
        """The measured CPU of exporting one root span after the fact."""
        self._late_window += cpu_ns

    def follow(self, trace_fraction: float) -> None:
        """Adapt the measurement to the traced fraction: the untraced requests
        are the control group, helped by one traced request in
        :data:`CONTROL_EVERY` run with tracing off while few run untraced;
        below :data:`MEASURE_ALL_BELOW` every traced request is measured."""
        self.control_every = CONTROL_EVERY if trace_fraction >= 0.5 else 0
        self.sample_every = SAMPLE_EVERY if trace_fraction >= MEASURE_ALL_BELOW else 1

    def fold(self, accounting: Accounting) -> None:
        """Close a window: fold its measurements into the decayed sums, count
        the clock reads of the requests it measured as the budget's own work,
        and pace the measured untraced requests by this window's count of them
        (about :data:`MEASURED_PER_WINDOW`: each costs four reads of the
        thread's CPU clock, system calls that cost microseconds in place)."""
        skipped = accounting.bypassed - self._bypassed_last
        self._bypassed_last = accounting.bypassed
        # The clock reads of the untraced (four) and control (two) requests
        # measured: the budget's own work (a traced request's are in what it
        # is measured to cost, once the phases measure it).
        reads = 4 * skipped / (accounting.mask + 1) + 2 * self._n[GROUP_CONTROL]
        self.reads_ns += int(self.clock_ns * reads)
        every = max(4, min(1024, skipped // MEASURED_PER_WINDOW))
        accounting.mask = (1 << (every.bit_length() - 1)) - 1
        self._last_controls = self._n[GROUP_CONTROL]
        self._late_last = self._late_window
        self._late_window = 0
        for g in _GROUPS:
            s, n = self._sum[g], self._n[g]
            self._sum[g] = self._n[g] = 0
            self._eff_sum[g] = self._eff_sum[g] * DECAY + s
            self._eff_n[g] = self._eff_n[g] * DECAY + n
        bare, steps = self._floor_samples
        if len(bare) >= MIN_FLOOR_SAMPLES and len(steps) >= MIN_FLOOR_SAMPLES:
            self._floor = max(0.0, statistics.median(steps) - statistics.median(bare))

    def measured(self, group: int) -> float | None:
        """The decayed mean CPU of a group's requests, once it has enough samples."""
        n = self._eff_n[group]
        return self._eff_sum[group] / n if n >= MIN_SAMPLES else None

    def off_ns(self) -> float | None:
        """The mean CPU of a request with tracing off: an untraced request's
        less what the untraced path costs it (:meth:`skipped_ns`; what is
        measured of it is the application under its request context, its
        spans taking the tracing-off path), else a control request's less its
        calibrated extra cost."""
        skipped = self.measured(GROUP_SKIPPED)
        if skipped is not None:
            return skipped - self.skipped_ns()
        control = self.measured(GROUP_CONTROL)
        if control is not None:
            return control - self.scaffold_ns
        return None

    def skipped_ns(self) -> float:
        """What one request run untraced costs against tracing off: the
        entry point's floor (the slow check's two clock reads, the context
        marked untraced, the failure check).

        Measured in place once the HTTP middleware have timed enough untraced
        requests with those steps and without them (:meth:`floor_turn`): the
        difference of the two groups' medians, updated as a window closes.
        Between the service's own code these few steps cost several times
        what they cost in a loop (``benchmarks/bench_floor.py``), which
        calibration cannot reproduce. What is timed is what runs around the
        application, not the whole request: a request's own CPU varies by
        microseconds (tens on a heavy one), which left the difference of two
        medians of whole requests swinging from nothing to several
        microseconds window by window (a 300 us request), where the steps
        cost under one. Medians, not means: now and then a clock read takes
        far longer (the host). Until then, and for entry points
        that do not time them (RPC consumers), the calibrated price stands
        in. The spans of an untraced request take the tracing-off path, so
        they add nothing (``bypass_child_ns`` stays a check of that, not
        multiplied into the estimate)."""
        floor = self._floor
        return self.bypass_ns if floor is None else floor

    def floor_ns(self, requests: int) -> float:
        """What this window's requests would have cost the request thread with
        none of them traced: each what a skipped one costs, and the root spans
        exported after the fact (what the window had of them)."""
        return requests * self.skipped_ns() + self._late_last

    def baseline_ns(self, requests: int) -> float | None:
        """What this window's requests (the control group's included) would
        have cost without tracing."""
        off = self.off_ns()
        if off is None:
            return None
        return (requests + self._last_controls) * off

    def record_ns(
        self,
        roots: int,
        spans: int,
        kept: int,
        unrecorded: int,
        bypassed: int = 0,
        late: int = 0,
    ) -> tuple[float, float]:
        """The request-thread CPU the counted work cost: ``(total, fixed)``,
        where *fixed* is the part the traced fraction does not scale (requests
        run untraced, and the root spans of those exported after the fact).

        Measured where possible: a recorded (or unrecorded) trace costs its
        group's mean CPU less a request's with tracing off (:meth:`off_ns`), so
        that what tracing costs in the running service (its code and data
        gone cold between traced requests, the garbage collector) is counted.
        Until the groups have enough samples, the calibrated prices stand in.
        Once the alternating phases have a figure (:meth:`_whole`), it replaces
        both. The root spans exported after the fact are measured one by one.
        """
        roots -= late
        spans -= late
        kept -= late
        children = max(0, spans - roots)
        if roots > 0:
            self.children_per_root = DECAY * self.children_per_root + (1 - DECAY) * (
                children / roots
            )
        fixed = bypassed * self.skipped_ns() + self._late_last
        controls = self._last_controls * self.scaffold_ns
        roots = max(0, roots)
        per_root = self.children_per_root
        rec_priced = roots * self.root_ns + children * self.span_ns + max(0, kept) * self.keep_ns
        def_priced = unrecorded * max(0.0, self.unrecorded_ns + per_root * self.deferred_child_ns)
        whole = self._whole(rec_priced + def_priced, roots + unrecorded)
        if whole is not None:
            return fixed + controls + whole, fixed
        off = self.off_ns()
        recorded = self.measured(GROUP_RECORDED)
        deferred = self.measured(GROUP_DEFERRED)
        if off is not None and recorded is not None:
            rec_cost = roots * max(0.0, recorded - off)
        else:
            rec_cost = rec_priced
        if off is not None and deferred is not None:
            def_cost = unrecorded * max(0.0, deferred - off)
        else:
            def_cost = def_priced
        return fixed + controls + rec_cost + def_cost, fixed

    def _whole(self, priced: float, traced: int) -> float | None:
        """What *traced* requests cost the request threads as the alternating
        phases measured it (the code after a traced request runs slower, and
        the garbage collector pays for its objects later), once they have a
        figure; kept within :data:`WHOLE_BOUNDS` times their calibrated price
        *priced* (not the in-place figure, which can read near zero when
        almost every request is traced and the control group is small).

        The phases compare a traced request with an untraced one, which pays
        the untraced path: that is added, so that the figure is against
        tracing off, as the prices and :meth:`floor_ns` are."""
        whole = self.phases.per_trace()
        if whole is None or traced <= 0 or priced <= 0.0:
            return None
        low, high = WHOLE_BOUNDS
        cost = (whole + self.skipped_ns()) * traced
        return min(max(cost, low * priced), high * priced)

    def maybe_recalibrate(self, allowed_per_s: float = 0.0) -> None:
        """Calibrate again when due (see :meth:`calibrate`)."""
        if time.monotonic_ns() >= self._next_ns:
            self.calibrate(allowed_per_s)

    def calibrate(self, allowed_per_s: float = 0.0) -> None:
        """Measure every price by running the real code paths (tens of ms of
        CPU). The next calibration is due after :data:`RECALIBRATE_S`, or
        later, so that calibrating takes at most :data:`CALIBRATION_SHARE` of
        what the budget allows a second (*allowed_per_s*, ns; 0: not known),
        up to :data:`MAX_RECALIBRATE_S`."""
        t_start = time.thread_time_ns()
        try:
            self._calibrate()
            self.calibrations += 1
        except Exception:
            log.debug("cost calibration failed", exc_info=True)
        finally:
            spent = time.thread_time_ns() - t_start
            self.own_ns += spent
            wait = RECALIBRATE_S
            if allowed_per_s > 0.0:
                paced = spent / (CALIBRATION_SHARE * allowed_per_s)
                wait = max(wait, min(MAX_RECALIBRATE_S, paced))
            self._next_ns = time.monotonic_ns() + int(wait * 1e9)

    def _calibrate(self) -> None:
        make, span = self._make_tracer, self._open_span
        if make is None or span is None:
            return
        for name, values in calibration.run(make, span, self._off, self._probe).items():
            kept = self._history.setdefault(name, deque(maxlen=KEEP_CALIBRATIONS))
            kept.append(sorted(values)[len(values) // 2])
            setattr(self, name, statistics.median_low(kept))


# -- the tracer's budget hooks (methods of Tracer) ----------------------------------------


def close_window(tracer: Any) -> None:
    """Close the controller's window: estimate what tracing spent, adjust the
    knobs, recalibrate the prices when due."""
    ctl = tracer.controller
    if ctl is None:
        return
    costs = tracer.costs
    t0 = time.thread_time_ns()
    try:
        sink = tracer.sink
        export_cpu = sink.cpu_ns() if sink is not None else 0
        if ctl.tick(tracer.accounting, costs, export_cpu):
            tracer._main._apply_knobs()
    except Exception:
        log.debug("overhead controller tick failed", exc_info=True)
    costs.own_ns += time.thread_time_ns() - t0  # counted in the next window
    try:
        costs.maybe_recalibrate(ctl.allowed_per_s())  # which counts its own
    except Exception:
        log.debug("cost calibration failed", exc_info=True)
