"""Root cause and error groups: pure functions over stored spans and logs.

:func:`analyse_trace` gives the verdict on one trace with ranked root-cause
candidates; :func:`analyse_request` does the same over every trace and log line
of a request (logs-only requests too); :func:`signature_of` and
:func:`group_causes` turn root causes into error groups. Nothing here does I/O:
the API and the CLI fetch the spans, logs and usual durations and pass them in.
"""

from __future__ import annotations

from crosstrace.server.analysis.groups import CauseRow, ErrorGroup, group_causes
from crosstrace.server.analysis.request import analyse_request, is_error_line, logs_origin
from crosstrace.server.analysis.result import (
    Analysis,
    Candidate,
    Consequence,
    Evidence,
    LogLine,
    Reason,
    SpanRef,
    Verdict,
)
from crosstrace.server.analysis.signature import Signature, normalise_message, signature_of
from crosstrace.server.analysis.trace import analyse_trace, slow_threshold

__all__ = [
    "Analysis",
    "Candidate",
    "CauseRow",
    "Consequence",
    "ErrorGroup",
    "Evidence",
    "LogLine",
    "Reason",
    "Signature",
    "SpanRef",
    "Verdict",
    "analyse_request",
    "analyse_trace",
    "group_causes",
    "is_error_line",
    "logs_origin",
    "normalise_message",
    "signature_of",
    "slow_threshold",
]
