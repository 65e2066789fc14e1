"""The budget's alternating phases: what a traced request costs the whole process.

The phases are fed synthetic CPU readings, so that what they compute can be
checked exactly: a traced request's cost is the difference of the phases' CPU
per request over the traced share, a steady drift of the machine cancels out,
and a phase that ended late or served too few requests is not compared. Then
the plan: an untraced phase runs every request untraced, and runs of untraced
requests are cut so that the phases switch on time. Last, the cost model takes
the phases' figure within its bounds, and the export thread's CPU is read
while it works.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from crosstrace.export import BatchExporter
from crosstrace.export.transports import Transport
from crosstrace.tracing import Tracer, calibration, plan
from crosstrace.tracing.budget import (
    GROUP_RECORDED,
    GROUP_SKIPPED,
    WHOLE_BOUNDS,
    Accounting,
    CostModel,
)
from crosstrace.tracing.phases import (
    LATE_SHARE,
    MIN_PAIRS,
    MIN_REQUESTS,
    SETTLE_REQUESTS,
    TRACED_NS,
    UNTRACED_NS,
    Phases,
)
from crosstrace.tracing.plan import drop_plan
from crosstrace.tracing.sampling import OverheadController
from tracing_support import Sink, sink_tracer

UNTRACED_REQUEST = 40_000  # ns of CPU
TRACED_EXTRA = 30_000


class Feed:
    """Drives :class:`Phases` through phases of synthetic requests."""

    def __init__(
        self,
        phases: Phases,
        share: float = 0.25,
        drift: float = 0.0,
        spill: int = 0,
        switch_ns: int = 0,
    ) -> None:
        self.phases, self.share, self.drift = phases, share, drift
        # What the last traced requests of a traced phase leave the requests
        # after them (ns, all told).
        self.spill = spill
        # What a switch that reads the clocks costs after its first reading.
        self.switch_ns = switch_ns
        self.request = UNTRACED_REQUEST  # an untraced request's CPU (ns)
        self.acct = Accounting()
        self.cpu = 1_000_000_000
        self.export = 0
        self.reads = 0  # clock readings the phases asked for

    def phase(self, stretch: float = 1.0, requests: int | None = None, extra: int = 0) -> None:
        """One phase as the plan would run it, then the switch (its CPU
        *stretch* times its length: above 1 + LATE_SHARE it ended late;
        *extra* ns of CPU spent in it by something else). A traced phase is
        followed by the untraced phase's settling requests, which pay the
        spill."""
        p = self.phases
        untraced = p.untraced
        length = (UNTRACED_NS if untraced else TRACED_NS) * stretch
        share = 0.0 if untraced else self.share
        n = requests if requests is not None else round(length / self._per(share))
        self._run(n, share, extra)
        if untraced:
            return
        assert p.settling
        assert p.end - self.acct.served() == SETTLE_REQUESTS
        self._run(SETTLE_REQUESTS, 0.0, self.spill)
        assert p.untraced
        assert not p.settling

    def _per(self, share: float) -> float:
        # The machine drifts: a request costs more as time goes on.
        return self.request * (1.0 + self.drift * self.cpu / 1e9) + share * TRACED_EXTRA

    def _run(self, n: int, share: float, extra: int) -> None:
        traced = round(n * share)
        self.acct.roots += traced
        self.acct.bypassed += n - traced
        self.cpu += round(n * self._per(share)) + extra
        self.export += 1_000_000  # the export thread, measured apart
        calls = 0

        def clocks() -> tuple[int, int]:
            nonlocal calls
            self.reads += 1
            reading = self.cpu + self.export, self.export
            if not calls:  # the switch's own work follows its first reading
                self.cpu += self.switch_ns
            calls += 1
            return reading

        self.phases.switch(self.acct, clocks)

    def pairs(self, count: int) -> None:
        while self.phases.pairs() < count:
            self.phase()


def test_a_traced_request_costs_the_phases_difference_over_the_traced_share() -> None:
    phases = Phases()
    feed = Feed(phases)
    feed.phase()  # the first switch starts a traced phase
    assert not phases.untraced
    feed.pairs(MIN_PAIRS)
    figure = phases.per_trace()
    assert figure is not None
    assert figure == pytest.approx(TRACED_EXTRA, rel=0.02)


def test_what_the_last_traced_requests_leave_the_next_ones_is_theirs() -> None:
    """A traced request leaves the requests after it slower for a while. The
    last ones of a traced phase leave it to the untraced phase's first
    requests: those are measured with the traced phase, so the figure holds
    it, and the untraced phase's CPU per request does not."""
    spill = 200_000  # ns, what the phase's last traced requests leave
    phases = Phases()
    feed = Feed(phases, spill=spill)
    feed.phase()
    feed.pairs(MIN_PAIRS)
    figure = phases.per_trace()
    assert figure is not None
    traced_requests = round(TRACED_NS / (UNTRACED_REQUEST + 0.25 * TRACED_EXTRA))
    traced = round(0.25 * traced_requests)
    # The spill, shared by the phase's traced requests; it only adds.
    assert figure == pytest.approx(TRACED_EXTRA + spill / traced, rel=0.02)
    assert figure > TRACED_EXTRA + 0.9 * spill / traced
    assert phases._per[0] == pytest.approx(UNTRACED_REQUEST)


