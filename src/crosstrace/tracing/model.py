"""The data types every tracing layer shares: span identity, the span record the
exporter reads, log records, and the sink protocol between tracer and exporter.

This module is the bottom of the tracing layers (DESIGN.md "Span model"): the
span model (:mod:`crosstrace.tracing.spans`), the tracer, the OTLP encoder
(:mod:`crosstrace.otlp`) and the exporter (:mod:`crosstrace.export`) import it,
and it imports none of them, so the hot path runs one way: middleware ->
tracer -> spans -> exporter.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from crosstrace.tracecontext import FLAG_SAMPLED, TraceState

__all__ = [
    "ATTR_DOMAIN_ID",
    "ATTR_GLOBAL_REQUEST_ID",
    "ATTR_PROJECT_DOMAIN_ID",
    "ATTR_PROJECT_ID",
    "ATTR_REQUEST_ID",
    "ATTR_USER_ID",
    "INVALID_SPAN_CONTEXT",
    "LogData",
    "RemoteContext",
    "SegmentData",
    "SpanContext",
    "SpanData",
    "SpanKind",
    "SpanSink",
    "StatusCode",
]

#: Span attributes filled from the current RequestContext (DESIGN.md "Span model").
ATTR_REQUEST_ID = "openstack.request_id"
ATTR_GLOBAL_REQUEST_ID = "openstack.global_request_id"
ATTR_PROJECT_ID = "openstack.project_id"
ATTR_DOMAIN_ID = "openstack.domain_id"
ATTR_PROJECT_DOMAIN_ID = "openstack.project_domain_id"
ATTR_USER_ID = "openstack.user_id"


class SpanKind(enum.IntEnum):
    """Span kinds; the values are OTLP's ``Span.SpanKind`` numbers."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(enum.IntEnum):
    """Span status; the values are OTLP's ``Status.StatusCode`` numbers."""

    UNSET = 0
    OK = 1
    ERROR = 2


class SpanContext(NamedTuple):
    """The immutable identity of a span: integer ids, flags and tracestate.

    Ids stay integers inside the process; hex appears only at the edge
    (:func:`crosstrace.tracecontext.format_traceparent`).
    """

    trace_id: int
    span_id: int
    trace_flags: int = 0
    trace_state: TraceState | None = None
    is_remote: bool = False

    @property
    def is_valid(self) -> bool:
        """Both ids non-zero."""
        return self.trace_id != 0 and self.span_id != 0

    @property
    def sampled(self) -> bool:
        """The sampled flag."""
        return bool(self.trace_flags & FLAG_SAMPLED)


INVALID_SPAN_CONTEXT = SpanContext(0, 0)


class RemoteContext(NamedTuple):
    """What :func:`extract_context` found in an incoming carrier."""

    #: The caller's span, or ``None`` (no or invalid ``traceparent``).
    parent: SpanContext | None = None
    #: A trusted trigger (signed header or OSProfiler HMAC) asks to record.
    forced: bool = False
    #: The verified OSProfiler ``base_id`` / ``parent_id``, if any.
    osprofiler_base_id: str | None = None
    osprofiler_parent_id: str | None = None
    #: The OSProfiler key that verified the headers (to re-sign onwards).
    osprofiler_key: str | None = None


class SegmentData(Protocol):
    """What the exporter reads from the segment (the spans of one trace in this
    process) a span belongs to."""

    @property
    def flags(self) -> int:
        """The W3C trace flags."""

    @property
    def trace_state(self) -> TraceState | None:
        """The ``tracestate`` the trace carries."""

    @property
    def resource(self) -> Mapping[str, Any]:
        """The resource of the service that recorded the spans."""


class SpanData(Protocol):
    """The span record the exporter reads (:class:`crosstrace.tracing.spans.Span`)."""

    @property
    def trace_id(self) -> int: ...
    @property
    def span_id(self) -> int: ...
    @property
    def parent_id(self) -> int: ...
    @property
    def parent_remote(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def attributes(self) -> dict[str, Any]: ...
    @property
    def events(self) -> list[tuple[str, int, dict[str, Any]]] | None: ...
    @property
    def links(self) -> list[tuple[SpanContext, dict[str, Any]]] | None: ...
    @property
    def status_code(self) -> int: ...
    @property
    def status_message(self) -> str | None: ...
    @property
    def dropped_attributes(self) -> int: ...
    @property
    def dropped_events(self) -> int: ...
    @property
    def segment(self) -> SegmentData: ...


class LogData:
    """A log record to export (:class:`crosstrace.logging.ExportHandler` fills it)."""

    __slots__ = (
        "attributes",
        "body",
        "observed_ns",
        "resource",
        "scope",
        "severity_number",
        "severity_text",
        "span_id",
        "time_ns",
        "trace_flags",
        "trace_id",
    )

    def __init__(
        self,
        body: Any,
        severity_number: int = 9,
        severity_text: str = "INFO",
        attributes: Mapping[str, Any] | None = None,
        time_ns: int = 0,
        trace_id: int = 0,
        span_id: int = 0,
        trace_flags: int = 0,
        observed_ns: int = 0,
        resource: Mapping[str, Any] | None = None,
        scope: str | None = None,
    ) -> None:
        self.body = body
        #: The service's resource (``None``: the exporter's).
        self.resource = resource
        #: The instrumentation scope (the logger name; ``None``: ``crosstrace``).
        self.scope = scope
        self.severity_number = severity_number
        self.severity_text = severity_text
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.time_ns = time_ns or time.time_ns()
        self.observed_ns = observed_ns
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_flags = trace_flags


class SpanSink(Protocol):
    """Where kept segments go (the exporter)."""

    def export_spans(self, spans: Sequence[SpanData]) -> None:
        """Queue *spans* for export; never blocks, never raises."""

    def export_log(self, record: LogData) -> None:
        """Queue one log record for export; never blocks, never raises."""

    def cpu_ns(self) -> int:
        """CPU time the export thread has used so far, nanoseconds."""
