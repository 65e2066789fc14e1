"""Sampling: trace-id ratio, record fraction, rate limit, overhead controller."""

from __future__ import annotations

import random

import pytest

from crosstrace.tracing import sampling
from crosstrace.tracing.budget import (
    FLOOR_SAMPLES,
    GROUP_CONTROL,
    GROUP_SKIPPED,
    MEASURED_PER_WINDOW,
    MIN_FLOOR_SAMPLES,
    Accounting,
    CostModel,
)
from crosstrace.tracing.sampling import (
    OverheadController,
    TokenBucket,
    ratio_sampled,
    ratio_threshold,
    record_threshold,
    recorded,
)


def test_ratio_uses_the_low_56_bits_of_the_trace_id() -> None:
    threshold = ratio_threshold(0.5)
    low_half = (0xFFFF << 112) | ((1 << 55) - 1)  # high bits set, low 56 just under half
    high_half = 1 << 55
    assert ratio_sampled(low_half, threshold)
    assert not ratio_sampled(high_half, threshold)


def test_ratio_zero_and_one_are_absolute() -> None:
    rng = random.Random(1)
    ids = [rng.getrandbits(128) for _ in range(1000)]
    assert not any(ratio_sampled(t, ratio_threshold(0.0)) for t in ids)
    assert all(ratio_sampled(t, ratio_threshold(1.0)) for t in ids)


def test_ratio_decision_is_deterministic_per_trace_id() -> None:
    rng = random.Random(2)
    ids = [rng.getrandbits(128) for _ in range(1000)]
    first = [ratio_sampled(t, ratio_threshold(0.3)) for t in ids]
    second = [ratio_sampled(t, ratio_threshold(0.3)) for t in ids]
    assert first == second


def test_smaller_ratio_keeps_a_subset() -> None:
    rng = random.Random(3)
    ids = [rng.getrandbits(128) for _ in range(5000)]
    small = {t for t in ids if ratio_sampled(t, ratio_threshold(0.1))}
    large = {t for t in ids if ratio_sampled(t, ratio_threshold(0.4))}
    assert small <= large
    assert small != large


def test_ratio_matches_its_setting_statistically() -> None:
    rng = random.Random(4)
    n = 20000
    kept = sum(ratio_sampled(rng.getrandbits(128), ratio_threshold(0.25)) for _ in range(n))
    assert 0.23 < kept / n < 0.27


def test_record_fraction_uses_independent_high_bits() -> None:
    rng = random.Random(5)
    ids = [rng.getrandbits(128) for _ in range(20000)]
    rec = [t for t in ids if recorded(t, record_threshold(0.5))]
    assert 0.47 < len(rec) / len(ids) < 0.53
    # Independent of the ratio decision: about half of the recorded are sampled at 0.5.
    both = sum(ratio_sampled(t, ratio_threshold(0.5)) for t in rec)
    assert 0.45 < both / len(rec) < 0.55


def test_token_bucket_limits_to_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(sampling.time, "monotonic", lambda: now[0])
    bucket = TokenBucket(5)
    assert sum(bucket.take() for _ in range(20)) == 5  # burst of one second
    now[0] += 1.0
    assert sum(bucket.take() for _ in range(20)) == 5
    now[0] += 0.2
    assert sum(bucket.take() for _ in range(20)) == 1


def test_token_bucket_zero_rate_is_unlimited() -> None:
    bucket = TokenBucket(0)
    assert all(bucket.take() for _ in range(1000))


def test_controller_lowers_the_ratio_when_export_is_over_budget() -> None:
    ctl = OverheadController(0.01)
    # 1 s of process CPU, 2 ms recording, 18 ms exporting: 2 % against 1 %.
    ctl.adjust(record_ns=2_000_000, export_ns=18_000_000, proc_ns=1_000_000_000)
    assert ctl.record_fraction == 1.0
    # The budget is 1 % of the CPU used without tracing (980 ms): 9.8 ms, which
    # leaves 7.8 ms of room for 18 ms of export.
    assert ctl.ratio_factor == pytest.approx(7.8 / 18)
    assert ctl.last_fraction == pytest.approx(20 / 980)


def test_controller_lowers_the_traced_fraction_when_recording_alone_is_over() -> None:
    ctl = OverheadController(0.01)
    ctl.adjust(record_ns=20_000_000, export_ns=1_000_000, proc_ns=1_000_000_000)
    # 1 % of 979 ms is 9.79 ms; recording costs 20 ms: trace 9.79/20 of the requests.
    assert ctl.trace_fraction == pytest.approx(9.79 / 20)
    assert ctl.record_fraction == 1.0
    assert ctl.ratio_factor < 1.0


