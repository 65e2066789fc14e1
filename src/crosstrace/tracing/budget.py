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

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RECALIBRATE_S", "Accounting", "CostModel", "Probe"]

log = logging.getLogger("crosstrace.tracer")

#: Seconds between two calibrations (the first runs when a budget is set).
RECALIBRATE_S = 30.0

#: A probe runs one request through a middleware; the argument says whether
#: tracing is on for it (a private, always-recording tracer) or off.
Probe = Callable[[Any], None]


class Accounting:
    """Counters the tracer updates once per trace (plain ints, no lock)."""

    __slots__ = ("kept_spans", "roots", "spans", "unrecorded")

    def __init__(self) -> None:
        #: Local roots recorded (their segment settled, kept or dropped).
        self.roots = 0
        #: Spans recorded, local roots included.
        self.spans = 0
        #: Spans of kept segments, handed to the exporter.
        self.kept_spans = 0
        #: Local roots of traces not recorded (a non-recording span).
        self.unrecorded = 0

    def snapshot(self) -> tuple[int, int, int, int]:
        """``(roots, spans, kept_spans, unrecorded)``."""
        return self.roots, self.spans, self.kept_spans, self.unrecorded


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

    Until the first calibration the prices are conservative defaults (a slow
    machine's figures) so that a budget set at start-up errs on the cheap side.
    """

    __slots__ = (
        "_make_tracer",
        "_next_ns",
        "_open_span",
        "_probes",
        "calibration_ns",
        "calibrations",
        "keep_ns",
        "root_ns",
        "span_ns",
        "unrecorded_ns",
    )

    #: Roots and children per calibration run (a few milliseconds in all).
    ROUNDS = 200
    CHILDREN = 4

    def __init__(
        self,
        make_tracer: Callable[..., Any] | None = None,
        open_span: Callable[..., Any] | None = None,
    ) -> None:
        # What calibration runs: the tracer class and its span opener (given by
        # the tracer, so that this module does not import the layer above).
        self._make_tracer = make_tracer
        self._open_span = open_span
        self.root_ns = 12_000.0
        self.span_ns = 4_000.0
        self.keep_ns = 1_000.0
        self.unrecorded_ns = 2_000.0
        #: CPU spent calibrating so far (counted as tracing cost).
        self.calibration_ns = 0
        self.calibrations = 0
        self._next_ns = 0
        self._probes: list[Probe] = []

    def add_probe(self, probe: Probe) -> None:
        """Price a request through a middleware too (at most a few are kept)."""
        if len(self._probes) < 4 and probe not in self._probes:
            self._probes.append(probe)

    def record_ns(self, roots: int, spans: int, kept: int, unrecorded: int) -> float:
        """The request-thread CPU the counted work cost."""
        children = max(0, spans - roots)
        return (
            roots * self.root_ns
            + children * self.span_ns
            + kept * self.keep_ns
            + unrecorded * self.unrecorded_ns
        )

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
        n, k = self.ROUNDS, self.CHILDREN
        attrs = {"calibrate.a": 1, "calibrate.b": "x", "calibrate.c": True}
        rec = make("calibrate", _DiscardSink(), sample_ratio=0.0)
        keep = make("calibrate", _DiscardSink(), sample_ratio=1.0)
        unrec = make("calibrate", None, sample_ratio=0.0)
        unrec.record_threshold = 0

        def roots(t: Any, children: int) -> int:
            t0 = time.thread_time_ns()
            for _ in range(n):
                with span("calibrate", 2, attrs, t):
                    for _ in range(children):
                        with span("calibrate.child", 1, attrs):
                            pass
            return time.thread_time_ns() - t0

        def empty() -> int:
            t0 = time.thread_time_ns()
            for _ in range(n):
                with _Null():
                    for _ in range(k):
                        with _Null():
                            pass
            return time.thread_time_ns() - t0

        roots(rec, 1)  # warm up
        base = empty() / n
        r0 = roots(rec, 0) / n
        rk = roots(rec, k) / n
        kk = roots(keep, k) / n
        u0 = roots(unrec, k) / n
        span_ns = max(200.0, (rk - r0) / k)
        self.root_ns = max(500.0, r0)
        self.span_ns = span_ns
        self.keep_ns = max(0.0, (kk - rk) / (k + 1))
        self.unrecorded_ns = max(100.0, u0 - base)
        for probe in list(self._probes):
            self._price_probe(probe, keep)

    def _price_probe(self, probe: Probe, tracer: Any) -> None:
        """A middleware's own tracing work per request, on top of the root span."""
        n = self.ROUNDS // 2
        probe(None)
        t0 = time.thread_time_ns()
        for _ in range(n):
            probe(None)
        off = (time.thread_time_ns() - t0) / n
        probe(tracer)
        t0 = time.thread_time_ns()
        for _ in range(n):
            probe(tracer)
        on = (time.thread_time_ns() - t0) / n
        # The probe's root span is a kept root; what it adds beyond is the
        # middleware's share, charged to every recorded root.
        extra = on - off - self.root_ns - self.keep_ns
        if extra > 0:
            self.root_ns += extra
            self.unrecorded_ns += extra * 0.5


class _Null:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
