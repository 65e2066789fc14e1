"""Alternating phases: what a traced request costs the process, all of it.

The cost model (:mod:`crosstrace.tracing.budget`) times a traced request
where it runs. Part of what tracing costs lands elsewhere: the application
code that runs after a traced request is slower (the tracer's code and data
took its caches and branch predictors), and the garbage collector pays for a
trace's objects later. No timing of the traced requests sees that; comparing
the service with and without tracing over alternating slices of time does,
which is how the cost is measured from outside (``benchmarks/bench_budget.py``).

So while the budget leaves requests untraced, their plan
(:mod:`crosstrace.tracing.plan`) alternates two phases: a *traced* phase of
about :data:`TRACED_NS` of CPU, planned as usual, and an *untraced* phase, in
which every request runs untraced (its failure or slow run still exported
after the fact). An untraced phase starts with :data:`SETTLE_REQUESTS`
requests that are measured with the traced phase before them: a traced
request leaves the requests after it slower for a while (measured on the
benchmark's heavy request: the next one ~3 us, the tenth still ~0.5 us), and
what the last traced requests of a phase leave belongs to them, not to the
untraced phase they are compared with. The rest of the untraced phase lasts
about :data:`UNTRACED_NS`. A phase (and its settling part) is a number of
requests (its length at the last phase's CPU per request), so whether it has
ended is a comparison of counters the plan makes anyway; runs of untraced
requests are planned up to its end, never across it. Where a measurement
ends (an untraced phase, a traced phase with its settling requests)
:meth:`Phases.switch` reads the process's CPU time less the export thread's
(measured apart) and the tracer's request counters, and reads the clocks
again where the next measurement starts, once its own work is done: the
switch (its clock readings, system calls, and its bookkeeping) is the
budget's own work, counted apart with the plan's, not the phases'. Left
in them, the same few microseconds weighed on an untraced phase's few
requests as on a traced phase's many, and the figure read low: on the
benchmark's heavy request (~12 requests to an untraced phase, ~66 to a
traced one with its settling) the first request of an untraced phase ran
~13 us over the next ones, the first of a traced phase ~9 us. Each
untraced phase, set against the mean of the traced phases on either side
of it (so that a steady drift of the machine cancels out), gives what a
traced request cost the request threads::

    (CPU per request, traced phases - CPU per request, untraced phase)
        / share of the traced phases' requests that were traced

The last :data:`PAIRS` of these, the highest and lowest :data:`TRIM` of
them left out, fitted by least squares (each weighs by its traced share:
with few traced requests a quotient is mostly noise) give
:meth:`Phases.per_trace`. Trimmed, because now and then a phase costs much
more for reasons outside the process (the host); a fit, not the median,
because tracing's own rare costs (a larger garbage collection) belong in
the figure: the median of the same comparisons read ~10 % less on the
benchmark's light request. A phase that took far more CPU than planned (the
process was busy with other work, or no plan was made for a while) is not
compared, and lengthens the CPU per request the next phase is planned from
at most :data:`LATE_GROWTH`-fold. While a traced phase would hold less
than one traced request (the budget traces almost nothing), a comparison
would say nothing: the phases pause, and start afresh when more is traced
(:meth:`Phases.alternate`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = [
    "LATE_GROWTH",
    "LATE_SHARE",
    "MIN_PAIRS",
    "PAIRS",
    "SETTLE_REQUESTS",
    "TRACED_NS",
    "TRIM",
    "UNTRACED_NS",
    "Phases",
]

#: Length of a traced phase and of an untraced one (after its settling
#: requests): the untraced phases take about a fifth of the time, so a budget
#: can still trace up to ~75 % of requests.
TRACED_NS = 16_000_000
UNTRACED_NS = 4_000_000
#: Requests at the start of an untraced phase measured with the traced phase
#: before it (what its last traced requests leave the next ones).
SETTLE_REQUESTS = 8
#: A phase whose CPU exceeds its length by more than this share of it (the
#: process was busy elsewhere, or no plan was made) is not compared.
LATE_SHARE = 0.5
#: CPU per request assumed before the first phase was measured.
FIRST_PER_REQUEST_NS = 100_000
#: How much a late phase may raise the CPU per request the next phase's
#: length is from (a phase is a count of requests).
LATE_GROWTH = 2.0
#: Comparisons kept (about 10 s of phases), and needed before there is a figure.
PAIRS = 500
MIN_PAIRS = 50
#: Share of the comparisons left out at each end (ranked by what they say a
#: traced request costs) before the fit.
TRIM = 0.1
#: Fewest requests a phase needs to count (fewer: its CPU per request is noise).
MIN_REQUESTS = 8


class Phases:
    """The alternation of traced and untraced phases, and what it measured.

    CPU is the process's CPU time, not wall time: a request waiting on I/O
    does not stretch a phase. The export thread's CPU time is taken off: it
    is measured apart, and it exports a phase's spans during the next ones.
    """

    __slots__ = (
        "_known",
        "_last",
        "_mark",
        "_pending",
        "_per",
        "_per_trace",
        "end",
        "settling",
        "untraced",
    )

    def __init__(self) -> None:
        #: Whether the current phase runs every request untraced (the first
        #: switch starts a traced one).
        self.untraced = True
        #: Whether the current (untraced) phase is in its settling requests,
        #: which are measured with the traced phase before them.
        self.settling = False
        #: The request count (``Accounting.served``) at which the current phase ends.
        self.end = 0
        # Where the current phase started: (CPU less the export thread's,
        # requests, traced requests).
        self._mark: tuple[int, int, int] | None = None
        # The last traced phase (CPU per request, traced share), and the
        # untraced phase after it (CPU per request) awaiting the next one.
        self._last: tuple[float, float] | None = None
        self._pending: tuple[tuple[float, float], float] | None = None
        # Each comparison: (added CPU per request, traced share).
        self._per_trace: deque[tuple[float, float]] = deque(maxlen=PAIRS)
        # CPU per request of the last phase of each kind (untraced, traced
        # with its settling requests) with enough requests (a late one's
        # bounded): the next one's length in requests is from it; and whether
        # it was measured yet.
        self._per = [float(FIRST_PER_REQUEST_NS)] * 2
        self._known = [False, False]

    def switch(self, acct: Any, clocks: Callable[[], tuple[int, int]]) -> None:
        """End the current phase (or an untraced phase's settling requests),
        its figures kept if it ran as planned, and start what comes next.
        *clocks* reads the process's CPU time and the export thread's (ns);
        it is called only where a measurement ends (not at a traced phase's
        end: the settling requests go on with it), twice: where the
        measurement ends, and where the next one starts, after the switch."""
        n: int = acct.served()
        if not self.untraced:
            # The traced phase goes on being measured over the settling
            # requests, which run untraced: no reading here.
            self.untraced = self.settling = True
            self.end = n + SETTLE_REQUESTS
            return
        cpu_ns, export_cpu_ns = clocks()
        cpu = cpu_ns - export_cpu_ns
        traced = n - acct.bypassed
        mark = self._mark
        kind = 1 if self.settling else 0  # a traced phase and its settling, or untraced
        length = UNTRACED_NS if kind == 0 else TRACED_NS + SETTLE_REQUESTS * self._per[0]
        requests = n - mark[1] if mark is not None else 0
        if mark is None or requests < MIN_REQUESTS:
            self._last = self._pending = None
        else:
            per_request = (cpu - mark[0]) / requests
            late = cpu - mark[0] > (1.0 + LATE_SHARE) * length
            # The next phase's length is from it; a late phase raises it at
            # most LATE_GROWTH-fold (work foreign to the requests in one
            # phase does not shrink the next ones to a few requests, and a
            # lasting change is followed within a few phases), unless the
            # last figure was still the first guess.
            if late and self._known[kind]:
                per_request = min(per_request, LATE_GROWTH * self._per[kind])
            self._per[kind] = per_request
            self._known[kind] = True
            if late:
                # The process was busy elsewhere, or no plan was made for a
                # while (every request traced), or the length was a guess.
                self._last = self._pending = None
            elif kind == 0:
                self._pending = (self._last, per_request) if self._last else None
            else:
                this = (per_request, (traced - mark[2]) / requests)
                if self._pending is not None:
                    (before, share_before), untraced = self._pending
                    share = (share_before + this[1]) / 2
                    if share > 0.0:
                        added = (before + this[0]) / 2 - untraced
                        self._per_trace.append((added, share))
                self._last, self._pending = this, None
        if self.settling:  # the untraced phase proper starts
            self.settling = False
            self.end = n + max(MIN_REQUESTS, int(UNTRACED_NS / max(1.0, self._per[0])))
        else:  # a traced phase starts
            self.untraced = False
            self.end = n + self._traced_requests()
        # The next measurement starts here, after this switch's own work
        # (see the module's docstring).
        cpu_ns, export_cpu_ns = clocks()
        self._mark = (cpu_ns - export_cpu_ns, n, traced)

    def alternate(self, p: float) -> bool:
        """Whether the phases alternate at traced fraction *p*: only while a
        traced phase (its length in requests, at least :data:`MIN_REQUESTS`)
        would hold one traced request or more. Paused, nothing is measured,
        and the first switch after starts afresh."""
        if p * self._traced_requests() >= 1.0:
            return True
        self._mark = None
        return False

    def _traced_requests(self) -> int:
        """A traced phase's length in requests, at its last CPU per request."""
        return max(MIN_REQUESTS, int(TRACED_NS / max(1.0, self._per[1])))

    def per_trace(self) -> float | None:
        """What a traced request costs the request threads (ns), once there
        are :data:`MIN_PAIRS` comparisons: the comparisons ranked by what they
        say a traced request costs, the highest and lowest :data:`TRIM` left
        out, and the rest fitted by least squares through the origin (added
        CPU = cost x traced share), so that a comparison with few traced
        requests, whose quotient is mostly noise, weighs little."""
        values = self._per_trace
        if len(values) < MIN_PAIRS:
            return None
        ordered = sorted(values, key=lambda v: v[0] / v[1])
        k = int(len(ordered) * TRIM)
        kept = ordered[k : len(ordered) - k]
        return sum(a * s for a, s in kept) / sum(s * s for _, s in kept)

    def pairs(self) -> int:
        """Comparisons kept."""
        return len(self._per_trace)
