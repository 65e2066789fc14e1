"""Background retention: apply a store's age (and size) limits at an interval.

Each pass logs what it deleted (INFO) and hands it to ``on_pass`` (``serve`` prints
it and counts it in ``/metrics``). A log record imported by ``crosstrace logs
import`` ages from its import, not from its own time (see ``store/read.py``), so
a pass never deletes what was just imported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from crosstrace.server.store.base import RetentionPass, Store

__all__ = ["RetentionThread"]

log = logging.getLogger(__name__)


class RetentionThread:
    """Calls ``store.retention_pass(max_age_ns, max_bytes)`` every *interval_s*
    seconds (first run right away) until :meth:`stop`, then ``on_pass`` with what
    it deleted. Failures are logged and retried at the next interval."""

    def __init__(
        self,
        store: Store,
        max_age_ns: int | None,
        max_bytes: int | None = None,
        interval_s: float = 300.0,
        on_pass: Callable[[RetentionPass], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if max_age_ns is not None and max_age_ns <= 0:
            raise ValueError("max_age_ns must be positive")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._store = store
        self._max_age_ns = max_age_ns
        self._max_bytes = max_bytes
        self._interval = interval_s
        self._on_pass = on_pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crosstrace-retention", daemon=True)
        self.runs = 0
        self.removed = 0
        self.logs_removed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self._store.retention_pass(self._max_age_ns, self._max_bytes)
                self.removed += done.traces
                self.logs_removed += done.logs
                log.info(
                    "retention pass deleted %d traces and %d log records",
                    done.traces,
                    done.logs,
                )
                if self._on_pass is not None:
                    self._on_pass(done)
            except Exception:
                log.exception("retention failed; retrying in %.0f s", self._interval)
            self.runs += 1
            self._stop.wait(self._interval)
