"""One trace as a terminal waterfall, a self-contained HTML file, or a Graphviz graph.

``crosstrace show`` renders what the query API returned (spans in the API's JSON
shape and, when the server has it, the trace's analysis) with these functions.

The tree is one line per span: a marker, the name indented by depth, the
service, a duration bar on the trace's shared time axis, the duration, and the
first line of the span's error. On a terminal the line is fitted to its width
(names and errors are shortened with "…" only when they must be); piped, nothing
is shortened and there are no colours, so each span is one plain line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from crosstrace.server.web.waterfall import (
    Marks,
    Row,
    Waterfall,
    exception_of,
    format_duration,
)

__all__ = ["marks_from_analysis", "render_dot", "render_html", "render_tree", "verdict_line"]

_MARK_ROOT: Final = "●"
_MARK_ERROR: Final = "✗"
_MARK_CONSEQUENCE: Final = "↑"
_PLAIN_BAR: Final = 24
_SERVICE_COLOURS: Final = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#bab0ac",
    "#86bcb6",
)


def marks_from_analysis(doc: Mapping[str, Any] | None) -> Marks:
    """The span ids the analysis JSON (``/api/v1/traces/{id}/analysis``) names."""
    if not doc:
        return Marks()
    root = doc.get("root_cause") or {}
    consequences = {
        str(c.get("span_id"))
        for c in doc.get("consequences") or ()
        if isinstance(c, Mapping) and c.get("span_id")
    }
    return Marks(
        root_cause=str(root["span_id"]) if root.get("span_id") else None,
        chain=frozenset(str(s) for s in doc.get("chain") or ()),
        consequences=frozenset(consequences),
    )


def verdict_line(doc: Mapping[str, Any] | None) -> str:
    """``root cause: service · operation · Type: message`` (first line), or ``""``."""
    if not doc:
        return ""
    root = doc.get("root_cause")
    if not root:
        verdict = str(doc.get("verdict", "") or "")
        return f"verdict: {verdict}, no root cause named" if verdict else ""
    kind = str(root.get("exception_type") or "").rsplit(".", 1)[-1]
    error = ": ".join(p for p in (kind, _first(str(root.get("message") or ""))) if p)
    parts = [str(root.get("service", "")), str(root.get("name", ""))]
    if error:
        parts.append(error)
    return f"root cause ({doc.get('verdict', 'error')}): " + " · ".join(p for p in parts if p)


def _first(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _fit(text: str, width: int) -> str:
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…"


def _bar(row: Row, wf: Waterfall, width: int) -> str:
    total = wf.duration_ns or 1
    start = row.offset_ns * width // total
    end = max(start + 1, -(-(row.offset_ns + row.duration_ns) * width // total))
    end = min(end, width)
    start = min(start, width - 1)
    return " " * start + "█" * (end - start) + " " * (width - end)


def _marker(row: Row) -> str:
    if row.role == "root-cause":
        return _MARK_ROOT
    if row.role == "consequence":
        return _MARK_CONSEQUENCE
    return _MARK_ERROR if row.error else " "


def render_tree(
    wf: Waterfall,
    *,
    width: int | None,
    color: bool = False,
    full: bool = False,
    header: Sequence[str] = (),
) -> list[str]:
    """The waterfall as text lines. *width* ``None``: piped, never shortened."""
    import click

    def style(text: str, **kw: Any) -> str:
        return click.style(text, **kw) if color else text

    lines = [style(h, bold=True) if i == 0 else h for i, h in enumerate(header)]
    if not wf.rows:
        return [*lines, "no spans"]
    names = [" " * min(r.depth, 16) + r.name for r in wf.rows]
    services = [r.service for r in wf.rows]
    durations = [format_duration(r.duration_ns) for r in wf.rows]
    dur_w = max(len(d) for d in durations)
    svc_w = max(len(s) for s in services)
    if width is None:
        name_w = max(len(n) for n in names)
        bar_w = _PLAIN_BAR
    else:
        svc_w = min(svc_w, 12)
        bar_w = min(30, max(6, width // 12))
        rest = width - (2 + svc_w + 1 + bar_w + 3 + dur_w)
        # Leave room for the errors' exception types at least.
        types = [len(r.short_type or "error") for r in wf.rows if r.error]
        need = min(24, max(types) + 2) if types else 0
        name_w = min(max(len(n) for n in names), max(16, rest - 3 - need))
        lines = [_fit(h, width) if i else h for i, h in enumerate(lines)]
    lines.append(
        f"  {'span':<{name_w}} {'service':<{svc_w}} {'0':<{bar_w // 2}}"
        f"{format_duration(wf.duration_ns):>{bar_w - bar_w // 2}}"
    )
    for row, name, service, duration in zip(wf.rows, names, services, durations, strict=True):
        text = (
            f"{_marker(row)} {_fit(name, name_w):<{name_w}} {_fit(service, svc_w):<{svc_w}} "
            f"|{_bar(row, wf, bar_w)}| {duration:>{dur_w}}"
        )
        error = row.error_line
        room = None if width is None else width - len(text) - 2
        if row.role == "root-cause" and (room is None or room >= len(error) + 12):
            error = "ROOT CAUSE" + (f": {error}" if error else "")
        if error:
            error = error if room is None else _fit(error, room)
            if error:
                text += "  " + error
        if color and row.role == "root-cause":
            text = style(text, fg="red", bold=True)
        elif color and row.error:
            text = style(text, fg="red")
        elif color and row.critical:
            text = style(text, fg="magenta")
        lines.append(text)
        if full:
            lines.extend(_full_lines(row))
    lines.append(
        f"{_MARK_ROOT} root cause  {_MARK_ERROR} error  {_MARK_CONSEQUENCE} consequence"
        + ("  (magenta: critical path)" if color else "")
    )
    return lines


def _full_lines(row: Row) -> list[str]:
    pad = "      "
    out = [f"{pad}span {row.span_id}  parent {row.span.get('parent_span_id') or '-'}"]
    kind, message, stack = exception_of(row.span) if row.error else ("", "", "")
    if kind or message:
        out.append(
            pad + ": ".join(p for p in (kind, message.splitlines()[0] if message else "") if p)
        )
        out.extend(pad + "  " + line for line in message.splitlines()[1:])
    if stack:
        out.extend(pad + "  " + line for line in stack.rstrip().splitlines())
    return out


def render_html(
    traces: Sequence[tuple[Waterfall, str, Mapping[str, Any] | None]], title: str
) -> str:
    """One self-contained HTML file of (waterfall, trace id, analysis) items: the
    page's stylesheet inlined, each waterfall's rows drawn and its root cause
    named; no script, nothing loaded from elsewhere."""
    import jinja2

    from crosstrace import __version__
    from crosstrace.server.web import STATIC_DIR, TEMPLATES_DIR, present

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        keep_trailing_newline=True,
    )
    env.globals.update(fmt_duration=present.format_duration, fmt_time=present.format_time)
    return env.get_template("export.html").render(
        title=title,
        items=[
            {"wf": wf, "trace_id": tid, "verdict": verdict_line(analysis)}
            for wf, tid, analysis in traces
        ],
        css=(STATIC_DIR / "app.css").read_text(encoding="utf-8"),
        selected=None,
        version=__version__,
    )


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(wf: Waterfall, trace_id: str) -> str:
    """A Graphviz digraph: one node per span (colour per service, red outline for
    errors, bold for the root cause), an edge from each parent to its children."""
    out = [
        f"digraph {_dot_id('trace ' + trace_id)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [color="#8c959f"];',
    ]
    for row in wf.rows:
        parts = [row.service, row.name, format_duration(row.duration_ns)]
        if row.error_line:
            parts.append(_fit(row.error_line, 60))
        attrs = [
            "label=" + '"' + "\\n".join(_dot_id(p)[1:-1] for p in parts) + '"',
            f'fillcolor="{_SERVICE_COLOURS[row.service_index % len(_SERVICE_COLOURS)]}40"',
        ]
        if row.error:
            attrs.append('color="#b3261e"')
        if row.role == "root-cause":
            attrs += ["penwidth=3", 'xlabel="root cause"']
        elif row.critical:
            attrs.append("penwidth=2")
        out.append(f"  {_dot_id(row.span_id)} [{', '.join(attrs)}];")
    for row in wf.rows:
        if row.parent >= 0:
            out.append(f"  {_dot_id(wf.rows[row.parent].span_id)} -> {_dot_id(row.span_id)};")
    out.append("}")
    return "\n".join(out) + "\n"