def test_controller_scales_only_what_the_knobs_act_on() -> None:
    """Requests run untraced still cost something (*fixed_ns*): the traced
    fraction is scaled so that the rest fits in what that leaves."""
    ctl = OverheadController(0.01)
    # 1 % of 979 ms is 9.79 ms, of which 4 ms go to untraced requests whatever
    # the knobs: 16 ms of traced requests must shrink to 5.79 ms.
    ctl.adjust(record_ns=20_000_000, export_ns=1_000_000, proc_ns=1_000_000_000, fixed_ns=4e6)
    assert ctl.trace_fraction == pytest.approx(5.79 / 16)
    # Fixed cost alone over the budget: the smallest step, every window.
    ctl = OverheadController(0.01)
    ctl.adjust(record_ns=12_000_000, export_ns=0, proc_ns=1_000_000_000, fixed_ns=11e6)
    assert ctl.trace_fraction == OverheadController.MIN_STEP


def test_controller_raises_knobs_again_when_under_budget() -> None:
    ctl = OverheadController(0.01)
    ctl.ratio_factor = 0.1
    ctl.adjust(record_ns=1_000_000, export_ns=1_000_000, proc_ns=1_000_000_000)
    assert ctl.ratio_factor == pytest.approx(0.125)  # at most x1.25 per window
    ctl.trace_fraction = 0.5
    ctl.adjust(record_ns=1_000_000, export_ns=1_000_000, proc_ns=1_000_000_000)
    assert ctl.trace_fraction == pytest.approx(0.625)
    assert ctl.ratio_factor == pytest.approx(0.125)  # the traced fraction rises first
    ctl.record_fraction = 0.5  # and the record fraction before it
    ctl.adjust(record_ns=1_000_000, export_ns=1_000_000, proc_ns=1_000_000_000)
    assert ctl.record_fraction == pytest.approx(0.625)
    assert ctl.trace_fraction == pytest.approx(0.625)


def test_controller_lowers_the_record_fraction_once_the_traced_fraction_is_at_its_floor() -> None:
    """Roots no entry point asks about (``span()`` in a worker) follow the
    record fraction, lowered once the traced fraction can go no lower."""
    ctl = OverheadController(0.01)
    ctl.trace_fraction = OverheadController.MIN_TRACE
    ctl.adjust(record_ns=40_000_000, export_ns=0, proc_ns=1_000_000_000)
    assert ctl.trace_fraction == OverheadController.MIN_TRACE
    assert ctl.record_fraction == pytest.approx(0.25)  # the smallest step (9.6 / 40 is less)


def test_controller_converges_on_a_simulated_load() -> None:
    """With cost proportional to the knobs, the loop settles at the budget."""
    ctl = OverheadController(0.02)
    proc = 1_000_000_000
    full_record, full_export = 5_000_000, 200_000_000  # 0.5 % + 20 % at ratio 1
    for _ in range(30):
        rec = full_record * ctl.record_fraction * ctl.trace_fraction
        exp = full_export * ctl.ratio_factor
        ctl.adjust(int(rec), int(exp), proc)
    spent = full_record * ctl.record_fraction * ctl.trace_fraction
    spent += full_export * ctl.ratio_factor
    assert spent / proc == pytest.approx(0.02, rel=0.25)


def test_controller_tick_waits_for_the_window() -> None:
    ctl = OverheadController(0.01, window_s=10.0)
    assert not ctl.tick(now_ns=ctl.next_tick_ns - 1)
    assert ctl.tick(now_ns=ctl.next_tick_ns)


def test_controller_rejects_a_bad_budget() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        OverheadController(1.5)


def test_an_idle_process_keeps_its_knobs_up() -> None:
    """Under 50 ms of process CPU in a window the fraction is noise: knobs rise."""
    ctl = OverheadController(0.01)
    ctl.trace_fraction = 0.5
    ctl.adjust(record_ns=5_000_000, export_ns=0, proc_ns=10_000_000)  # 50 % of almost nothing
    assert ctl.trace_fraction == pytest.approx(0.625)  # rises instead of falling
    assert ctl.last_fraction == pytest.approx(0.5)


