"""Deferred roots: the local root of a trace this process does not record.

A trace outside the record fraction must cost almost nothing, yet its failures
and slow requests should still reach the operator, and its context must still
propagate. A :class:`DeferredRoot` reads nothing about the request until one
of those happens (see :meth:`crosstrace.tracing.tracer.Tracer.start_deferred`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from random import getrandbits
from time import time_ns
from typing import Any, Protocol

from crosstrace.context import get_current
from crosstrace.tracing.model import INVALID_SPAN_CONTEXT, RemoteContext, SpanContext, StatusCode
from crosstrace.tracing.sampling import RANDOM_BITS, RECORD_BITS
from crosstrace.tracing.spans import (
    NonRecordingSpan,
    SegmentOwner,
    Span,
    _request_attributes,
    _Segment,
)

__all__ = ["DeferredRoot", "Describe", "record_bits", "sampled_bits", "settle"]

log = logging.getLogger("crosstrace.tracer")

_ERROR = 2

#: What a deferred root asks for when it needs its name, attributes and the
#: caller's trace context (only when the trace turns out to matter).
Describe = Callable[[], "tuple[str, dict[str, Any], RemoteContext]"]


class DeferredOwner(SegmentOwner, Protocol):
    """The tracer, as a deferred root sees it."""

    def _settle_deferred(self, root: DeferredRoot, end_ns: int) -> None:
        """A deferred root ended: export it alone if it failed or was slow."""


def record_bits(traceparent: str | None) -> int:
    """The trace id bits the record fraction compares, read straight from a raw
    ``traceparent`` (its first 12 trace-id hex digits), else drawn at random."""
    if traceparent is not None:
        try:
            return int(traceparent.strip(" \t")[3:15], 16)
        except ValueError:
            pass
    return getrandbits(RECORD_BITS)


def sampled_bits(traceparent: str | None) -> int:
    """The trace id bits the head-sampling ratio compares (the low 56, the last
    14 trace-id hex digits of a raw ``traceparent``), else drawn at random."""
    if traceparent is not None:
        try:
            return int(traceparent.strip(" \t")[21:35], 16)
        except ValueError:
            pass
    return getrandbits(RANDOM_BITS)


class DeferredRoot(NonRecordingSpan):
    """The local root of a trace this process does not record, at almost no cost.

    Nothing about the request is read until something needs it: the caller's
    ``traceparent`` is parsed, ids are drawn and the name and attributes are
    built (by *describe*) only when the trace's identity is asked for (an
    outbound call propagates it) or when the request ends with error status or
    slower than the slow threshold. In those two cases the root span alone is
    exported (its children were not recorded), so failures and slow requests
    stay visible however small the record fraction is.
    """

    __slots__ = (
        "_describe",
        "_described",
        "_error",
        "_exc",
        "_extra",
        "_kind",
        "_name",
        "_owner",
        "_request",
        "_start_ns",
    )

    def __init__(
        self, owner: DeferredOwner, kind: int, describe: Describe, start_ns: int = 0
    ) -> None:
        self._context = INVALID_SPAN_CONTEXT
        self._segment_info = None
        self._owner: DeferredOwner | None = owner
        self._request = get_current()
        self._kind = kind
        self._describe = describe
        self._described: tuple[str, dict[str, Any], RemoteContext] | None = None
        self._start_ns = start_ns or time_ns()
        self._extra: dict[str, Any] | None = None
        self._error: str | None = None
        self._exc: BaseException | None = None
        self._name: str | None = None

    def description(self) -> tuple[str, dict[str, Any], RemoteContext]:
        """``(name, attributes, caller's context)``, built once on first use."""
        d = self._described
        if d is None:
            try:
                d = self._describe()
            except Exception:  # tracing must never break the service
                log.debug("describing a deferred root failed", exc_info=True)
                d = ("", {}, RemoteContext())
            self._described = d
        return d

    def _identity(self) -> SpanContext:
        ctx = self._context
        if ctx.trace_id:
            return ctx
        remote = self.description()[2]
        parent = remote.parent
        if parent is not None:
            ctx = SpanContext(
                parent.trace_id,
                getrandbits(64) or 1,
                parent.trace_flags & 0x02,
                parent.trace_state,
                False,
            )
        else:
            ctx = SpanContext(getrandbits(128) or 1, getrandbits(64) or 1, 0x02, None, False)
        self._context = ctx
        self._segment_info = remote
        return ctx

    @property
    def context(self) -> SpanContext:
        """This root's identity (drawn on first use, continuing the caller's trace)."""
        return self._identity()

    @property
    def trace_id(self) -> int:
        """The trace id."""
        return self._identity().trace_id

    @property
    def span_id(self) -> int:
        """The span id."""
        return self._identity().span_id

    def set_attribute(self, key: str, value: Any) -> None:
        """Kept for the root span in case it is exported."""
        extra = self._extra
        if extra is None:
            self._extra = {key: value}
        else:
            extra[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Kept for the root span in case it is exported."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_status(self, code: int, description: str | None = None) -> None:
        """An error status makes the root span exported when it ends."""
        self._error = (description or "") if code == _ERROR else None

    def record_exception(
        self, exc: BaseException, attributes: Mapping[str, Any] | None = None
    ) -> None:
        """Kept (not formatted) for the root span in case it is exported."""
        self._exc = exc

    def update_name(self, name: str) -> None:
        """Rename the root span."""
        self._name = name

    def end(self, end_ns: int = 0) -> None:
        """Export the root alone if it failed or was slow (idempotent)."""
        owner = self._owner
        if owner is None:
            return
        self._owner = None
        try:
            owner._settle_deferred(self, end_ns or time_ns())
        except Exception:  # tracing must never break the service
            log.debug("settling a deferred root failed", exc_info=True)

    def __repr__(self) -> str:
        return f"DeferredRoot(kind={self._kind})"

    def _failed(self, exc: BaseException) -> None:
        self._exc = exc
        self._error = type(exc).__name__


def settle(owner: SegmentOwner, root: DeferredRoot, end_ns: int, slow_ns: int) -> None:
    """Export *root* alone (through *owner*) when it failed or was slower than *slow_ns*."""
    failed = root._error is not None
    if not failed and not (end_ns - root._start_ns >= slow_ns > 0):
        return
    name, attributes, remote = root.description()
    ctx = root.context
    parent = remote.parent
    seg = _Segment(owner, ctx.trace_id, ctx.trace_flags, ctx.trace_state, False, False)
    s = Span(
        root._name or name,
        root._kind,
        attributes,
        seg,
        parent.span_id if parent is not None else 0,
        parent is not None,
        root._start_ns,
    )
    s.span_id = ctx.span_id  # the id it propagated, if it did
    _request_attributes(s.attributes, root._request)
    if root._extra:
        s.attributes.update(root._extra)
    if root._exc is not None:
        s.record_exception(root._exc, {"exception.escaped": True})
    if failed:
        s.set_status(StatusCode.ERROR, root._error or None)
    s.end(end_ns)
