"""Sampling decisions: trace-id ratio, rate limit, and the overhead budget.

Three layers decide what a trace costs:

1. **Head sampling by trace id** (:func:`ratio_threshold`, :func:`ratio_sampled`).
   A trace is *sampled* when the low 56 bits of its trace id are below
   ``ratio * 2**56``. The low 56 bits are the seven right-most bytes that W3C
   Trace Context level 2 requires to be random, so every service computes the
   same decision for the same trace without talking to the others, and a
   service with a smaller ratio keeps a subset of what a larger one keeps.
2. **Rate limit** (:class:`TokenBucket`): at most ``rate`` sampled traces per
   second per process (with a burst of one second's worth).
3. **Overhead budget** (:class:`OverheadController`): the operator sets the CPU
   fraction tracing may add (``0.01`` = 1 % on top of the CPU time the service
   uses without tracing). The tracer counts what it did (recorded and
   unrecorded traces, spans, kept spans: :mod:`crosstrace.tracing.budget`)
   and prices each unit with costs measured in this process; the export thread
   measures its own CPU time (``time.thread_time``). Once per window (1 s) the
   controller compares that with the process CPU time (``time.process_time``)
   over the same window and adjusts two knobs:

   * the **effective sample ratio** (at most the configured ratio), which
     scales the export cost; and
   * when recording alone already exceeds the budget, the **record fraction**:
     the share of traces recorded at all. Traces that are not recorded cost
     almost nothing, but their errors and slow requests cannot be kept by the
     tail rule. The record fraction is chosen by the high bits of the trace id,
     so services agree on it too.

None of this runs on the hot path except a comparison of two integers per
local root span; the controller's arithmetic runs once per window.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crosstrace.tracing.budget import Accounting, CostModel

__all__ = [
    "RANDOM_BITS",
    "RECORD_BITS",
    "OverheadController",
    "TokenBucket",
    "ratio_sampled",
    "ratio_threshold",
    "record_threshold",
    "recorded",
]

#: Bits of the trace id the ratio decision compares (the low 56).
RANDOM_BITS = 56
_RANDOM_MASK = (1 << RANDOM_BITS) - 1
#: Bits of the trace id the record-fraction decision compares (the high 48).
RECORD_BITS = 48
_RECORD_SHIFT = 128 - RECORD_BITS
_RECORD_MASK = (1 << RECORD_BITS) - 1


def ratio_threshold(ratio: float) -> int:
    """The integer a trace id's low 56 bits are compared with for *ratio*."""
    if ratio <= 0.0:
        return 0
    if ratio >= 1.0:
        return 1 << RANDOM_BITS
    return int(ratio * (1 << RANDOM_BITS))


def ratio_sampled(trace_id: int, threshold: int) -> bool:
    """Whether *trace_id* is sampled at *threshold* (see :func:`ratio_threshold`)."""
    return (trace_id & _RANDOM_MASK) < threshold


def record_threshold(fraction: float) -> int:
    """The threshold for the record fraction (compared with the high 48 bits)."""
    if fraction <= 0.0:
        return 0
    if fraction >= 1.0:
        return 1 << RECORD_BITS
    return int(fraction * (1 << RECORD_BITS))


def recorded(trace_id: int, threshold: int) -> bool:
    """Whether *trace_id* falls in the recorded fraction."""
    return ((trace_id >> _RECORD_SHIFT) & _RECORD_MASK) < threshold