def test_the_floor_is_what_the_window_would_cost_with_nothing_traced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every request as a skipped one: 100 traced and 900 untraced requests
    of 50 us (49.5 us with tracing off), each untraced one paying 0.5 us,
    would have cost 0.5 ms."""
    clock = iter(range(0, 10 * 10**9, 10**9))  # a busy process: 1 s of CPU a window
    monkeypatch.setattr(sampling.time, "process_time_ns", lambda: next(clock))
    costs, acct = CostModel(), Accounting()
    costs.bypass_ns = 500.0
    for _ in range(100):
        costs.observe(GROUP_SKIPPED, 50_000)
    ctl = OverheadController(0.01)
    assert ctl.tick(acct, costs, 0, now_ns=ctl.next_tick_ns)
    acct.roots, acct.spans, acct.bypassed = 100, 500, 900
    assert ctl.tick(acct, costs, 0, now_ns=ctl.next_tick_ns)
    assert ctl.last_floor == pytest.approx(1000 * 500 / (1000 * 49_500))
    assert ctl.last_fraction > ctl.last_floor  # the traced requests cost more
    # Two of 200 spans exported were roots of untraced requests exported after
    # the fact: 1 % of the export thread's 1 ms is theirs, and in the floor.
    # 1,000 requests: 999 untraced, 2 of them exported after the fact (roots
    # too), and one traced of 5 spans.
    acct.roots, acct.spans, acct.kept_spans, acct.late = 103, 507, 200, 2
    acct.bypassed += 999
    costs.own_ns = 2_000_000  # a calibration ran: the budget's own work, whatever is traced
    assert ctl.tick(acct, costs, 1_000_000, now_ns=ctl.next_tick_ns)
    expected = 1000 * 500 + 1_000_000 * 2 / 200 + 2_000_000
    assert ctl.last_floor == pytest.approx(expected / (1000 * 49_500))


def test_the_untraced_path_is_priced_in_place_once_both_kinds_have_enough_samples() -> None:
    """What ran around the application in the measured untraced requests,
    timed with the untraced path's steps against without them: the
    difference of the medians (0.9 us) replaces the calibrated price once
    each kind has enough samples, whatever a few much longer ones (the
    host) would do to a mean."""
    costs = CostModel()
    costs.bypass_ns = 200.0
    half = MIN_FLOOR_SAMPLES // 2
    for window in range(2):
        for i in range(half):
            slow = 400_000 if i % 50 == 0 else 0  # now and then one takes far longer
            costs.observe_untraced(costs.floor_turn(), 1_400 + slow, 50_900 + slow)
            costs.observe_untraced(costs.floor_turn(), 500 + (i % 7), 50_000)
        costs.fold(Accounting())
        if window == 0:  # half the samples: the calibrated price still
            assert costs.skipped_ns() == 200.0
    assert costs.skipped_ns() == pytest.approx(900.0, abs=7)
    # Those timed with the steps are skipped requests too: less the untraced
    # path, such a request is one with tracing off.
    skipped = costs.measured(GROUP_SKIPPED)
    assert skipped is not None
    assert skipped > 50_900  # the mean has the long ones
    assert costs.off_ns() == pytest.approx(skipped - costs.skipped_ns())


def test_the_untraced_path_in_place_is_not_moved_by_the_requests_own_cpu() -> None:
    """Heavy requests vary by tens of microseconds; what runs around the
    application does not, so the price of the steps comes out exact however
    the requests themselves vary (whole requests: the difference of two
    medians would move by microseconds)."""
    rng = random.Random(7)
    costs = CostModel()
    for _ in range(MIN_FLOOR_SAMPLES):
        costs.observe_untraced(costs.floor_turn(), 1_000, rng.randint(250_000, 350_000))
        costs.observe_untraced(costs.floor_turn(), 480, rng.randint(250_000, 350_000))
    costs.fold(Accounting())
    assert costs.skipped_ns() == 520.0


def test_a_skipped_request_is_measured_less_the_two_clock_reads_inside_it() -> None:
    costs = CostModel()
    costs.clock_ns = 450.0
    costs.observe_untraced(True, 1_000, 50_900)
    costs.observe_untraced(False, 480, 50_000)  # not a skipped request's figure
    assert costs._n[GROUP_SKIPPED] == 1
    assert costs._sum[GROUP_SKIPPED] == 50_000


def test_the_untraced_path_in_place_is_never_priced_below_nothing() -> None:
    costs = CostModel()
    costs.bypass_ns = 200.0
    for _ in range(MIN_FLOOR_SAMPLES):
        costs.observe_untraced(costs.floor_turn(), 500, 50_000)  # with the steps
        costs.observe_untraced(costs.floor_turn(), 800, 50_300)  # without: noise
    costs.fold(Accounting())
    assert costs.skipped_ns() == 0.0


def test_the_untraced_path_in_place_follows_the_last_samples() -> None:
    """Each kind keeps its last FLOOR_SAMPLES: a lasting change is followed."""
    costs = CostModel()
    for price in (300, 1_200):
        for _ in range(FLOOR_SAMPLES):
            costs.observe_untraced(costs.floor_turn(), 500 + price, 50_000 + price)
            costs.observe_untraced(costs.floor_turn(), 500, 50_000)
        costs.fold(Accounting())
        assert costs.skipped_ns() == price


def test_calibrating_takes_at_most_a_tenth_of_what_the_budget_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A calibration of 50 ms: every 30 s while the budget allows 1 CPU
    second a second; every 100 s when it allows 5 ms (a 1 % budget of a
    process using half a core); never rarer than every 10 minutes."""
    from crosstrace.tracing import budget

    now = 10**12
    thread = iter(range(0, 10**12, 50_000_000))  # each calibration: 50 ms of CPU
    monkeypatch.setattr(budget.time, "thread_time_ns", lambda: next(thread))
    monkeypatch.setattr(budget.time, "monotonic_ns", lambda: now)
    costs = CostModel()  # nothing to run: the clock says what it cost
    waits = []
    for allowed in (1e9, 5e6, 1e3, 0.0):
        costs.calibrate(allowed)
        waits.append((costs._next_ns - now) / 1e9)
    assert waits == [budget.RECALIBRATE_S, 100.0, budget.MAX_RECALIBRATE_S, budget.RECALIBRATE_S]
    assert costs.own_ns == 4 * 50_000_000