def test_a_traced_phases_end_reads_no_clock() -> None:
    """The settling requests go on with the traced phase: its end reads no
    clock (system calls), only the settling's end does, where one
    measurement ends and, after the switch, the next starts."""
    phases = Phases()
    feed = Feed(phases)
    feed.phase()  # the first switch starts a traced phase
    assert feed.reads == 2
    feed.phase()  # the traced phase, then its settling requests
    assert feed.reads == 4
    feed.phase()  # the untraced phase
    assert feed.reads == 6


def test_a_switchs_own_work_is_in_neither_phase() -> None:
    """What a switch costs between its two readings is the budget's own
    work: left in the phase it starts, it would weigh more per request on a
    short untraced phase than on a traced one, and the figure would read
    ~10 % low here."""
    phases = Phases()
    feed = Feed(phases, switch_ns=100_000)
    feed.phase()
    feed.pairs(MIN_PAIRS)
    assert phases.per_trace() == pytest.approx(TRACED_EXTRA, rel=0.02)
    assert phases._per[0] == pytest.approx(UNTRACED_REQUEST, rel=0.001)


def test_a_steady_drift_of_the_machine_cancels_out() -> None:
    """An untraced phase is set against the traced phases on both sides of it."""
    phases = Phases()
    feed = Feed(phases, drift=0.5)  # requests 50 % dearer per second of CPU
    feed.pairs(MIN_PAIRS)
    figure = phases.per_trace()
    assert figure is not None
    assert figure == pytest.approx(TRACED_EXTRA, rel=0.03)


def test_a_few_phases_disturbed_from_outside_do_not_move_the_figure() -> None:
    """The host now and then takes a ms from a phase: the highest and lowest
    comparisons are left out of the mean."""
    phases = Phases()
    feed = Feed(phases)
    feed.phase()
    for i in range(1, 400):
        feed.phase()  # traced
        feed.phase(extra=1_500_000 if i % 25 == 0 else 0)  # untraced, one in 25 disturbed
    figure = phases.per_trace()
    assert figure is not None
    assert figure == pytest.approx(TRACED_EXTRA, rel=0.02)
    # Untrimmed, the disturbed ones (each -30 us a traced request) would
    # have moved the figure by 8 %.
    values = list(phases._per_trace)
    untrimmed = sum(a * s for a, s in values) / sum(s * s for _, s in values)
    assert untrimmed < 0.95 * TRACED_EXTRA


def test_comparisons_with_few_traced_requests_weigh_little() -> None:
    """Half the comparisons have a traced share of 2 %, and a small
    disturbance (1 us a request) turns their quotient negative; the fit
    weighs each by its share, and the figure stays."""
    phases = Phases()
    feed = Feed(phases, share=0.5)
    feed.phase()
    for i in range(200):
        feed.share = 0.5 if i < 100 else 0.02
        feed.phase()  # traced
        feed.phase(extra=100_000 if i >= 100 else 0)  # untraced, ~100 requests
    figure = phases.per_trace()
    assert figure is not None
    assert figure == pytest.approx(TRACED_EXTRA, rel=0.03)
    quotients = [a / s for a, s in phases._per_trace]
    assert sum(quotients) / len(quotients) < 0.5 * TRACED_EXTRA


def test_no_figure_until_enough_comparisons() -> None:
    phases = Phases()
    feed = Feed(phases)
    feed.pairs(MIN_PAIRS - 1)
    assert phases.per_trace() is None
    feed.pairs(MIN_PAIRS)
    assert phases.per_trace() is not None


