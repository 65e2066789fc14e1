"""``crosstrace why`` and ``crosstrace errors``: root cause and error groups.

``why`` takes a trace id or a request id and prints the verdict, the chain from
the user-facing span down to the cause, the cause's evidence and its log lines;
``errors`` prints the error groups of a recent window as a table. Both read the
backend's API (``/api/v1/.../analysis``, ``/api/v1/errors``) and print its JSON
with ``--json``; exit statuses are those of the other query commands.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click
from rich import box
from rich.table import Table
from rich.text import Text

from crosstrace.cli.query import (
    TRACE_ID_RE,
    api_get,
    common_options,
    echo_json,
    format_duration,
    format_time,
    make_console,
)
from crosstrace.ids import is_valid_request_id

__all__ = ["errors", "why"]

_VERDICT_STYLE = {"error": "bold red", "slow": "bold yellow", "ok": "bold green"}


def _check_id(value: str) -> str:
    if TRACE_ID_RE.fullmatch(value):
        return value.lower()
    if is_valid_request_id(value):
        return value
    raise click.BadParameter(
        f"{value!r}: give a trace id (32 hex digits) or a request id (req-<uuid>)",
        param_hint="ID",
    )


def _where(c: dict[str, Any]) -> str:
    return f"{c.get('service', '')} / {c.get('name', '')}"


def _print_candidate(console: Any, c: dict[str, Any], rank: int) -> None:
    ev = c.get("evidence") or {}
    head = Text(f"{rank}. ", style="bold")
    head.append(_where(c), style="bold")
    head.append(f"  [{c.get('reason', '')}] {c.get('explanation', '')}", style="dim")
    console.print(head)
    error = ": ".join(p for p in (c.get("exception_type"), c.get("message")) if p)
    if error:
        console.print(Text(f"   error     {error}", style="red"))
    if c.get("span_id"):
        console.print(Text(f"   span      {c['span_id']} ({ev.get('kind', '')})", style="dim"))
    timing = f"   took      {format_duration(ev.get('duration_ns'))}"
    if ev.get("self_time_ns") is not None:
        timing += f", own time on the critical path {format_duration(ev['self_time_ns'])}"
    if ev.get("usual_duration_ns"):
        timing += (
            f"; usually {format_duration(ev['usual_duration_ns'])} (x{ev.get('ratio_to_usual')})"
        )
    console.print(Text(timing))
    if ev.get("db_statement"):
        console.print(Text(f"   statement {ev['db_statement'][:300]}"))
    if ev.get("timed_out_span_id"):
        console.print(Text(f"   caller    {ev['timed_out_span_id']} gave up waiting", style="dim"))
    line = c.get("log")
    if line:
        where = f" ({line['source']})" if line.get("source") else ""
        console.print(Text(f"   origin    {line.get('service')} {line.get('severity')}{where}"))
        if line.get("copies"):
            console.print(Text(f"   repeated  by {', '.join(line['copies'])}", style="dim"))
    stack = str(ev.get("stacktrace") or "").strip()
    if stack:
        for text in stack.splitlines()[-6:]:
            console.print(Text(f"   | {text}", style="dim"))
    for record in (ev.get("logs") or [])[:10]:
        body = str(record.get("body", "")).split("\n", 1)[0][:200]
        console.print(
            Text(
                f"   log       {format_time(record.get('time_ns'))} {record.get('service')} "
                f"{record.get('severity')} {body}"
            )
        )


@click.command()
@click.argument("ident", metavar="ID", callback=lambda ctx, param, value: _check_id(value))
@click.option("--slow", default=None, help="Slow from this duration on, e.g. 1s (default: usual).")
@common_options
def why(ident: str, slow: str | None, url: str, as_json: bool) -> None:
    """Why a trace or a request failed (or was slow): verdict, chain, evidence."""
    kind = "requests" if ident.startswith("req-") else "traces"
    params = {"slow": slow} if slow else {}
    doc = api_get(url, f"/{kind}/{quote(ident, safe='')}/analysis", params)
    if as_json:
        echo_json(doc)
        return
    console = make_console()
    verdict = str(doc.get("verdict", ""))
    head = Text(f"{kind[:-1]} {ident}: ")
    head.append(verdict, style=_VERDICT_STYLE.get(verdict, ""))
    head.append(f"  ({format_duration(doc.get('duration_ns'))}, {doc.get('span_count', 0)} spans)")
    console.print(head)
    candidates = doc.get("candidates") or []
    if not candidates:
        console.print(
            "no root cause: the request succeeded" if verdict == "ok" else "no cause found"
        )
    else:
        root = candidates[0]
        console.print(Text(f"root cause: {_where(root)}", style="bold"))
        chain = doc.get("chain") or []
        if chain:
            console.print(Text(f"chain ({len(chain)} spans, user-facing first):"))
            console.print(
                Text(
                    "  " + " -> ".join(chain[:12]) + (" ..." if len(chain) > 12 else ""),
                    style="dim",
                )
            )
        for rank, cand in enumerate(candidates[:5], 1):
            _print_candidate(console, cand, rank)
    cons = doc.get("consequences") or []
    if cons:
        console.print(Text(f"consequences ({len(cons)}):"))
        for c in cons[:10]:
            console.print(
                Text(f"  {c.get('service')} / {c.get('name')}: {c.get('why')}", style="dim")
            )
    last = doc.get("last_traced_element")
    if last:
        console.print(
            Text(
                f"last traced element: {last.get('service')} / {last.get('name')} "
                f"({last.get('span_id')})",
                style="dim",
            )
        )
    for note in doc.get("notes") or []:
        console.print(Text(f"note: {note}", style="yellow"))


@click.command()
@click.option(
    "--since", default="1h", show_default=True, help="Window start: 15m, 1h, 2d, RFC 3339."
)
@click.option("--until", "until", default=None, help="Window end (default now).")
@click.option("--service", default=None, help="Only root causes in this service.")
@click.option("--project", default=None, help="Only failures of this project.")
@common_options
def errors(
    since: str,
    until: str | None,
    service: str | None,
    project: str | None,
    url: str,
    as_json: bool,
) -> None:
    """Error groups: failures grouped by root cause, most frequent first."""
    params = {"start": since, "end": until, "service": service, "project": project}
    doc = api_get(url, "/errors", {k: v for k, v in params.items() if v})
    if as_json:
        echo_json(doc)
        return
    console = make_console()
    groups = doc.get("groups") or []
    if not groups:
        console.print(f"no failures since {since}")
        return
    table = Table(
        title=f"{len(groups)} error group(s) since {since}",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("count", justify="right")
    table.add_column("group", no_wrap=True)
    table.add_column("root cause")
    table.add_column("error")
    table.add_column("last seen (UTC)", no_wrap=True)
    table.add_column("projects", justify="right")
    table.add_column("sample trace", no_wrap=True)
    for g in groups:
        sig = g.get("signature") or {}
        error = ": ".join(p for p in (sig.get("exception_type"), sig.get("message")) if p)
        samples = g.get("sample_trace_ids") or []
        table.add_row(
            Text(str(g.get("count", 0)), style="bold red"),
            Text(str(g.get("group_id", "")), style="dim"),
            Text(f"{sig.get('service', '')} / {sig.get('operation', '')}"),
            Text(error[:160]),
            Text(format_time(g.get("last_seen_ns"))),
            Text(str(len(g.get("projects") or []))),
            Text(samples[0] if samples else "-", style="dim"),
        )
    console.print(table)
