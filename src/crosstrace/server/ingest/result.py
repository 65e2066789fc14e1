"""What decoding one OTLP request gives: the records kept and the ones refused,
and the checks both encodings apply to a record before it is kept."""

from __future__ import annotations

import json
from typing import Any

from crosstrace.ids import is_valid_request_id
from crosstrace.server.batch.scan import from_records
from crosstrace.server.batch.spanbatch import SpanBatch
from crosstrace.server.batch.values import INT64_MAX, MAX_ID_LENGTH, Rejected
from crosstrace.server.errors import BadRequest
from crosstrace.server.model import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
    ID_ATTRS,
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    LogRecord,
    SpanRecord,
)
from crosstrace.server.store.prepare import PreparedBatch

__all__ = [
    "DecodeResult",
    "OtlpDecodeError",
    "body_text",
    "bounded",
    "check_ids",
    "check_time",
    "make_log",
]

#: How many distinct rejection reasons are quoted in the partial-success message.
_MAX_REASONS = 3
_MAX_SEVERITY = 24


class OtlpDecodeError(BadRequest, ValueError):
    """The request body is not a readable OTLP export request (answer 400)."""


class DecodeResult:
    """Records decoded from one request, and the ones refused.

    Protobuf trace requests decode into :attr:`batch` (the store's form); the
    :attr:`spans` records are then made from it only when asked for. OTLP/JSON
    fills :attr:`spans`, and :meth:`span_batch` converts them.
    """

    __slots__ = ("_spans", "batch", "logs", "prepared", "reasons", "rejected")

    def __init__(self) -> None:
        self._spans: list[SpanRecord] | None = []
        self.batch: SpanBatch | None = None
        #: The batch prepared for the store when a decode worker made it.
        self.prepared: PreparedBatch | None = None
        self.logs: list[LogRecord] = []
        self.rejected = 0
        self.reasons: list[str] = []

    @property
    def spans(self) -> list[SpanRecord]:
        """The span records (made from :attr:`batch` on first use)."""
        if self._spans is None:
            self._spans = self.batch.records() if self.batch is not None else []
        return self._spans

    @property
    def span_count(self) -> int:
        """Spans accepted, without making records."""
        if self.prepared is not None:
            return len(self.prepared)
        if self.batch is not None:
            return len(self.batch)
        return len(self._spans or ())

    def span_batch(self) -> SpanBatch:
        """The accepted spans as a :class:`SpanBatch`, ready for the store."""
        if self.batch is None:
            self.batch = from_records(self.spans, self.reject)
        return self.batch

    def store_batch(self) -> SpanBatch | PreparedBatch:
        """What to hand to the store: the batch a decode worker prepared, else
        :meth:`span_batch`."""
        return self.prepared if self.prepared is not None else self.span_batch()

    def use_batch(self, batch: SpanBatch) -> None:
        """Keep *batch* as the decoded spans; records are made from it when asked for."""
        self.batch = batch
        self._spans = None

    def use_prepared(self, prepared: PreparedBatch) -> None:
        """Keep only the batch a decode worker prepared: what the store needs."""
        self.prepared = prepared
        self.batch = None
        self._spans = None

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < _MAX_REASONS and reason not in self.reasons:
            self.reasons.append(reason)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        return f"{self.rejected} record(s) rejected: " + "; ".join(self.reasons)


# --------------------------------------------------------------------------- helpers


def check_time(ns: int, what: str) -> int:
    if ns > INT64_MAX:
        raise Rejected(f"{what} beyond int64")
    return ns


def bounded(value: int, top: int) -> int:
    return value if 0 <= value <= top else 0


def check_ids(*sources: dict[str, Any]) -> None:
    """Reject a record whose project / domain / user id is too long to index."""
    for attrs in sources:
        for key in ID_ATTRS:
            value = attrs.get(key)
            if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
                raise Rejected(f"{key} longer than {MAX_ID_LENGTH} characters")


def body_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def make_log(
    *,
    time_ns: int,
    observed_ns: int,
    severity_number: int,
    severity_text: str,
    body: Any,
    service: str,
    trace_id: bytes,
    span_id: bytes,
    attributes: dict[str, Any],
    resource: dict[str, Any],
    scope: str,
) -> LogRecord:
    if time_ns > INT64_MAX or observed_ns > INT64_MAX:
        raise Rejected("timestamp beyond int64")
    if trace_id and (len(trace_id) != 16 or trace_id == ZERO_TRACE_ID):
        raise Rejected("invalid trace id")
    if span_id and (len(span_id) != 8 or span_id == ZERO_SPAN_ID):
        raise Rejected("invalid span id")

    def ident(key: str) -> str | None:
        value = attributes.get(key)
        if value is None:
            value = resource.get(key)
        return value if isinstance(value, str) and value else None

    check_ids(attributes)
    request_id = ident(ATTR_REQUEST_ID)
    global_request_id = ident(ATTR_GLOBAL_REQUEST_ID)
    return LogRecord(
        time_ns=time_ns or observed_ns,
        severity_number=bounded(severity_number, _MAX_SEVERITY),
        severity_text=severity_text,
        body=body_text(body),
        service=service,
        trace_id=trace_id or None,
        span_id=span_id or None,
        request_id=request_id if is_valid_request_id(request_id) else None,
        global_request_id=(global_request_id if is_valid_request_id(global_request_id) else None),
        user_id=ident(ATTR_USER_ID),
        project_id=ident(ATTR_PROJECT_ID),
        domain_id=ident(ATTR_PROJECT_DOMAIN_ID) or ident(ATTR_DOMAIN_ID),
        logger=scope,
        attributes=attributes,
        resource=resource,
    )