def test_a_phase_that_ended_late_is_not_compared() -> None:
    phases = Phases()
    feed = Feed(phases)
    feed.phase()
    feed.phase()  # a traced phase
    feed.phase()  # an untraced one
    assert phases.pairs() == 0
    assert not phases.untraced
    # The next traced phase ran far past its end (the process was busy
    # elsewhere): it closes no comparison, and starts none.
    feed.phase(stretch=1.0 + 2 * LATE_SHARE)
    assert phases.pairs() == 0
    feed.phase()  # untraced
    feed.phase()  # traced: only now a comparison has a traced phase on either side
    assert phases.pairs() == 0
    feed.phase()
    feed.phase()
    assert phases.pairs() == 1


def test_a_phase_with_too_few_requests_is_not_compared() -> None:
    phases = Phases()
    feed = Feed(phases)
    feed.phase()
    feed.phase()
    feed.phase(requests=MIN_REQUESTS - 1)  # an untraced phase almost nobody used
    feed.phase()
    assert phases.pairs() == 0


def test_a_phase_lasts_its_cpu_length_at_the_last_cpu_per_request() -> None:
    phases = Phases()
    feed = Feed(phases, share=0.0)
    feed.phase()
    feed.phase()  # a traced phase (nothing traced): 40 us a request
    feed.phase()  # an untraced one
    assert not phases.untraced
    assert phases.end - feed.acct.served() == TRACED_NS // UNTRACED_REQUEST


# -- the plan ------------------------------------------------------------------------------


def planned_tracer(fraction: float) -> Any:
    t = sink_tracer(Sink(), "api", overhead_budget=0.01)
    assert t.controller is not None
    t.controller.trace_fraction = fraction
    t.controller.next_tick_ns = 1 << 62  # no window closes during the test
    t._apply_knobs()
    return t


def test_an_untraced_phase_runs_every_request_untraced() -> None:
    t = planned_tracer(0.9)
    phases = t.costs.phases
    phases.untraced, phases.end = True, 1 << 62
    assert all(t.skip_request() for _ in range(2_000))
    phases.untraced = False
    traced = sum(not t.skip_request() for _ in range(2_000))
    assert traced > 1_600  # about 90 %


def test_a_phase_ends_after_its_requests_and_runs_stop_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With few traced the plan would skip up to the next measured request
    (1,024 here) at once (the draw says the next traced one is further); it
    plans up to the phase's end, and the next plan switches."""
    monkeypatch.setattr(plan, "random", lambda: 1.0 - 1e-9)  # never timed, a long gap
    t = planned_tracer(0.01)
    t.accounting.mask = 1023
    phases = t.costs.phases
    assert t.skip_request()  # the first plan starts a traced phase
    assert not phases.untraced
    assert t.accounting.served() == phases.end  # its run planned up to its end
    drop_plan(t)
    phases.end = t.accounting.served() + 4  # the phase ends 4 requests from here
    assert t.skip_request()
    assert t.skips_left == 3  # four requests, this one included
    for _ in range(3):
        assert t.skip_request()
    assert not phases.untraced
    t.skip_request()  # the next plan switches
    assert phases.untraced


