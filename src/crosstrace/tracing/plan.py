"""Which requests the overhead budget leaves untraced: planned ahead, paid with a countdown.

Below a small budget an entry point runs most requests as with tracing off.
Deciding that per request with a random draw costs each request a call, a draw
and counters on two objects, and between requests doing real work that costs
several times what it does in a loop. So the decisions are planned: the
untraced requests before the next traced one are one geometric draw (the same
law as a draw per request), and most requests pay a countdown on the tracer
(``tracer.skips_left``) and nothing else. :func:`skip_request` answers when the
countdown is at zero, and plans the next run; :func:`drop_plan` forgets the
plan when the traced fraction changes. While the budget leaves requests
untraced, the plan alternates traced phases with short phases in which every
request runs untraced: what a traced request costs the whole process is
measured from the two (:mod:`crosstrace.tracing.phases`).

Planning is part of what tracing costs, and between requests doing real work
a call costs microseconds (its code gone cold, a phase's switch reading the
CPU clocks), a few tenths of a point of a light request's CPU when the plan
runs for every measured request. So one call in :data:`PLAN_TIMED` at random
is timed, and what it took, scaled up, is counted as the budget's own work
(:attr:`~crosstrace.tracing.budget.CostModel.own_ns`).
"""

from __future__ import annotations

import math
import time
from random import random
from time import thread_time_ns
from typing import Any

__all__ = ["PLAN_TIMED", "SKIP_MEASURED", "TRACE_ALL", "drop_plan", "skip_request"]

#: What :func:`skip_request` returns for a skipped request to measure.
SKIP_MEASURED = 2
#: ``trace_threshold`` when every request is traced: the traced fraction is
#: ``trace_threshold / TRACE_ALL``.
TRACE_ALL = 1 << 16
#: Share of the plan's calls that are timed (each timing is two reads of the
#: thread's CPU clock, system calls; a random sample, so that it does not
#: follow the phases' rhythm).
PLAN_TIMED = 0.25


def skip_request(tracer: Any) -> int:
    """Whether the overhead budget leaves this request untraced: 0 (no), 1
    (yes) or :data:`SKIP_MEASURED` (yes, and measure its CPU time).

    Entry points ask only when ``tracer.trace_threshold`` is below
    :data:`TRACE_ALL`. A skipped request runs as with tracing off (its failures
    and slow runs are still exported, built after the fact); it is counted,
    and one in ``accounting.mask + 1`` is measured (the budget's control group)
    and lets the controller close its window (no trace may start for a while
    when almost every request is skipped).

    ``tracer.skips_left`` counts down the planned untraced requests before
    the next one that is traced or measured; entry points on a hot path count
    it down themselves::

        left = tracer.skips_left
        if left:
            tracer.skips_left = left - 1   # untraced, nothing else to do
            skip = 1
        elif tracer.trace_threshold < TRACE_ALL:
            skip = tracer.skip_request()

    No lock: threads racing on the countdown change which requests are
    traced, not the traced fraction.
    """
    left = tracer.skips_left
    if left:
        tracer.skips_left = left - 1
        return 1
    fate: int = tracer.skip_next
    if fate < 0:
        if random() < PLAN_TIMED:
            t0 = thread_time_ns()
            fate = _plan(tracer)
            tracer.costs.own_ns += int((thread_time_ns() - t0) / PLAN_TIMED)
        else:
            fate = _plan(tracer)
    else:
        tracer.skip_next = -1
    if fate == SKIP_MEASURED:
        ctl = tracer.controller
        if ctl is not None and time.monotonic_ns() >= ctl.next_tick_ns:
            tracer._tick()
    return fate


def _plan(tracer: Any) -> int:
    """Decide this request and plan the next ones (see :func:`skip_request`)."""
    acct = tracer.accounting
    phases = tracer.costs.phases
    p = tracer.trace_threshold / TRACE_ALL
    if phases.alternate(p):
        left = phases.end - acct.served()  # requests left in the phase
        if left <= 0:
            sink = tracer.sink

            def clocks() -> tuple[int, int]:
                return time.process_time_ns(), sink.cpu_ns() if sink is not None else 0

            phases.switch(acct, clocks)
            left = phases.end - acct.served()
        if phases.untraced:
            p = 0.0
    else:
        left = 1 << 62  # no phase to end
    mask = acct.mask
    # Untraced requests from this one to the next measured one (1: this one).
    to_measured = mask + 1 - (acct.bypassed & mask)
    if p >= 1.0:
        gap = 0
    elif p <= 0.0:
        gap = to_measured
    else:  # untraced requests before the next traced one
        gap = int(math.log(1.0 - random()) / math.log1p(-p))
    if gap == 0:
        return 0  # traced; the next request is decided afresh
    if gap > left and to_measured > left:
        # The run is cut at the phase's end, so that the next plan switches;
        # the draw then starts again (the law of what is left is the same).
        acct.bypassed += left
        tracer.skips_left = left - 1
        return 1
    if gap < to_measured:
        acct.bypassed += gap
        tracer.skips_left = gap - 1
        tracer.skip_next = 0
        return 1
    # The measured one comes first; after it the draw starts again (the law
    # of the requests left to the gap is the same geometric law).
    acct.bypassed += to_measured
    if to_measured == 1:
        return SKIP_MEASURED
    tracer.skips_left = to_measured - 2
    tracer.skip_next = SKIP_MEASURED
    return 1


def drop_plan(tracer: Any) -> None:
    """Forget the requests *tracer* planned (the traced fraction changed):
    the next request is decided afresh, and the planned skips are uncounted."""
    planned = tracer.skips_left + (tracer.skip_next == SKIP_MEASURED)
    tracer.skips_left = 0
    tracer.skip_next = -1
    tracer.accounting.bypassed -= planned
