"""The audit log: who read or changed what, in which scope, and when.

Every API read and every administrative action becomes one :class:`AuditEvent`.
Events are kept in the store (table ``audit_log``) through
:meth:`Store.append_audit`, which queues them for the store's writer without
waiting: a read never waits for its audit row. Admins read them back through
``GET /api/v1/audit``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from crosstrace.server.model import AuditEvent

__all__ = ["AuditSink", "Auditor"]

log = logging.getLogger(__name__)

#: Longest text kept per field (a path with a long query string is cut).
MAX_FIELD = 512


class AuditSink(Protocol):
    def append_audit(self, events: list[AuditEvent]) -> Any: ...


class Auditor:
    """Records events into a sink (the store); never raises into the caller."""

    def __init__(self, sink: AuditSink | None) -> None:
        self.sink = sink
        self.recorded = 0
        self.failed = 0

    def record(
        self,
        who: str,
        source: str,
        action: str,
        target: str,
        scope: str,
        outcome: int,
    ) -> None:
        if self.sink is None:
            return
        event = AuditEvent(
            time.time_ns(),
            who[:MAX_FIELD],
            source[:MAX_FIELD],
            action[:MAX_FIELD],
            target[:MAX_FIELD],
            scope[:MAX_FIELD],
            outcome,
        )
        try:
            self.sink.append_audit([event])
            self.recorded += 1
        except Exception as exc:  # the audit must not break the read it records
            self.failed += 1
            log.warning("audit event not recorded: %s", exc)