def test_with_almost_nothing_traced_the_phases_pause_and_start_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A traced phase that would hold less than one traced request compares
    nothing: the plan runs up to the next measured request with no phase to
    end (no clock read), and once more is traced the phases alternate again,
    the first switch a fresh start, not a comparison with the phase before
    the pause."""
    switches = []
    real_switch = Phases.switch

    def switch(self: Phases, acct: Any, clocks: Any) -> None:
        switches.append(acct.served())
        real_switch(self, acct, clocks)

    monkeypatch.setattr(Phases, "switch", switch)
    t = planned_tracer(OverheadController.MIN_TRACE)  # the floor: one in 65,536
    t.accounting.mask = 1023
    assert t.trace_threshold > 0
    assert t.skip_request()
    assert t.skips_left == 1022  # the run goes on to the next measured request
    assert switches == []
    t.controller.trace_fraction = 0.5
    t._apply_knobs()
    drop_plan(t)
    t.skip_request()
    assert switches  # alternating again

    phases = Phases()
    feed = Feed(phases)
    feed.pairs(3)
    assert not phases.alternate(0.0)
    before = phases.pairs()
    feed.phase()  # the first phases after the pause: a fresh start, no comparison
    feed.phase()
    assert phases.pairs() == before
    assert phases.alternate(1.0)
    feed.pairs(before + 1)  # compared again


def test_phases_of_long_requests_alternate_at_their_fewest_requests() -> None:
    """A request of 50 ms of CPU is longer than a traced phase, which then
    holds its fewest requests (MIN_REQUESTS): a traced share that puts one
    traced request in those keeps the phases alternating."""
    phases = Phases()
    feed = Feed(phases, share=0.25)
    feed.request = 50_000_000
    feed.phase()
    feed.phase()  # a traced phase: its CPU per request is now known
    assert phases.alternate(1.0 / MIN_REQUESTS)
    assert not phases.alternate(0.5 / MIN_REQUESTS)


def test_the_plan_counts_its_own_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timed call of the plan (one in PLAN_TIMED at random) counts what it
    took, scaled up, as the budget's own work."""
    t = planned_tracer(0.5)
    clock = iter(range(0, 10**12, 3_000))  # each reading 3 us after the last
    monkeypatch.setattr(plan, "thread_time_ns", lambda: next(clock))
    monkeypatch.setattr(plan, "random", lambda: 0.0)  # timed (and traced: no gap)
    before = t.costs.own_ns
    assert t.skip_request() == 0
    assert t.costs.own_ns - before == pytest.approx(3_000 / plan.PLAN_TIMED)
    monkeypatch.setattr(plan, "random", lambda: plan.PLAN_TIMED)  # not timed
    t.skip_request()
    assert t.costs.own_ns - before == pytest.approx(3_000 / plan.PLAN_TIMED)


# -- the cost model and the export thread --------------------------------------------------


def test_the_cost_model_takes_the_phases_figure_within_its_bounds() -> None:
    costs = CostModel()
    costs.root_ns, costs.span_ns, costs.keep_ns = 10_000.0, 2_000.0, 0.0
    costs.bypass_ns = 0.0
    in_place = 10 * (10_000.0 + 4 * 2_000.0)  # ten roots of four children each
    total, _ = costs.record_ns(roots=10, spans=50, kept=0, unrecorded=0)
    assert total == pytest.approx(in_place)  # no figure from the phases yet
    feed = Feed(costs.phases)
    feed.pairs(MIN_PAIRS)
    total, _ = costs.record_ns(roots=10, spans=50, kept=0, unrecorded=0)
    assert total == pytest.approx(10 * TRACED_EXTRA, rel=0.02)
    costs.root_ns = 1_000.0  # now the phases' figure is far above the price in place
    costs.span_ns = 500.0
    total, _ = costs.record_ns(roots=10, spans=50, kept=0, unrecorded=0)
    assert total == pytest.approx(WHOLE_BOUNDS[1] * 10 * (1_000.0 + 4 * 500.0))


def test_the_phases_figure_is_against_tracing_off() -> None:
    """The phases set a traced request against an untraced one, which pays
    the untraced path (500 ns here): a traced request costs that much more
    than their difference against tracing off."""
    costs = CostModel()
    costs.root_ns, costs.span_ns, costs.keep_ns = 10_000.0, 2_000.0, 0.0
    costs.bypass_ns = 500.0
    Feed(costs.phases).pairs(MIN_PAIRS)
    total, fixed = costs.record_ns(roots=10, spans=50, kept=0, unrecorded=0, bypassed=90)
    assert fixed == pytest.approx(90 * 500.0)
    assert total - fixed == pytest.approx(10 * (TRACED_EXTRA + 500.0), rel=0.02)


def test_an_untraced_request_less_its_path_is_one_with_tracing_off() -> None:
    costs = CostModel()
    costs.bypass_ns = 500.0
    for _ in range(40):
        costs.observe(GROUP_SKIPPED, 50_000)
    costs.fold(Accounting())
    assert costs.off_ns() == pytest.approx(49_500.0)


