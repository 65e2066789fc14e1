"""A trace as an index: parents, children, depth and per-span facts the rules read.

Built once per analysis in linear time (plus sorting children), without
recursion, so that a trace of 100,000 spans or a chain 100,000 deep is fine.
Bad shapes are repaired, not refused: a span id seen twice keeps its first
record, a parent that is not in the trace makes its child a root, and a parent
cycle is cut at its earliest span (each repair is noted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from crosstrace.server.model import STATUS_ERROR, SpanRecord

__all__ = ["KIND_NAMES", "ExceptionInfo", "TraceIndex", "exception_info", "http_status"]

KIND_INTERNAL: Final = 1
KIND_SERVER: Final = 2
KIND_CLIENT: Final = 3
KIND_PRODUCER: Final = 4
KIND_CONSUMER: Final = 5
KIND_NAMES: Final = ("unspecified", "internal", "server", "client", "producer", "consumer")

_HTTP_STATUS_KEYS: Final = ("http.response.status_code", "http.status_code")
_TIMEOUT_WORDS: Final = ("timeout", "timed out", "time out", "deadline exceeded")


def kind_name(kind: int) -> str:
    return KIND_NAMES[kind] if 0 <= kind < len(KIND_NAMES) else "unspecified"


def http_status(span: SpanRecord) -> int | None:
    """The span's HTTP response status, if it has a sane one."""
    for key in _HTTP_STATUS_KEYS:
        value = span.attributes.get(key)
        if value is None:
            continue
        try:
            code = int(value)
        except (TypeError, ValueError):
            continue
        if 100 <= code <= 599:
            return code
    return None


class ExceptionInfo:
    """Exception type, message, stack trace and time of a failed span."""

    __slots__ = ("message", "stacktrace", "time_ns", "type")

    def __init__(self, type_: str, message: str, stacktrace: str, time_ns: int | None) -> None:
        self.type = type_
        self.message = message
        self.stacktrace = stacktrace
        self.time_ns = time_ns


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def exception_info(span: SpanRecord) -> ExceptionInfo:
    """The span's exception: the last escaped ``exception`` event, else the last
    one, else what the status message says (``Type: message``)."""
    best: dict[str, Any] | None = None
    for event in span.events:
        if not isinstance(event, dict) or event.get("name") != "exception":
            continue
        attrs = event.get("attributes")
        if not isinstance(attrs, dict):
            continue
        if (
            best is None
            or attrs.get("exception.escaped")
            or not best["attrs"].get("exception.escaped")
        ):
            best = {"attrs": attrs, "time": event.get("time_ns")}
    if best is not None:
        attrs = best["attrs"]
        t = best["time"]
        return ExceptionInfo(
            _text(attrs.get("exception.type")),
            _text(attrs.get("exception.message")),
            _text(attrs.get("exception.stacktrace")),
            t if isinstance(t, int) and t > 0 else None,
        )
    message = span.status_message or ""
    type_ = ""
    head, sep, rest = message.partition(": ")
    if sep and head and " " not in head and len(head) <= 120:
        type_, message = head, rest
    error_type = span.attributes.get("error.type")
    if not type_ and isinstance(error_type, str):
        type_ = error_type
    return ExceptionInfo(type_, message, "", None)


class TraceIndex:
    """Spans of one trace with their tree (see the module docstring)."""

    def __init__(self, spans: Sequence[SpanRecord]) -> None:
        self.notes: list[str] = []
        ordered = sorted(spans, key=lambda s: (s.start_ns, s.span_id))
        index: dict[bytes, int] = {}
        kept: list[SpanRecord] = []
        duplicates = 0
        for span in ordered:
            if span.span_id in index:
                duplicates += 1
                continue
            index[span.span_id] = len(kept)
            kept.append(span)
        if duplicates:
            self.notes.append(f"{duplicates} duplicate span id(s) ignored")
        self.spans = kept
        self.by_id = index
        n = len(kept)
        parent = [-1] * n
        missing = 0
        for i, span in enumerate(kept):
            pid = span.parent_span_id
            if pid:
                p = index.get(pid, -1)
                if p == -1:
                    missing += 1
                elif p != i:
                    parent[i] = p
        if missing:
            self.notes.append(f"{missing} span(s) whose parent is not in the trace")
        cycles = self._cut_cycles(parent)
        if cycles:
            self.notes.append(f"{cycles} parent cycle(s) cut")
        self.parent = parent
        children: list[list[int]] = [[] for _ in range(n)]
        for i in range(n):  # spans are in start order, so children are too
            p = parent[i]
            if p >= 0:
                children[p].append(i)
        self.children = children
        self.roots = [i for i in range(n) if parent[i] < 0]
        # Breadth-first order: parents before children (reverse it for bottom-up).
        order: list[int] = list(self.roots)
        depth = [0] * n
        k = 0
        while k < len(order):
            i = order[k]
            k += 1
            for c in children[i]:
                depth[c] = depth[i] + 1
                order.append(c)
        self.order = order
        self.depth = depth
        self.failed = [self._failed(s) for s in kept]
        # Latest end anywhere in each span's subtree.
        subtree_end = [s.end_ns for s in kept]
        for i in reversed(order):
            p = parent[i]
            if p >= 0 and subtree_end[i] > subtree_end[p]:
                subtree_end[p] = subtree_end[i]
        self.subtree_end = subtree_end

    @staticmethod
    def _cut_cycles(parent: list[int]) -> int:
        """Make the earliest span of every parent cycle a root; return how many."""
        n = len(parent)
        state = [0] * n  # 0 new, 1 on the current path, 2 done
        cuts = 0
        for start in range(n):
            if state[start]:
                continue
            path = []
            i = start
            while i >= 0 and state[i] == 0:
                state[i] = 1
                path.append(i)
                i = parent[i]
            if i >= 0 and state[i] == 1:  # a cycle: i .. end of path
                cycle = path[path.index(i) :]
                first = min(cycle)  # spans are indexed in start order
                parent[first] = -1
                cuts += 1
            for j in path:
                state[j] = 2
        return cuts

    @staticmethod
    def _failed(span: SpanRecord) -> bool:
        if span.status_code == STATUS_ERROR:
            return True
        status = http_status(span)
        return status is not None and status >= 400

    def __len__(self) -> int:
        return len(self.spans)

    def is_timeout(self, i: int) -> bool:
        """Whether span *i* failed by giving up waiting (a timeout)."""
        span = self.spans[i]
        status = http_status(span)
        if status in (408, 504):
            return True
        info = exception_info(span)
        text = f"{info.type} {info.message} {span.status_message}".lower()
        return any(word in text for word in _TIMEOUT_WORDS)

    def is_db(self, i: int) -> bool:
        return "db.system" in self.spans[i].attributes

    def path_to_root(self, i: int) -> list[int]:
        """Span indexes from the root down to *i*."""
        path = []
        while i >= 0:
            path.append(i)
            i = self.parent[i]
        path.reverse()
        return path

    def ancestors(self, i: int) -> set[int]:
        out = set()
        i = self.parent[i]
        while i >= 0:
            out.add(i)
            i = self.parent[i]
        return out
