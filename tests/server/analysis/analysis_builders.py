"""Hand-built traces and log lines for the analysis tests."""

from __future__ import annotations

import itertools
from typing import Any

from crosstrace.server.model import STATUS_ERROR, STATUS_OK, LogRecord, SpanRecord

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
MS = 1_000_000
T0 = 1_800_000_000_000_000_000
SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = 2, 3, 4, 5, 1

_ids = itertools.count(1)


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


class Trace:
    """Spans added by name; times in milliseconds from T0."""

    def __init__(self) -> None:
        self.spans: dict[str, SpanRecord] = {}

    def add(
        self,
        name: str,
        parent: str | None,
        start: float,
        end: float,
        *,
        service: str = "svc",
        kind: int = INTERNAL,
        error: str | None = None,
        http: int | None = None,
        attrs: dict[str, Any] | None = None,
        op: str | None = None,
    ) -> SpanRecord:
        attributes = dict(attrs or {})
        if http is not None:
            attributes["http.response.status_code"] = http
        events = []
        if error is not None:
            type_, _, message = error.partition(": ")
            events.append(
                {
                    "time_ns": T0 + int(end * MS),
                    "name": "exception",
                    "attributes": {
                        "exception.type": type_,
                        "exception.message": message,
                        "exception.stacktrace": f"Traceback ...\n{error}",
                        "exception.escaped": True,
                    },
                }
            )
        span = SpanRecord(
            trace_id=TRACE_ID,
            span_id=sid(next(_ids)),
            parent_span_id=self.spans[parent].span_id if parent else None,
            name=op or name,
            kind=kind,
            start_ns=T0 + int(start * MS),
            end_ns=T0 + int(end * MS),
            service=service,
            status_code=STATUS_ERROR if error is not None else STATUS_OK,
            status_message=error or "",
            attributes=attributes,
            events=events,
        )
        self.spans[name] = span
        return span

    def id(self, name: str) -> bytes:
        return self.spans[name].span_id

    def list(self) -> list[SpanRecord]:
        return list(self.spans.values())


def log(
    service: str,
    at_ms: float,
    body: str,
    *,
    level: str = "INFO",
    request_id: str | None = None,
    global_request_id: str | None = None,
    attrs: dict[str, Any] | None = None,
    logger: str = "",
) -> LogRecord:
    numbers = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17, "CRITICAL": 21}
    return LogRecord(
        time_ns=T0 + int(at_ms * MS),
        severity_number=numbers[level],
        severity_text=level,
        body=body,
        service=service,
        request_id=request_id,
        global_request_id=global_request_id,
        attributes=dict(attrs or {}),
        logger=logger or f"{service}.log",
    )