def test_the_phases_figure_stands_when_the_in_place_one_reads_near_zero() -> None:
    """With almost every request traced the control group is small, and the
    in-place figure can read near zero: the phases' figure is bounded by the
    calibrated price, not by it."""
    costs = CostModel()
    costs.root_ns, costs.span_ns, costs.keep_ns = 10_000.0, 2_000.0, 0.0
    for _ in range(40):
        costs.observe(GROUP_RECORDED, 50_100)
        costs.observe(GROUP_SKIPPED, 50_000)
    costs.fold(Accounting())
    total, _ = costs.record_ns(roots=10, spans=50, kept=0, unrecorded=0)
    assert total == pytest.approx(10 * 100)  # measured in place: 100 ns a trace
    Feed(costs.phases).pairs(MIN_PAIRS)
    total, _ = costs.record_ns(roots=10, spans=50, kept=0, unrecorded=0)
    assert total == pytest.approx(10 * TRACED_EXTRA, rel=0.02)


class _BusyTransport(Transport):
    """Burns CPU in the export thread, then waits until the test has looked."""

    def __init__(self, burn_ns: int) -> None:
        self.burn_ns = burn_ns
        self.burnt = threading.Event()
        self.looked = threading.Event()

    def encode(self, signal: str, items: Sequence[Any], resource: Mapping[str, Any]) -> bytes:
        return b"x"

    def send(self, signal: str, payload: bytes) -> None:
        end = time.thread_time_ns() + self.burn_ns
        while time.thread_time_ns() < end:
            pass
        self.burnt.set()
        self.looked.wait(10.0)


def test_the_export_threads_cpu_is_read_while_it_works() -> None:
    """The phases switch every few ms: the export thread's CPU must be what it
    spent so far, not what it last noted at the end of a batch."""
    transport = _BusyTransport(burn_ns=30_000_000)
    exporter = BatchExporter(transport, max_delay_s=0.01)
    tracer = Tracer("api", sink=exporter)
    with tracer.span("op"):
        pass
    try:
        assert transport.burnt.wait(10.0)
        assert exporter.cpu_ns() >= 30_000_000
    finally:
        transport.looked.set()
        exporter.shutdown(5.0)
    # After the thread ended: the last figure it noted, and no error.
    assert exporter.cpu_ns() >= 30_000_000


def test_a_late_phase_shortens_the_next_one_at_most_by_half() -> None:
    """Work foreign to the requests (here 20x the phase's CPU) lands in one
    traced phase: the next traced phase is planned at no less than half its
    requests, not at a handful; a lasting change of the requests' cost is
    followed within a few phases."""
    phases = Phases()
    feed = Feed(phases, share=0.0)

    def planned() -> int:
        return phases.end - feed.acct.served()

    feed.phase()
    feed.phase()  # traced: 40 us a request
    feed.phase()  # untraced
    assert planned() == TRACED_NS // UNTRACED_REQUEST
    feed.phase(extra=20 * TRACED_NS)  # traced, late: 840 us a request by its CPU
    feed.phase()  # untraced
    assert not phases.untraced
    assert planned() == TRACED_NS // (2 * UNTRACED_REQUEST)
    # The requests now cost 8x as much for good, and each phase serves the
    # requests it was planned for: the phases run late until their length
    # caught up, then on time again, and are compared again.
    feed.request, feed.share = 8 * UNTRACED_REQUEST, 0.25
    for _ in range(8):
        feed.phase(requests=planned())
    assert TRACED_NS / planned() == pytest.approx(feed.request, rel=0.05)
    pairs = phases.pairs()
    for _ in range(4):
        feed.phase(requests=planned())
    assert phases.pairs() == pairs + 2


def test_a_price_is_the_median_of_the_last_calibrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """One calibration disturbed by the host (the untraced request's price
    read 9 us, not 0.5) does not move the price; a lasting change does. A
    middleware probe starts the prices afresh (they were for ``span()`` roots)."""
    t = sink_tracer(Sink(), "api", overhead_budget=0.01)
    assert t.costs.calibrations == 1  # setting the budget calibrated the prices
    found = [500.0, 9_000.0, 520.0, 2_000.0, 2_000.0, 2_000.0]
    seen: list[float] = []

    def prices(*args: Any) -> dict[str, float]:
        return {"bypass_ns": found[len(seen)]}  # every pass of a calibration alike

    monkeypatch.setattr(calibration, "prices", prices)
    costs = t.costs
    costs.add_probe(calibration.span_probe(lambda *a: _NoSpan(), None))
    for _ in found:
        costs.calibrate()
        seen.append(costs.bypass_ns)
    assert seen == [500.0, 500.0, 520.0, 520.0, 2_000.0, 2_000.0]


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
