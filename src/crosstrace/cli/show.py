"""``crosstrace show``: one trace, or every trace of a request, as a terminal
waterfall, JSON, one self-contained HTML file, or a Graphviz graph.

It reads the query API like the other query commands (``--url``, the API token
from ``$CROSSTRACE_API_TOKEN``) and, when the server has the analysis
(``/api/v1/traces/{id}/analysis``), marks the root cause it names. The tree fits
the terminal's width; piped, it is plain text with one span per line, nothing
shortened. Exit status as for the query commands (0; 1 no answer; 2 refused).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import click

from crosstrace.cli.query import DEFAULT_URL, ENV_API_TOKEN, ENV_URL, QueryRefused, api_get
from crosstrace.ids import is_valid_request_id

__all__ = ["FORMATS", "MAX_TRACES", "show"]

FORMATS: Final = ("tree", "json", "html", "dot")
#: Traces of one request shown at most.
MAX_TRACES: Final = 20
TRACE_ID_RE: Final = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)


def _analysis(url: str, trace_id: str) -> dict[str, Any] | None:
    """The trace's analysis, or ``None`` when this server gives none."""
    try:
        doc = api_get(url, f"/traces/{trace_id}/analysis")
    except QueryRefused:
        return None
    return doc if isinstance(doc, dict) else None


def _load(url: str, ident: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the request's document or ``None``, [{"trace": ..., "analysis": ...}])."""
    if TRACE_ID_RE.fullmatch(ident):
        tid = ident.lower()
        trace = api_get(url, "/traces/" + tid)
        return None, [{"trace": trace, "analysis": _analysis(url, tid)}]
    request = api_get(url, "/requests/" + quote(ident, safe=""))
    items = []
    for summary in (request.get("traces") or [])[:MAX_TRACES]:
        tid = str(summary.get("trace_id", ""))
        if TRACE_ID_RE.fullmatch(tid):
            trace = api_get(url, "/traces/" + tid)
            items.append({"trace": trace, "analysis": _analysis(url, tid)})
    return request, items


def _terminal_width(width: int | None) -> int | None:
    """Columns to fit lines into; ``None`` when piped (lines are never shortened)."""
    if width is not None:
        return width
    if not sys.stdout.isatty():
        return None
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def _header(doc: dict[str, Any], analysis: dict[str, Any] | None) -> list[str]:
    from crosstrace.server.web.export import verdict_line
    from crosstrace.server.web.present import format_duration, format_time

    summary = doc.get("summary") or {}
    ids = summary.get("global_request_ids") or summary.get("request_ids") or []
    head = f"trace {doc.get('trace_id', '')}  {format_time(summary.get('start_ns'))} UTC"
    figures = (
        f"{format_duration(int(summary.get('duration_ns', 0)))}, "
        f"{summary.get('span_count', len(doc.get('spans') or []))} spans, "
        f"{summary.get('error_count', 0)} error(s)"
    )
    if ids:
        figures += f", request {ids[0]}"
    verdict = verdict_line(analysis) or "no verdict: the server gave no analysis"
    return [head, figures, verdict]


@click.command()
@click.argument("ident", metavar="TRACE_ID|REQUEST_ID")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="tree", show_default=True,
    help="tree: terminal waterfall; json: the API's documents; html: one "
    "self-contained file; dot: Graphviz.",
)  # fmt: skip
@click.option("--full", is_flag=True, help="tree: full error text, stack and span ids.")
@click.option(
    "--width", type=click.IntRange(40, 1000), default=None,
    help="tree: fit lines to this many columns [the terminal's; piped: never shortened].",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write to this file instead of standard output.",
)  # fmt: skip
@click.option(
    "--url", envvar=ENV_URL, default=DEFAULT_URL, show_default=True,
    help=f"Base URL of `crosstrace serve` [${ENV_URL}]. Token: ${ENV_API_TOKEN}.",
)  # fmt: skip
def show(
    ident: str, fmt: str, full: bool, width: int | None, output: Path | None, url: str
) -> None:
    """Show one trace, or every trace of a request id, marking the root cause."""
    if not (TRACE_ID_RE.fullmatch(ident) or is_valid_request_id(ident)):
        raise click.BadParameter(
            f"{ident!r}: give a trace id (32 hex digits) or a request id (req-<uuid>)",
            param_hint="TRACE_ID|REQUEST_ID",
        )
    request, items = _load(url, ident)
    if fmt == "json":
        doc: Any = items[0] if request is None else {"request": request, "traces": items}
        _emit(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", output)
        return
    from crosstrace.server.web.export import (
        marks_from_analysis,
        render_dot,
        render_html,
        render_tree,
    )
    from crosstrace.server.web.waterfall import build_waterfall

    built = [
        (
            build_waterfall(
                item["trace"].get("spans") or [], marks_from_analysis(item["analysis"])
            ),
            str(item["trace"].get("trace_id", "")),
            item,
        )
        for item in items
    ]
    if fmt == "html":
        title = f"request {ident}" if request is not None else f"trace {ident.lower()}"
        _emit(render_html([(wf, tid, item["analysis"]) for wf, tid, item in built], title), output)
        return
    if fmt == "dot":
        _emit("".join(render_dot(wf, tid) for wf, tid, _ in built), output)
        return
    cols = _terminal_width(width)
    color = output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    lines: list[str] = []
    if request is not None:
        lines.append(
            f"request {ident}: {len(items)} trace(s), {len(request.get('logs') or [])} log line(s)"
        )
        if not items:
            lines.append("no traces carry this request id (crosstrace request shows its log lines)")
    for wf, _, item in built:
        if lines:
            lines.append("")
        header = _header(item["trace"], item["analysis"])
        lines.extend(render_tree(wf, width=cols, color=color, full=full, header=header))
    _emit("\n".join(lines) + "\n", output, color=color)


def _emit(text: str, output: Path | None, *, color: bool = False) -> None:
    if output is None:
        click.echo(text, nl=False, color=color)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}", err=True)
