"""What a parsed log record carries: level numbers, attribute names, limits, skip
reasons and the parser's counters."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from crosstrace.server.model import RES_HOST_NAME, RES_SERVICE_NAME

__all__ = [
    "ATTR_EXCEPTION_MESSAGE",
    "ATTR_EXCEPTION_STACKTRACE",
    "ATTR_EXCEPTION_TYPE",
    "ATTR_FILE_LINE",
    "ATTR_FILE_NAME",
    "MAX_RECORD_CHARS",
    "MAX_RECORD_LINES",
    "RES_HOST_NAME",
    "RES_SERVICE_NAME",
    "SEVERITY_NUMBERS",
    "ParseStats",
    "exception_attributes",
    "severity_number",
]

#: OTLP SeverityNumber for each level name found in OpenStack logs. ``AUDIT`` (old
#: oslo-incubator logging, between INFO and WARNING) maps to INFO2; ``TRACE`` (oslo.log's
#: level below DEBUG) to TRACE. Unknown names give 0 (unspecified).
SEVERITY_NUMBERS: dict[str, int] = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "AUDIT": 10,
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "CRITICAL": 21,
    "FATAL": 21,
}

#: Attribute names (OpenTelemetry semantic conventions where one exists).
ATTR_FILE_NAME = "log.file.name"
ATTR_FILE_LINE = "log.file.line"
ATTR_EXCEPTION_TYPE = "exception.type"
ATTR_EXCEPTION_MESSAGE = "exception.message"
ATTR_EXCEPTION_STACKTRACE = "exception.stacktrace"
ATTR_THREAD_NAME = "thread.name"
ATTR_USER_DOMAIN_ID = "openstack.user_domain_id"
ATTR_PROJECT_DOMAIN_ID = "openstack.project_domain_id"
ATTR_SYSTEM_SCOPE = "openstack.system_scope"
RES_PROCESS_PID = "process.pid"
RES_PROCESS_NAME = "process.executable.name"

#: A record stops growing beyond these; further continuation lines are skipped.
MAX_RECORD_LINES = 10_000
MAX_RECORD_CHARS = 1 << 20
#: Line numbers remembered per skip reason, for the summary.
MAX_SKIP_EXAMPLES = 5

# Skip reasons (keys of ParseStats.skipped_by_reason).
SKIP_NO_RECORD = "not a log line and no record before it"
SKIP_BAD_TIME = "bad timestamp"
SKIP_JOURNAL_MARKER = "journal marker"
SKIP_BAD_JSON = "JSON line that is not a log record"
SKIP_TOO_LARGE = "record too large"

TRACEBACK_HEADER = "Traceback (most recent call last):"

_EXC_LINE_RE = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?:: ?(?P<msg>.*))?")


def severity_number(level: str) -> int:
    """OTLP severity number for a level name (case-insensitive); 0 when unknown."""
    return SEVERITY_NUMBERS.get(level.upper(), 0)


@dataclass(slots=True)
class ParseStats:
    """What the parser saw in one source: every line read is either in a record
    (``lines_in_records``) or skipped (``skipped``)."""

    lines_read: int = 0
    records: int = 0
    lines_in_records: int = 0
    continuation_lines: int = 0
    skipped: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    skipped_examples: dict[str, list[int]] = field(default_factory=dict)
    invalid_request_ids: int = 0
    formats: Counter[str] = field(default_factory=Counter)

    def skip(self, line_no: int, reason: str) -> None:
        self.skipped += 1
        self.skipped_by_reason[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < MAX_SKIP_EXAMPLES:
            examples.append(line_no)


def exception_attributes(lines: list[str], attributes: dict[str, Any]) -> None:
    """Set ``exception.type``/``exception.message`` from the first unindented line
    after a traceback header (the exception Python printed)."""
    seen_header = False
    for line in lines:
        if not seen_header:
            seen_header = line.endswith(TRACEBACK_HEADER)
            continue
        if not line or line[0] in " \t":
            continue
        m = _EXC_LINE_RE.fullmatch(line)
        if m is not None:
            attributes[ATTR_EXCEPTION_TYPE] = m["type"]
            attributes[ATTR_EXCEPTION_MESSAGE] = m["msg"] or ""
        return
