"""In-memory span/log sink and tracer factory shared by the tracing tests.

The ``no_tracer`` and ``sink`` fixtures built on these live in ``conftest.py``;
a module opts in to ``no_tracer`` with ``pytest.mark.usefixtures``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from crosstrace.export import LogData
from crosstrace.logging import ContextFilter, ContextFormatter
from crosstrace.tracing import Span, Tracer


class Sink:
    """Keeps every exported span and log record in memory, in export order.

    Thread-safe, since a real server under test exports from its own threads."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.logs: list[LogData] = []
        self.lock = threading.Lock()

    def export_spans(self, spans: Sequence[Span]) -> None:
        with self.lock:
            self.spans.extend(spans)

    def export_log(self, record: LogData) -> None:
        with self.lock:
            self.logs.append(record)

    def cpu_ns(self) -> int:
        return 0

    def named(self, name: str, kind: int | None = None) -> Span:
        """The one span called ``name`` (of ``kind`` when given); fails if not exactly one."""
        (s,) = [s for s in self.spans if s.name == name and kind in (None, s.kind)]
        return s

    def db(self) -> list[Span]:
        """The database client spans."""
        return [s for s in self.spans if "db.system" in s.attributes]


def sink_tracer(sink: Sink, service_name: str, **kwargs: Any) -> Tracer:
    """A tracer exporting to ``sink``; the overhead budget is off unless given."""
    kwargs.setdefault("overhead_budget", 0.0)
    return Tracer(service_name, sink=sink, **kwargs)


@contextlib.contextmanager
def capture_root_logs(level: int) -> Iterator[io.StringIO]:
    """Send every record at *level* or above, in the context format, to a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(ContextFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