def test_the_controller_tells_what_the_budget_allowed_a_second() -> None:
    ctl = OverheadController(0.02, window_s=2.0)
    ctl.adjust(record_ns=1_000_000, export_ns=0, proc_ns=10**9, base_ns=8e8)
    assert ctl.allowed_per_s() == pytest.approx(0.02 * 8e8 / 2.0)


def test_closing_a_window_counts_its_own_time_in_the_next_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing a window is the budget's own work: what it took is counted in
    the next window, in the floor and as cost no knob scales."""
    from crosstrace.tracing import budget
    from tracing_support import Sink, sink_tracer

    t = sink_tracer(Sink(), "api", overhead_budget=0.01)
    ctl, costs = t.controller, t.costs
    assert ctl is not None
    costs._next_ns = 1 << 62  # no calibration during the test
    costs.clock_ns = 0.0  # the measured requests' clock reads: counted apart (below)
    clock = iter(range(0, 10**12, 700_000))  # each reading 0.7 ms after the last
    real = budget.time.thread_time_ns
    before = costs.own_ns  # setting the budget calibrated
    monkeypatch.setattr(budget.time, "thread_time_ns", lambda: next(clock))
    ctl.next_tick_ns = 0
    budget.close_window(t)
    monkeypatch.setattr(budget.time, "thread_time_ns", real)
    assert costs.own_ns - before == 700_000
    for _ in range(100):
        costs.observe(GROUP_SKIPPED, 50_000)
    ctl.next_tick_ns = 0
    t.accounting.bypassed += 1000
    seen = {}
    adjust = OverheadController.adjust

    def spy(self: OverheadController, *args: float) -> None:
        seen["fixed"], seen["floor"] = args[4], args[5]
        adjust(self, *args)

    monkeypatch.setattr(OverheadController, "adjust", spy)
    assert ctl.tick(t.accounting, costs, 0)
    untraced = 1000 * costs.skipped_ns()  # the window's requests, all untraced
    assert seen["fixed"] == pytest.approx(untraced + 700_000)
    assert seen["floor"] == pytest.approx(untraced + 700_000)


@pytest.mark.parametrize(
    ("skipped", "every"), [(100, 4), (1_000, 16), (10_000, 256), (300_000, 1024)]
)
def test_the_measured_untraced_requests_are_paced_by_the_last_windows_count(
    skipped: int, every: int
) -> None:
    """One in a power of two of the next window's untraced requests is
    measured: at the last window's pace, between once and twice
    MEASURED_PER_WINDOW of them (fewer only at the one-in-4 bound, more only
    at the one-in-1024 one)."""
    costs, acct = CostModel(), Accounting()
    acct.bypassed = skipped
    costs.fold(acct)
    assert acct.mask + 1 == every
    measured = skipped / every
    if every == 4:
        assert measured < 2 * MEASURED_PER_WINDOW
    elif every == 1024:
        assert measured >= MEASURED_PER_WINDOW
    else:
        assert MEASURED_PER_WINDOW <= measured < 2 * MEASURED_PER_WINDOW


def test_the_clock_reads_of_measured_requests_are_the_budgets_own_work() -> None:
    """One untraced request in ``mask + 1`` is measured, four reads of the
    thread's CPU clock each (around the application and the whole request),
    and each control request, two reads."""
    costs, acct = CostModel(), Accounting()
    costs.clock_ns = 400.0
    acct.mask = 31
    acct.bypassed = 3_200  # 100 of them measured
    for _ in range(10):
        costs.observe(GROUP_CONTROL, 50_000)
    costs.fold(acct)
    assert costs.reads_ns == 400 * (4 * 100 + 2 * 10)
    assert costs.own_ns == 0  # priced, not timed: no measured request holds them