class TokenBucket:
    """A per-process rate limit: *rate* tokens per second, burst of *rate*.

    No lock: concurrent callers may race on the refill and, rarely, let one
    extra trace through; the limit is a cost control, not an accounting rule.
    A rate of 0 or less means unlimited.
    """

    __slots__ = ("_last", "_tokens", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self._tokens = float(rate)
        self._last = time.monotonic()

    def take(self) -> bool:
        """Take one token; ``False`` when the bucket is empty."""
        rate = self.rate
        if rate <= 0.0:
            return True
        now = time.monotonic()
        tokens = min(rate, self._tokens + (now - self._last) * rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


class OverheadController:
    """Keeps the tracer's measured CPU cost under a fraction of the process's.

    :meth:`tick` (the tracer calls it once per window, from whichever thread
    starts a trace after the window elapsed) reads the tracer's counters, prices
    them with the cost model, adds the export thread's CPU time, and adjusts
    :attr:`ratio_factor` and :attr:`record_fraction`. :attr:`last_fraction` is
    the estimate of the window that just closed, :attr:`last_floor` what that
    window's requests would have cost with none of them traced (each run
    untraced, the failed and slow ones exported after the fact with the export
    thread's share for those, and the budget's own work): a budget below it cannot be
    held. It counts the exports after the fact the window had, so it is exact
    when few requests are traced (when it matters) and leaves out the failures
    of traced ones.
    """

    __slots__ = (
        "_counts_last",
        "_export_cpu_last",
        "_export_cpu_now",
        "_fixed_ns",
        "_own_last",
        "_proc_last",
        "_record_ns",
        "budget",
        "last_base_ns",
        "last_floor",
        "last_fraction",
        "next_tick_ns",
        "ratio_factor",
        "record_fraction",
        "trace_fraction",
        "window_ns",
    )

    #: Smallest adjustment step per window (avoids oscillating to zero).
    MIN_STEP = 0.25
    #: Largest increase per window.
    MAX_STEP = 1.25
    #: Smallest non-zero ratio factor the controller goes down to.
    FLOOR = 1e-6
    #: Smallest record fraction.
    MIN_RECORD = 1e-4
    #: Smallest traced fraction (one request in 65,536: what the entry
    #: points' 16 random bits can express).
    MIN_TRACE = 1.0 / 65536
    #: Process CPU per window under which the process counts as idle (knobs rise).
    MIN_BUSY_NS = 50_000_000

    def __init__(self, budget: float, window_s: float = 1.0) -> None:
        if budget < 0.0 or budget > 1.0:
            raise ValueError("overhead budget must be a fraction between 0 and 1")
        self.budget = budget
        self.window_ns = int(window_s * 1e9)
        self.ratio_factor = 1.0
        self.record_fraction = 1.0
        self.trace_fraction = 1.0
        self.last_fraction = 0.0
        self.last_floor = 0.0
        #: What the last window's work cost without tracing (the budget's base).
        self.last_base_ns = 0.0
        self._record_ns = 0
        self._export_cpu_now = 0
        self._export_cpu_last = 0
        self._counts_last: tuple[int, ...] | None = None
        self._fixed_ns = 0.0
        self._own_last = 0
        self._proc_last = time.process_time_ns()
        self.next_tick_ns = time.monotonic_ns() + self.window_ns

    def add_record_cost(self, ns: int) -> None:
        """Add request-thread tracing cost (nanoseconds, already extrapolated)."""
        self._record_ns += ns

    def set_export_cpu(self, total_ns: int) -> None:
        """The export thread's cumulative CPU time (nanoseconds)."""
        self._export_cpu_now = total_ns

    def reset_window(self) -> None:
        """Start a fresh measurement window (after a fork or a reconfiguration)."""
        self._record_ns = 0
        self._counts_last = None
        self._export_cpu_last = self._export_cpu_now
        self._proc_last = time.process_time_ns()
        self.next_tick_ns = time.monotonic_ns() + self.window_ns

    def tick(
        self,
        accounting: Accounting | None = None,
        costs: CostModel | None = None,
        export_cpu_ns: int | None = None,
        now_ns: int | None = None,
    ) -> bool:
        """Close the window if it elapsed and adjust the knobs; True if it did.

        *accounting* and *costs* price what the tracer did since the last
        window (added to what :meth:`add_record_cost` fed in); *export_cpu_ns*
        is the export thread's cumulative CPU time.
        """
        now = time.monotonic_ns() if now_ns is None else now_ns
        if now < self.next_tick_ns:
            return False
        if export_cpu_ns is not None:
            self._export_cpu_now = export_cpu_ns
        base_ns: float | None = None
        floor_ns = 0.0  # what the window would have cost with no request traced
        late_share = 0.0  # of the spans exported: the roots exported after the fact
        if accounting is not None and costs is not None:
            costs.fold(accounting)
            counts = (*accounting.snapshot(), accounting.served())
            last = self._counts_last or counts
            self._counts_last = counts
            d = [a - b for a, b in zip(counts, last, strict=True)]
            total, fixed = costs.record_ns(*d[:6])
            self._record_ns += int(total)
            self._fixed_ns += fixed
            requests = d[6]
            floor_ns = costs.floor_ns(requests)
            base_ns = costs.baseline_ns(requests)
            late_share = d[5] / d[2] if d[2] > 0 else 0.0
            own_now = costs.own_ns + costs.reads_ns
            own = max(0, own_now - self._own_last)
            self._own_last = own_now
            self._record_ns += own
            self._fixed_ns += own
            floor_ns += own  # the budget's own work runs whatever is traced
        self.next_tick_ns = now + self.window_ns
        proc = time.process_time_ns()
        proc_ns = proc - self._proc_last
        self._proc_last = proc
        record_ns = self._record_ns
        fixed_ns = self._fixed_ns
        self._record_ns = 0
        self._fixed_ns = 0.0
        export_now = self._export_cpu_now
        export_ns = max(0, export_now - self._export_cpu_last)
        self._export_cpu_last = export_now
        floor_ns += export_ns * late_share
        if self.budget <= 0.0 or proc_ns <= 0:
            self.ratio_factor = 1.0
            self.record_fraction = 1.0
            self.trace_fraction = 1.0
            return True
        self.adjust(record_ns, export_ns, proc_ns, base_ns, fixed_ns, floor_ns)
        return True

    def allowed_per_s(self) -> float:
        """CPU (ns) the budget allowed tracing per second in the last window."""
        return self.budget * self.last_base_ns * 1e9 / self.window_ns

    def adjust(
        self,
        record_ns: int,
        export_ns: int,
        proc_ns: int,
        base_ns: float | None = None,
        fixed_ns: float = 0.0,
        floor_ns: float = 0.0,
    ) -> None:
        """One control step from a window's measured costs.

        *fixed_ns* is the part of *record_ns* no knob scales (requests run
        untraced, failures exported after the fact); *floor_ns* what the
        window would have cost with no request traced. Export cost scales with
        the share of traces kept (mostly the effective ratio), the rest of the
        recording cost with the traced and record fractions. Each knob moves by
        the factor that would bring the window to the budget, bounded per
        window, so the loop converges without oscillating.
        """
        spent = record_ns + export_ns
        if proc_ns < self.MIN_BUSY_NS:
            # A nearly idle process: what tracing costs it is negligible in
            # absolute terms, and a fraction of almost nothing is noise.
            self.last_base_ns = float(proc_ns)
            self.last_fraction = spent / proc_ns
            self.last_floor = floor_ns / proc_ns
            self._raise(self.MAX_STEP)
            return
        # The budget is a fraction of what the service uses without tracing:
        # its requests at the control group's measured CPU each, else the
        # process CPU less what tracing spent.
        base = base_ns if base_ns else max(proc_ns - spent, proc_ns // 2)
        self.last_base_ns = float(base)
        allowed = self.budget * base
        self.last_fraction = spent / base
        self.last_floor = floor_ns / base
        scaled = spent - fixed_ns  # what the knobs act on
        room = allowed - fixed_ns
        if scaled <= 0:
            self._raise(self.MAX_STEP)
            return
        if spent <= allowed:
            self._raise(min(self.MAX_STEP, room / scaled))
            return
        recording = record_ns - fixed_ns
        if recording >= room:
            # Recording alone is over budget: stop exporting by ratio and
            # trace fewer requests (the rest run untraced, their failures and
            # slow runs still exported); once the traced fraction is at its
            # floor (or no entry point asks it), record fewer traces.
            self.ratio_factor = max(self.FLOOR, self.ratio_factor * self.MIN_STEP)
            step = max(self.MIN_STEP, room / recording) if room > 0 else self.MIN_STEP
            if self.trace_fraction > self.MIN_TRACE:
                self.trace_fraction = max(self.MIN_TRACE, self.trace_fraction * step)
            else:
                self.record_fraction = max(self.MIN_RECORD, self.record_fraction * step)
            return
        step = max(self.MIN_STEP, (room - recording) / export_ns) if export_ns > 0 else 1.0
        self.ratio_factor = max(self.FLOOR, min(1.0, self.ratio_factor * step))

    def _raise(self, step: float) -> None:
        # The reverse of lowering: the record fraction, the traced fraction, the ratio.
        if self.record_fraction < 1.0:
            self.record_fraction = min(1.0, max(self.MIN_RECORD, self.record_fraction) * step)
        elif self.trace_fraction < 1.0:
            self.trace_fraction = min(1.0, max(self.MIN_TRACE, self.trace_fraction) * step)
        else:
            self.ratio_factor = min(1.0, max(self.FLOOR, self.ratio_factor) * step)
