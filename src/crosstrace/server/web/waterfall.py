"""The waterfall of one trace: rows in tree order on a shared time axis.

One model serves the web page (``/traces/{trace_id}``) and ``crosstrace show``
(tree, html and dot). Its input is spans in the query API's JSON shape (hex ids,
``start_ns``/``end_ns``, ``status``, ``events``), so the CLI can feed it what
``GET /api/v1/traces/{trace_id}`` returned and the server what the store read
(through :func:`span_dict`). It imports nothing beyond the standard library.

The critical path is the chain of spans that bounds the trace's end: from the
root, the child that finished last, then, before that child started, the child
that finished last before it, and so on down each chosen child (the walk Jaeger
and others use). Root cause and consequences come from the analysis, never from
here: this module only marks the span ids it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "EXCEPTION_EVENT",
    "Marks",
    "Row",
    "Waterfall",
    "build_waterfall",
    "exception_of",
    "first_line",
    "format_duration",
    "span_dict",
]

#: Name of the span event that records an exception (OpenTelemetry convention).
EXCEPTION_EVENT: Final = "exception"
_STATUS_NAMES: Final = ("unset", "ok", "error")
_KIND_NAMES: Final = ("unspecified", "internal", "server", "client", "producer", "consumer")


def span_dict(span: Any) -> dict[str, Any]:
    """A stored span record (``crosstrace.server.model.SpanRecord``) in the API's JSON shape."""
    code = int(span.status_code)
    kind = int(span.kind)
    return {
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() if span.parent_span_id else None,
        "service": span.service,
        "name": span.name,
        "kind": kind,
        "kind_name": _KIND_NAMES[kind] if 0 <= kind < len(_KIND_NAMES) else "unspecified",
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "duration_ns": max(0, span.end_ns - span.start_ns),
        "status_code": code,
        "status": _STATUS_NAMES[code] if 0 <= code < len(_STATUS_NAMES) else "unset",
        "status_message": span.status_message,
        "attributes": span.attributes,
        "events": span.events,
        "resource": span.resource,
    }


def exception_of(span: Mapping[str, Any]) -> tuple[str, str, str]:
    """(type, message, stack trace) of the span's first exception event; for an
    error span without one, ("", status message, "")."""
    for event in span.get("events") or ():
        if isinstance(event, Mapping) and event.get("name") == EXCEPTION_EVENT:
            attrs = event.get("attributes") or {}
            return (
                str(attrs.get("exception.type", "") or ""),
                str(attrs.get("exception.message", "") or ""),
                str(attrs.get("exception.stacktrace", "") or ""),
            )
    if span.get("status") == "error":
        return "", str(span.get("status_message", "") or ""), ""
    return "", "", ""


