"""Response models of the analysis and error-group routes (the OpenAPI schema).

They mirror the ``to_json`` forms of :mod:`crosstrace.server.analysis`: the
dataclasses there are the one definition, these models document and check it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "AnalysisOut",
    "CandidateOut",
    "ErrorGroupDetailOut",
    "ErrorGroupOut",
    "ErrorGroupsOut",
]


class LogLineOut(BaseModel):
    time_ns: int
    service: str
    severity: str
    logger: str
    body: str
    span_id: str | None
    trace_id: str | None
    request_id: str | None
    source: str | None = Field(description="file:line of an imported line")
    copies: list[str] = Field(description="services that logged the same message up the chain")


class EvidenceOut(BaseModel):
    kind: str = Field(description="span kind, or 'log' for a cause known from logs")
    status_message: str
    stacktrace: str
    http_status: int | None
    duration_ns: int
    self_time_ns: int | None = Field(description="own time on the critical path (slow)")
    usual_duration_ns: int | None = Field(description="p50 of the operation over the last day")
    ratio_to_usual: float | None
    db_statement: str | None = Field(description="statement the operation ran, if one")
    db_span_id: str | None
    timed_out_span_id: str | None = Field(description="the caller that gave up")
    chain: list[str] = Field(description="span ids from the user-facing span down to this one")
    logs: list[LogLineOut] = Field(description="the request's lines from this service nearby")


class SignatureOut(BaseModel):
    service: str
    operation: str
    exception_type: str
    message: str = Field(description="ids, UUIDs, numbers, hosts and paths normalised")


class CandidateOut(BaseModel):
    span_id: str | None = Field(description="hex; null when the cause is known from logs only")
    trace_id: str | None
    service: str
    name: str = Field(description="operation (span name; logger for a log line)")
    reason: Literal[
        "deepest_error", "masked_timeout", "never_replied", "slow_self_time", "log_origin"
    ]
    explanation: str
    exception_type: str
    message: str
    start_ns: int
    end_ns: int
    failed_at_ns: int
    signature: SignatureOut
    group_id: str
    evidence: EvidenceOut
    log: LogLineOut | None = Field(description="the originating line (logs-only causes)")


class ConsequenceOut(BaseModel):
    span_id: str
    service: str
    name: str
    why: str
    cause_span_id: str | None


class SpanRefOut(BaseModel):
    span_id: str
    service: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    duration_ns: int


class AnalysisOut(BaseModel):
    request_id: str | None = None
    trace_ids: list[str] | None = None
    trace_id: str | None
    verdict: Literal["error", "slow", "ok"]
    root_cause: CandidateOut | None = Field(description="the top candidate")
    candidates: list[CandidateOut] = Field(description="ranked, best first")
    chain: list[str] = Field(description="span ids from the user-facing span to the cause")
    consequences: list[ConsequenceOut]
    last_traced_element: SpanRefOut | None
    recovered: list[SpanRefOut] = Field(description="failed attempts retried successfully")
    start_ns: int
    duration_ns: int
    span_count: int
    notes: list[str]


class SeriesPointOut(BaseModel):
    start_ns: int
    count: int


class ErrorGroupOut(BaseModel):
    group_id: str = Field(description="16 hex digits, stable for one signature")
    signature: SignatureOut
    count: int
    first_seen_ns: int
    last_seen_ns: int
    first_seen: str
    last_seen: str
    projects: list[str]
    sample_trace_ids: list[str] = Field(description="newest first")
    bucket_ns: int
    series: list[SeriesPointOut] = Field(description="failures per bucket over the window")


class ErrorGroupsOut(BaseModel):
    start_ns: int
    end_ns: int
    groups: list[ErrorGroupOut] = Field(description="most frequent first")


class GroupTraceOut(BaseModel):
    trace_id: str
    start_ns: int
    start: str
    project_id: str | None
    domain_id: str | None


class ErrorGroupDetailOut(ErrorGroupOut):
    start_ns: int
    end_ns: int
    traces: list[GroupTraceOut] = Field(description="newest first")
