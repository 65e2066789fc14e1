"""Tracers and the span API services call, with the per-trace keep/drop rule.

Use :func:`span` as a context manager or a decorator (sync and async)::

    with crosstrace.span("resize", kind=SpanKind.INTERNAL, attributes={"flavor": f}) as s:
        s.add_event("quota checked")

    @crosstrace.span("fetch_image")
    async def fetch_image(...): ...

An exception leaving the block is recorded as an ``exception`` event
(``exception.type``, ``exception.message``, ``exception.stacktrace``), the span
gets error status, and the exception propagates unchanged. The span model
itself (:class:`~crosstrace.tracing.spans.Span`, the current span) is in
:mod:`crosstrace.tracing.spans`, the shared data types in
:mod:`crosstrace.tracing.model`, the cost accounting behind the overhead budget
in :mod:`crosstrace.tracing.budget`; reading and writing trace headers in
:mod:`crosstrace.propagation`.

Which tracer records a span, what it costs and what is kept: :mod:`crosstrace.tracing`.
Nothing here does I/O or takes a lock; kept segments are handed to the
exporter's lock-free queue.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import weakref
from collections.abc import Callable, Mapping, Sequence
from random import getrandbits
from time import monotonic_ns
from typing import Any, ParamSpec, TypeVar

from crosstrace.context import get_current
from crosstrace.redact import Redactor
from crosstrace.tracecontext import FLAG_RANDOM, FLAG_SAMPLED
from crosstrace.tracing.budget import Accounting, CostModel, close_window
from crosstrace.tracing.deferred import DeferredRoot, Describe, record_bits, settle
from crosstrace.tracing.model import (
    RemoteContext,
    SpanContext,
    SpanKind,
    SpanSink,
)
from crosstrace.tracing.plan import SKIP_MEASURED, TRACE_ALL, drop_plan, skip_request
from crosstrace.tracing.sampling import (
    RECORD_BITS,
    OverheadController,
    TokenBucket,
    ratio_sampled,
    ratio_threshold,
    record_threshold,
    recorded,
)
from crosstrace.tracing.spans import (
    _REQUEST_KINDS,
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    _current,
    _get_current_span,
    _request_attributes,
    _Segment,
    decorate,
    in_untraced_request,
    set_span_opener,
)
from crosstrace.trust import ATTR_OSPROFILER_BASE_ID, ATTR_OSPROFILER_PARENT_ID

__all__ = [
    "DISABLED",
    "SKIP_MEASURED",
    "TRACE_ALL",
    "Tracer",
    "get_tracer",
    "span",
    "start_span",
]

log = logging.getLogger(__name__)

_ALL_RECORDED = 1 << RECORD_BITS

P = ParamSpec("P")
R = TypeVar("R")

#: The configured tracer, or ``None`` (everything is a no-op).
_tracer: Tracer | None = None
_tracers: weakref.WeakSet[Tracer] = weakref.WeakSet()

# Tracer attributes a service tracer takes from the tracer it was made from.
_SHARED = (
    "sink",
    "bucket",
    "controller",
    "sample_ratio",
    "threshold",
    "record_threshold",
    "slow_ns",
    "trigger_keys",
    "osprofiler_keys",
    "redactor",
    "trace_threshold",
    "accounting",
    "costs",
)


def _after_fork_in_child() -> None:
    for t in list(_tracers):
        t._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Tracer:
    """Tracing state of one service: resource, sampling knobs, keep rule, sink.

    Built by :func:`crosstrace.configure` (the process default) or directly
    with a sink of your own; :meth:`for_service` makes the tracer of another
    service in the same process. Run-time settings (ratio, rate, budget,
    threshold, keys) are attributes :meth:`update` changes for the next trace.
    """

    def __init__(
        self,
        service_name: str,
        sink: SpanSink | None = None,
        sample_ratio: float = 1.0,
        rate_limit: float = 0.0,
        overhead_budget: float = 0.0,
        slow_threshold_s: float = 2.0,
        trigger_keys: Sequence[str] = (),
        osprofiler_keys: Sequence[str] = (),
        redact_keys: Sequence[str] = (),
        resource: Mapping[str, Any] | None = None,
    ) -> None:
        self.resource: dict[str, Any] = {
            "service.name": service_name,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }
        if resource:
            self.resource.update(resource)
        self.sink = sink
        self.bucket = TokenBucket(rate_limit)
        self.controller: OverheadController | None = None
        self.sample_ratio = 1.0
        self.threshold = 0
        self.record_threshold = record_threshold(1.0)
        #: The share of requests traced at all, out of :data:`TRACE_ALL`.
        self.trace_threshold = TRACE_ALL
        #: The budget's plan: requests known to run untraced, then the next fate.
        self.skips_left, self.skip_next = 0, -1
        self.slow_ns = 0
        self.trigger_keys: tuple[str, ...] = ()
        self.osprofiler_keys: tuple[str, ...] = ()
        self.redactor = Redactor(redact_keys)
        # What tracing did (counted once per trace) and what each unit costs.
        self.accounting = Accounting()
        self.costs = CostModel(Tracer, span, DISABLED)
        # Counters (plain ints: single bytecode updates under the GIL).
        self.segments_kept = 0
        self.segments_dropped = 0
        self.traces_unrecorded = 0
        # The tracer whose settings this one follows (itself for a main tracer),
        # the service tracers made from it, and those by service name.
        self._main: Tracer = self
        self._family: list[Tracer] = []
        self._named: dict[str, Tracer] = {}
        self.update(
            sample_ratio=sample_ratio,
            rate_limit=rate_limit,
            overhead_budget=overhead_budget,
            slow_threshold_s=slow_threshold_s,
            trigger_keys=trigger_keys,
            osprofiler_keys=osprofiler_keys,
        )
        _tracers.add(self)

    def update(
        self,
        sample_ratio: float | None = None,
        rate_limit: float | None = None,
        overhead_budget: float | None = None,
        slow_threshold_s: float | None = None,
        trigger_keys: Sequence[str] | None = None,
        osprofiler_keys: Sequence[str] | None = None,
        redact_keys: Sequence[str] | None = None,
    ) -> None:
        """Change run-time settings in place; they apply to the next trace.

        On a service tracer this changes the settings of the tracer it was made
        from, and so of every service tracer sharing them.
        """
        if self._main is not self:
            sampling = (sample_ratio, rate_limit, overhead_budget, slow_threshold_s)
            self._main.update(*sampling, trigger_keys, osprofiler_keys, redact_keys)
            return
        if sample_ratio is not None:
            self.sample_ratio = float(sample_ratio)
        if rate_limit is not None:
            self.bucket.rate = float(rate_limit)
        if overhead_budget is not None:
            if overhead_budget > 0.0:
                if self.controller is None:
                    self.controller = OverheadController(overhead_budget)
                    self.costs.calibrate()
                else:
                    self.controller.budget = overhead_budget
            else:
                self.controller = None
        if slow_threshold_s is not None:
            self.slow_ns = int(slow_threshold_s * 1e9)
        if trigger_keys is not None:
            self.trigger_keys = tuple(k for k in trigger_keys if k)
        if osprofiler_keys is not None:
            self.osprofiler_keys = tuple(k for k in osprofiler_keys if k)
        if redact_keys is not None:
            self.redactor = Redactor(redact_keys)
        self._apply_knobs()

    def _apply_knobs(self) -> None:
        main = self._main
        ctl = main.controller
        factor = ctl.ratio_factor if ctl is not None else 1.0
        fraction = ctl.record_fraction if ctl is not None else 1.0
        main.threshold = ratio_threshold(main.sample_ratio * factor)
        main.record_threshold = record_threshold(fraction)
        main.trace_threshold = int(ctl.trace_fraction * TRACE_ALL) if ctl else TRACE_ALL
        main.costs.follow(ctl.trace_fraction if ctl else 1.0)
        main._share()

    # -- several services in one process --------------------------------------
    def for_service(self, service_name: str, resource: Mapping[str, Any] | None = None) -> Tracer:
        """The tracer of service *service_name* in this process (made once per name):
        this tracer's sink, sampling state and budget (covering both), its own
        ``service.name`` (and extra *resource*, on first use)."""
        if not service_name:
            raise ValueError("service_name must be a non-empty string")
        main = self._main
        if service_name == main.resource["service.name"] and not resource:
            return main
        found = main._named.get(service_name)
        if found is not None:
            return found
        t = Tracer.__new__(Tracer)
        t.resource = {**main.resource, "service.name": service_name, **(resource or {})}
        t.segments_kept = t.segments_dropped = t.traces_unrecorded = 0
        t.skips_left, t.skip_next = 0, -1
        t._family = []
        t._named = {}
        won = main._named.setdefault(service_name, t)
        if won is t:
            main._adopt(t)
            _tracers.add(t)
        return won

    def _adopt(self, t: Tracer) -> None:
        t._main = self
        self._family.append(t)
        for name in _SHARED:
            setattr(t, name, getattr(self, name))

    def _share(self) -> None:
        """Copy the shared settings to this tracer's service tracers; all drop the budget's plan."""
        drop_plan(self)
        for t in self._family:
            for name in _SHARED:
                setattr(t, name, getattr(self, name))
            drop_plan(t)

    def _hand_over(self, new: Tracer) -> None:
        """Make the service tracers of this tracer follow *new* (a reconfiguration
        built a new main tracer); they keep their identity and resource."""
        for name, t in self._named.items():
            if name != new.resource["service.name"] and name not in new._named:
                new._named[name] = t
                new._adopt(t)
        self._named = {}
        self._family = []

    # -- starting spans ----------------------------------------------------------
    def span(
        self,
        name: str,
        kind: int = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
    ) -> Any:
        """:func:`span` with this tracer for a local root (a child follows its parent)."""
        return span(name, kind, attributes, self)

    def start_span(
        self,
        name: str,
        kind: int = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        parent: Span | NonRecordingSpan | RemoteContext | None = None,
        start_ns: int = 0,
    ) -> Span | NonRecordingSpan:
        """:func:`start_span` with this tracer for a local root."""
        return start_span(name, kind, attributes, parent, start_ns, self)

    @property
    def effective_ratio(self) -> float:
        """The head-sampling ratio in force (configured ratio x budget factor)."""
        ctl = self.controller
        return self.sample_ratio * (ctl.ratio_factor if ctl is not None else 1.0)

    @property
    def record_fraction(self) -> float:
        """The share of traces recorded at all (1.0 unless over budget)."""
        ctl = self.controller
        return ctl.record_fraction if ctl is not None else 1.0

    def _after_fork(self) -> None:
        if self.controller is not None:
            self.controller.reset_window()
        self.resource["process.pid"] = os.getpid()

    # -- decisions ------------------------------------------------------------
    def start_root(
        self,
        name: str,
        kind: int,
        attributes: Mapping[str, Any] | None,
        remote: RemoteContext | None = None,
        start_ns: int = 0,
        record: bool = False,
    ) -> Span | NonRecordingSpan:
        """Start a local root span: decide sampling, then record or not
        (*record*: the record-fraction decision was already taken, and it is yes)."""
        ctl = self.controller
        if ctl is not None and monotonic_ns() >= ctl.next_tick_ns:
            self._tick()
        parent = remote.parent if remote is not None else None
        forced = remote is not None and remote.forced
        if parent is not None:
            trace_id = parent.trace_id
            flags = parent.trace_flags & FLAG_RANDOM
            trace_state = parent.trace_state
            parent_id = parent.span_id
        else:
            trace_id = getrandbits(128) or 1
            flags = FLAG_RANDOM
            trace_state = None
            parent_id = 0
        sampled = forced or (ratio_sampled(trace_id, self.threshold) and self.bucket.take())
        if sampled:
            flags |= FLAG_SAMPLED
        elif not record and not recorded(trace_id, self.record_threshold):
            self.traces_unrecorded += 1
            self.accounting.unrecorded += 1
            return NonRecordingSpan(
                SpanContext(trace_id, getrandbits(64) or 1, flags, trace_state, False), remote
            )
        seg = _Segment(self, trace_id, flags, trace_state, sampled, forced)
        attrs = dict(attributes) if attributes else {}
        if kind not in _REQUEST_KINDS:
            _request_attributes(attrs)  # servers add them in Span.__init__
        if remote is not None and remote.osprofiler_base_id is not None:
            attrs[ATTR_OSPROFILER_BASE_ID] = remote.osprofiler_base_id
            if remote.osprofiler_parent_id is not None:
                attrs[ATTR_OSPROFILER_PARENT_ID] = remote.osprofiler_parent_id
            if remote.osprofiler_key is not None:
                seg.osprofiler = (remote.osprofiler_base_id, remote.osprofiler_key)
        return Span(name, kind, attrs, seg, parent_id, parent is not None, start_ns)

    def start_deferred(
        self,
        kind: int,
        describe: Describe,
        traceparent: str | None = None,
        forced: bool = False,
    ) -> Span | NonRecordingSpan:
        """Start a local root, reading the request only if the trace is recorded.

        The record decision comes first, from the raw *traceparent* (the bits
        :meth:`start_root` compares) or a random draw; outside the fraction a
        :class:`DeferredRoot` calls *describe* only if needed after all.
        *forced*: a trigger header is present (always the full path).
        """
        ctl = self.controller
        if ctl is not None and monotonic_ns() >= ctl.next_tick_ns:
            self._tick()
        record = False
        if self.record_threshold < _ALL_RECORDED and not forced:
            if record_bits(traceparent) >= self.record_threshold:
                self.traces_unrecorded += 1
                self.accounting.unrecorded += 1
                return DeferredRoot(self, kind, describe)
            record = True
        name, attrs, remote = describe()
        return self.start_root(name, kind, attrs, remote, 0, record)

    #: Whether the budget leaves this request untraced (entry points ask).
    skip_request = skip_request
    #: Close the controller's window (once per window, from a request).
    _tick = close_window

    def _settle_deferred(self, root: DeferredRoot, end_ns: int) -> None:
        """Export a deferred root alone when it failed or was slower than the threshold."""
        settle(self, root, end_ns, self.slow_ns)

    def _finish(self, seg: _Segment, root: Span) -> None:
        """The local root ended: keep (redact, queue) or drop the segment.

        This is the one place the overhead budget's accounting happens: once
        per trace, by counting (the cost of each unit is calibrated elsewhere).
        """
        seg.closed = True
        spans = seg.spans
        acct = self.accounting
        acct.roots += 1
        acct.spans += len(spans)
        keep = seg.sampled or seg.failed or (root.end_ns - root.start_ns) >= self.slow_ns > 0
        if keep:
            seg.kept = True
            self.segments_kept += 1
            acct.kept_spans += len(spans)
            sink = self.sink
            if sink is not None:
                try:
                    redact = self.redactor.redact_attributes
                    for s in spans:
                        redact(s.attributes)
                        if s.events:
                            for ev in s.events:
                                redact(ev[2])
                    sink.export_spans(spans)
                except Exception:
                    log.debug("export of a segment failed", exc_info=True)
        else:
            self.segments_dropped += 1
        seg.spans = []

    def _export_late(self, span: Span) -> None:
        try:
            if self.sink is not None:
                self.redactor.redact_attributes(span.attributes)
                self.sink.export_spans([span])
        except Exception:
            log.debug("export of a late span failed", exc_info=True)


#: A tracer that means "tracing off" wherever a tracer is passed (cost probes).
DISABLED: Tracer = Tracer.__new__(Tracer)


class _RootStarter:
    """What :func:`span` returns when no span is current: starts a local root
    on ``__enter__`` (so it also works as a decorator applied at import time)."""

    __slots__ = ("_span", "_token", "_tracer", "attributes", "kind", "name")

    def __init__(
        self,
        name: str,
        kind: int,
        attributes: Mapping[str, Any] | None,
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self._tracer = tracer
        self._span: Span | NonRecordingSpan | None = None
        self._token: contextvars.Token[Span | NonRecordingSpan | None] | None = None

    def __enter__(self) -> Span | NonRecordingSpan:
        tracer = self._tracer or _tracer
        if tracer is None or tracer is DISABLED:
            return INVALID_SPAN
        rc = get_current()  # in_untraced_request(), inlined: every local root passes here
        if rc is not None and rc.untraced:
            return INVALID_SPAN
        try:
            s = tracer.start_root(self.name, self.kind, self.attributes)
        except Exception:
            log.debug("span start failed", exc_info=True)
            return INVALID_SPAN
        self._span = s
        if s._recording:
            return s.__enter__()
        self._token = _current.set(s)
        return s

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: Any) -> None:
        s = self._span
        if s is None:
            return
        self._span = None
        if s._recording:
            s.__exit__(et, ev, tb)
            return
        token = self._token
        self._token = None
        if token is not None:
            try:
                _current.reset(token)
            except ValueError:
                pass

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        return decorate(fn, self.name, self.kind, self.attributes, self._tracer)


def span(
    name: str,
    kind: int = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    tracer: Tracer | None = None,
) -> Any:
    """A span for a ``with`` block, or a decorator for a sync/async function.

    ``with span(...) as s`` binds the started span (a :class:`Span`, or a
    :class:`NonRecordingSpan` when the trace is not recorded). The block's
    exception, if any, is recorded and sets error status, then propagates.
    A span opened under a current span is its child (and belongs to its
    tracer); otherwise it starts a local root with *tracer* (default: the
    configured one), unless the request runs untraced (then it does nothing).
    """
    cur = _get_current_span()
    if cur is None:
        return _RootStarter(name, kind, attributes, tracer)
    if not cur._recording:
        return cur
    try:
        return Span(name, kind, attributes, cur.segment, cur.span_id)  # type: ignore[union-attr]
    except Exception:
        log.debug("span start failed", exc_info=True)
        return cur


def start_span(
    name: str,
    kind: int = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Span | NonRecordingSpan | RemoteContext | None = None,
    start_ns: int = 0,
    tracer: Tracer | None = None,
) -> Span | NonRecordingSpan:
    """Start a span without making it current (see :func:`activate`).

    *parent* defaults to the current span, whose tracer the new span follows.
    Without one, or with a :class:`RemoteContext` (from
    :func:`crosstrace.propagation.extract_context`), it starts a local root
    with *tracer* (default: the configured one; none at all, or no parent
    in a request run untraced, gives :data:`INVALID_SPAN`). The caller must
    :meth:`~Span.end` it.
    """
    try:
        if parent is None:
            parent = _get_current_span()
            if parent is None and in_untraced_request():
                return INVALID_SPAN
        if isinstance(parent, RemoteContext) or parent is None or parent is INVALID_SPAN:
            t = tracer or _tracer
            if t is None:
                return INVALID_SPAN
            remote = parent if isinstance(parent, RemoteContext) else None
            return t.start_root(name, kind, attributes, remote, start_ns)
        if isinstance(parent, NonRecordingSpan):
            return parent
        p: Span = parent
        return Span(name, kind, attributes, p.segment, p.span_id, False, start_ns)
    except Exception:
        log.debug("span start failed", exc_info=True)
        return INVALID_SPAN


def get_tracer(service_name: str | None = None) -> Tracer | None:
    """The configured tracer, or the tracer of *service_name* in this process.

    With a name, returns the service tracer made from the configured one
    (:meth:`Tracer.for_service`: same exporter and sampling state, its own
    ``service.name``), the same object on every call and across
    reconfigurations. ``None`` before :func:`crosstrace.configure`.
    """
    t = _tracer
    if t is None or service_name is None:
        return t
    return t.for_service(service_name)


set_span_opener(span)


def _set_tracer(tracer: Tracer | None) -> None:
    """Install *tracer* process-wide (used by :mod:`crosstrace.config`)."""
    global _tracer
    _tracer = tracer