def first_line(text: str) -> str:
    """The first non-empty line of *text*, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def format_duration(ns: int) -> str:
    """``830 µs``, ``12.5 ms``, ``1.20 s``."""
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


@dataclass(frozen=True, slots=True)
class Marks:
    """Span ids the analysis singled out (hex)."""

    root_cause: str | None = None
    chain: frozenset[str] = frozenset()
    consequences: frozenset[str] = frozenset()


@dataclass(slots=True)
class Row:
    """One span as a waterfall row."""

    index: int
    span: Mapping[str, Any]
    parent: int  # row index of the parent, -1 for a root
    depth: int
    service_index: int
    offset_ns: int  # start, from the trace's start
    duration_ns: int
    error: bool
    error_type: str
    error_message: str
    children: int = 0
    descendants: int = 0
    critical: bool = False
    role: str = ""  # "root-cause", "consequence" or ""

    @property
    def span_id(self) -> str:
        return str(self.span.get("span_id", ""))

    @property
    def name(self) -> str:
        return str(self.span.get("name", ""))

    @property
    def service(self) -> str:
        return str(self.span.get("service", ""))

    @property
    def short_type(self) -> str:
        """The exception type without its module (``IntegrityError``)."""
        return self.error_type.rsplit(".", 1)[-1]

    @property
    def error_line(self) -> str:
        """``Type: first line of the message`` (or the status message)."""
        message = first_line(self.error_message)
        return ": ".join(p for p in (self.short_type, message) if p)


@dataclass(slots=True)
class Waterfall:
    """Rows in tree order (children after their parent, by start time)."""

    rows: list[Row]
    services: list[str]
    start_ns: int
    end_ns: int
    marks: Marks = field(default_factory=Marks)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def error_count(self) -> int:
        return sum(1 for r in self.rows if r.error)

    def row_of(self, span_id: str) -> Row | None:
        for row in self.rows:
            if row.span_id == span_id:
                return row
        return None

    def ticks(self, n: int = 5) -> list[tuple[float, str]]:
        """(percent, label) of *n* + 1 evenly spaced time-axis ticks."""
        total = self.duration_ns
        return [(100.0 * i / n, format_duration(total * i // n)) for i in range(n + 1)]

    def compact(self) -> dict[str, Any]:
        """The rows as the page's script reads them: small arrays, no attributes,
        each distinct span name sent once."""
        names: dict[str, int] = {}
        rows = []
        for r in self.rows:
            name = names.setdefault(r.name, len(names))
            flags = (
                (1 if r.error else 0)
                | (2 if r.critical else 0)
                | (4 if r.role == "root-cause" else 0)
                | (8 if r.role == "consequence" else 0)
            )
            row: list[Any] = [r.span_id, r.parent, r.depth, name, r.service_index]
            row += [r.offset_ns, r.duration_ns, flags]
            if r.error:
                row += [r.error_line, r.short_type]
            rows.append(row)
        return {
            "start_ns": self.start_ns,
            "duration_ns": self.duration_ns,
            "services": self.services,
            "names": list(names),
            "root_cause": self.marks.root_cause,
            # [span id, parent row, depth, name index, service index, offset,
            #  duration, flags (1 error, 2 critical, 4 root cause, 8 consequence)]
            # and, for errors, [error line, exception type]
            "rows": rows,
        }


def _tree_order(spans: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, int]]:
    """(span index, parent position in the output or -1, depth), depth first,
    children by start time; orphans and parent cycles become roots."""
    ids = [str(s.get("span_id", "")) for s in spans]
    parents = [s.get("parent_span_id") for s in spans]
    starts = [int(s.get("start_ns", 0)) for s in spans]
    order = sorted(range(len(spans)), key=lambda i: (starts[i], ids[i]))
    index: dict[str, int] = {}
    for i in order:
        index.setdefault(ids[i], i)
    children: list[list[int]] = [[] for _ in spans]
    roots: list[int] = []
    for i in order:
        parent_id = parents[i]
        parent = index.get(str(parent_id)) if parent_id else None
        if parent is None or parent == i:
            roots.append(i)
        else:
            children[parent].append(i)
    out: list[tuple[int, int, int]] = []
    seen = [False] * len(spans)

    def walk(start: int) -> None:
        stack = [(start, -1, 0)]
        while stack:
            i, parent_pos, depth = stack.pop()
            if seen[i]:
                continue
            seen[i] = True
            out.append((i, parent_pos, depth))
            pos = len(out) - 1
            kids = children[i]
            if kids:
                stack.extend((k, pos, depth + 1) for k in reversed(kids))

    for root in roots:
        walk(root)
    for i in order:  # parent cycles: no root reaches them
        if not seen[i]:
            walk(i)
    return out


def _mark_critical(rows: list[Row], kids: list[list[int]]) -> None:
    """Mark the critical path from the longest root down."""
    roots = [r.index for r in rows if r.parent < 0]
    if not roots:
        return
    top = max(roots, key=lambda i: (rows[i].offset_ns + rows[i].duration_ns, -i))
    stack = [top]
    while stack:
        i = stack.pop()
        row = rows[i]
        row.critical = True
        cursor = row.offset_ns + row.duration_ns
        ordered = sorted(kids[i], key=lambda k: rows[k].offset_ns + rows[k].duration_ns)
        for k in reversed(ordered):
            if cursor <= row.offset_ns:
                break
            if rows[k].offset_ns < cursor:
                stack.append(k)
                cursor = rows[k].offset_ns


def build_waterfall(spans: Iterable[Mapping[str, Any]], marks: Marks | None = None) -> Waterfall:
    """The waterfall of *spans* (one trace, in the API's JSON shape)."""
    spans = list(spans)
    marks = marks or Marks()
    if not spans:
        return Waterfall([], [], 0, 0, marks)
    start = min(int(s.get("start_ns", 0)) for s in spans)
    end = max(int(s.get("end_ns", 0)) for s in spans)
    services = sorted({str(s.get("service", "")) for s in spans})
    service_index = {name: i for i, name in enumerate(services)}
    rows: list[Row] = []
    for pos, (i, parent, depth) in enumerate(_tree_order(spans)):
        span = spans[i]
        s_ns = int(span.get("start_ns", 0))
        e_ns = int(span.get("end_ns", 0))
        error = span.get("status") == "error" or span.get("status_code") == 2
        kind, message, _ = exception_of(span) if error else ("", "", "")
        sid = str(span.get("span_id", ""))
        role = ""
        if sid == marks.root_cause:
            role = "root-cause"
        elif sid in marks.consequences:
            role = "consequence"
        rows.append(
            Row(
                index=pos,
                span=span,
                parent=parent,
                depth=depth,
                service_index=service_index[str(span.get("service", ""))],
                offset_ns=s_ns - start,
                duration_ns=max(0, e_ns - s_ns),
                error=error,
                error_type=kind,
                error_message=message,
                role=role,
            )
        )
    kids: list[list[int]] = [[] for _ in rows]
    for row in rows:
        if row.parent >= 0:
            kids[row.parent].append(row.index)
    for row in reversed(rows):
        row.children = len(kids[row.index])
        if row.parent >= 0:
            rows[row.parent].descendants += row.descendants + 1
    _mark_critical(rows, kids)
    return Waterfall(rows, services, start, end, marks)
