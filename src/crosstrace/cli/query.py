"""Query commands of the ``crosstrace`` CLI: ``traces``, ``trace``, ``request`` and
``logs search``.

They read the backend's query API over HTTP (``/api/v1/...``) so that a failed
request can be followed from a shell: find the failed traces, open one trace as
a span tree, or gather every trace and log line of one request id. Output is a
table on a terminal, or the API's JSON with ``--json`` for scripts.

Exit status: 0 on success; 1 when no answer could be had (backend unreachable,
a 5xx, a response that is not the API's JSON); 2 when the backend refused the
query (a bad parameter or id, no such trace, a missing or wrong API token).
Every failure is one ``Error: ...`` line on stderr, never a traceback.

httpx is imported only when a command runs, so ``crosstrace --help`` works
without it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlsplit

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from crosstrace.ids import is_valid_request_id

__all__ = [
    "API_PREFIX",
    "DEFAULT_URL",
    "ENV_API_TOKEN",
    "ENV_URL",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "BackendUnavailable",
    "QueryError",
    "QueryRefused",
    "logs_search",
    "request",
    "trace",
    "traces",
]

#: Environment variable naming the backend's base URL.
ENV_URL: Final = "CROSSTRACE_URL"
#: Environment variable holding the query API token (sent as a Bearer token).
ENV_API_TOKEN: Final = "CROSSTRACE_API_TOKEN"  # noqa: S105 - a variable name, not a secret
#: Where ``crosstrace serve`` listens by default.
DEFAULT_URL: Final = "http://127.0.0.1:4318"
API_PREFIX: Final = "/api/v1"
#: Seconds to wait for the backend (connect and each read).
TIMEOUT_SECONDS: Final = 10.0
#: No answer: unreachable backend, 5xx, a body that is not the API's JSON.
EXIT_UNAVAILABLE: Final = 1
#: The backend refused the query: 4xx (bad parameter, unknown trace, auth).
EXIT_REFUSED: Final = 2

TRACE_ID_RE = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
_EXCEPTION_EVENT: Final = "exception"

F = TypeVar("F", bound=Callable[..., Any])


class QueryError(click.ClickException):
    """A query that failed: one ``Error: ...`` line on stderr, never a traceback."""


class BackendUnavailable(QueryError):
    """No answer: unreachable backend, a 5xx, a body that is not the API's JSON."""

    exit_code = EXIT_UNAVAILABLE


class QueryRefused(QueryError):
    """The backend refused the query (4xx): bad parameter or id, unknown trace, auth."""

    exit_code = EXIT_REFUSED


# --------------------------------------------------------------------------- HTTP


def base_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        valid = False
    if not valid:
        raise click.BadParameter(
            f"{url!r} is not an http(s) URL, e.g. {DEFAULT_URL}", param_hint="--url"
        )
    return url.rstrip("/")


def response_detail(response: Any) -> str:
    """The API's error text: FastAPI's ``detail`` (a string or a list of problems)."""
    try:
        body = response.json()
    except ValueError:
        return str(response.text.strip()[:200] or response.reason_phrase)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # 422: [{"loc": [...], "msg": "..."}]
        problems = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("query", "path")]
                problems.append(f"{'.'.join(loc) or 'request'}: {item.get('msg', '')}")
        if problems:
            return "; ".join(problems)
    return str(response.reason_phrase or "request refused")


def api_get(url: str, path: str, params: Mapping[str, str | int] | None = None) -> Any:
    """GET *path* of the API at *url*; the decoded JSON, or :class:`QueryError`."""
    try:
        import httpx
    except ImportError:  # httpx comes with the integrations extra
        raise BackendUnavailable(
            "the query commands need httpx: pip install 'crosstrace[integrations]'"
        ) from None
    base = base_url(url)
    headers = {"Accept": "application/json"}
    token = os.environ.get(ENV_API_TOKEN, "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.get(
            base + API_PREFIX + path,
            params=dict(params or {}),
            headers=headers,
            timeout=TIMEOUT_SECONDS,
            follow_redirects=False,
        )
    except httpx.TimeoutException:
        raise BackendUnavailable(
            f"the backend at {base} did not answer within {TIMEOUT_SECONDS:g}s"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise BackendUnavailable(
            f"cannot reach the backend at {base}: {exc or type(exc).__name__} "
            f"(is `crosstrace serve` running? set --url or ${ENV_URL})"
        ) from None
    status = response.status_code
    if status == 401:
        hint = "the token was refused" if token else f"set ${ENV_API_TOKEN}"
        raise QueryRefused(f"the backend at {base} requires an API token ({hint})")
    if 400 <= status < 500:
        raise QueryRefused(f"{response_detail(response)} (HTTP {status})")
    if status != 200:
        raise BackendUnavailable(
            f"the backend at {base} answered HTTP {status}: {response_detail(response)}"
        )
    try:
        return response.json()
    except ValueError:
        raise BackendUnavailable(
            f"{base} did not answer with the query API's JSON (is it a crosstrace backend?)"
        ) from None


# --------------------------------------------------------------------------- output


def make_console() -> Console:
    """Rich console on stdout; off a terminal, wide enough never to cut an id."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=1000)
    return console


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def format_time(ns: Any) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS.mmm`` of nanoseconds since the epoch."""
    try:
        moment = datetime.fromtimestamp(int(ns) / 1e9, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_duration(ns: Any) -> str:
    try:
        value = int(ns)
    except (TypeError, ValueError):
        return "-"
    if value < 1_000_000:
        return f"{value / 1000:.0f} µs"
    if value < 1_000_000_000:
        return f"{value / 1e6:.1f} ms"
    return f"{value / 1e9:.2f} s"


def _request_id_of(summary: Mapping[str, Any]) -> str:
    ids = summary.get("global_request_ids") or summary.get("request_ids") or []
    return str(ids[0]) if ids else "-"


def _traces_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("start (UTC)", no_wrap=True)
    table.add_column("trace id", no_wrap=True)
    table.add_column("root")
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("spans", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("global request id", no_wrap=True)
    for row in rows:
        errors = int(row.get("error_count", 0))
        table.add_row(
            Text(format_time(row.get("start_ns"))),
            Text(str(row.get("trace_id", ""))),
            Text(f"{row.get('root_service', '')} {row.get('root_operation', '')}"),
            Text(format_duration(row.get("duration_ns"))),
            Text(str(row.get("span_count", ""))),
            Text(str(errors), style="bold red" if errors else ""),
            Text(_request_id_of(row)),
        )
    return table


def _exception_of(span: Mapping[str, Any]) -> str:
    """``Type: message`` of the span's exception event, else its status message."""
    for event in span.get("events") or []:
        if isinstance(event, dict) and event.get("name") == _EXCEPTION_EVENT:
            attrs = event.get("attributes") or {}
            kind = str(attrs.get("exception.type", "") or "")
            message = str(attrs.get("exception.message", "") or "")
            return ": ".join(p for p in (kind, message) if p)
    return str(span.get("status_message", "") or "")


# ------------------------------------------------------------------------- options


def common_options(func: F) -> F:
    """``--url`` and ``--json``, shared by every query command."""
    func = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")(func)
    func = click.option(
        "--url",
        envvar=ENV_URL,
        default=DEFAULT_URL,
        show_default=True,
        help=f"Base URL of `crosstrace serve` [${ENV_URL}]. Token: ${ENV_API_TOKEN}.",
    )(func)
    return func


def _check_trace_id(value: str) -> str:
    if not TRACE_ID_RE.fullmatch(value):
        raise click.BadParameter(f"{value!r}: a trace id is 32 hex digits", param_hint="TRACE_ID")
    return value.lower()


def _check_request_id(value: str) -> str:
    if not is_valid_request_id(value):
        raise click.BadParameter(
            f"{value!r}: a request id is req- followed by a lowercase UUID",
            param_hint="REQUEST_ID",
        )
    return value


# ------------------------------------------------------------------------ commands


@click.command()
@click.option("--error", "errors_only", is_flag=True, help="Only traces with an error span.")
@click.option("--service", default=None, help="Only traces touching this service.")
@click.option("--operation", default=None, help="Only traces with a span of this name.")
@click.option("--since", default=None, help="Started after: relative (15m, 1h, 2d) or RFC 3339.")
@click.option("--min-duration", default=None, help="At least this long, e.g. 250ms, 2s.")
@click.option("--request-id", default=None, help="Carrying this global or local request id.")
@click.option("--project", default=None, help="Of this project id.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Traces shown."
)
@common_options
def traces(
    errors_only: bool,
    service: str | None,
    operation: str | None,
    since: str | None,
    min_duration: str | None,
    request_id: str | None,
    project: str | None,
    limit: int,
    url: str,
    as_json: bool,
) -> None:
    """Search traces, newest first."""
    params: dict[str, str | int] = {"limit": limit}
    if errors_only:
        params["error"] = "true"
    optional = {
        "service": service,
        "operation": operation,
        "start": since,
        "min_duration": min_duration,
        "request_id": request_id,
        "project": project,
    }
    params.update({k: v for k, v in optional.items() if v})
    page = api_get(url, "/traces", params)
    if as_json:
        echo_json(page)
        return
    rows = page.get("traces", []) if isinstance(page, dict) else []
    console = make_console()
    if not rows:
        console.print("no traces match")
        return
    console.print(_traces_table(rows, f"{len(rows)} trace(s), newest first"))
    if page.get("next_cursor"):
        console.print(Text("more traces match: raise --limit (at most 1000) to see them"))


@click.command()
@click.argument("trace_id", callback=lambda ctx, param, value: _check_trace_id(value))
@common_options
def trace(trace_id: str, url: str, as_json: bool) -> None:
    """Show one trace as a span tree; error spans with their exception."""
    doc = api_get(url, "/traces/" + quote(trace_id, safe=""))
    if as_json:
        echo_json(doc)
        return
    console = make_console()
    summary = doc.get("summary") or {}
    spans = doc.get("spans") or []
    head = Text(f"trace {doc.get('trace_id', trace_id)}")
    if summary:
        head.append(
            f"  {format_time(summary.get('start_ns'))} UTC, "
            f"{format_duration(summary.get('duration_ns'))}, "
            f"{summary.get('span_count', len(spans))} spans, "
        )
        errors = int(summary.get("error_count", 0))
        head.append(f"{errors} error(s)", style="bold red" if errors else "")
        head.append(f", request {_request_id_of(summary)}")
    console.print(head)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("span")
    table.add_column("service", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("status")
    table.add_column("span id", no_wrap=True)
    for span in spans:
        depth = int(span.get("depth", 0))
        is_error = span.get("status") == "error"
        style = "bold red" if is_error else ""
        status = str(span.get("status", ""))
        if is_error:
            cause = _exception_of(span)
            status = f"error: {cause}" if cause else "error"
        table.add_row(
            Text("  " * depth + str(span.get("name", "")), style=style),
            Text(str(span.get("service", ""))),
            Text(str(span.get("kind_name", ""))),
            Text(format_duration(span.get("duration_ns"))),
            Text(status, style=style),
            Text(str(span.get("span_id", "")), style="dim"),
        )
    console.print(table)


@click.command()
@click.argument("request_id", callback=lambda ctx, param, value: _check_request_id(value))
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Log lines shown.",
)
@common_options
def request(request_id: str, limit: int, url: str, as_json: bool) -> None:
    """Show one request (global or local id): its traces and its log lines."""
    doc = api_get(url, "/requests/" + quote(request_id, safe=""), {"limit": limit})
    if as_json:
        echo_json(doc)
        return
    console = make_console()
    rows = doc.get("traces") or []
    logs = doc.get("logs") or []
    console.print(Text(f"request {doc.get('request_id', request_id)}"))
    if rows:
        console.print(_traces_table(rows, f"{len(rows)} trace(s), oldest first"))
    else:
        console.print("no traces for this request")
    if not logs:
        console.print("no log lines for this request")
        return
    hops = doc.get("hops") or []
    title = f"{len(logs)} log line(s), oldest first"
    if doc.get("truncated"):
        title += f" (cut at --limit {limit})"
    console.print(_logs_table(logs, title, hops))
    if hops:
        console.print(Text(f"{len(hops)} hop(s) between services and hosts:"))
        for hop in hops:
            console.print(
                Text(
                    f"  {_site(hop, 'caller')} -> {_site(hop, 'callee')}"
                    f"  {hop.get('kind', '')} {hop.get('via', '')}"
                )
            )


@click.command("search")
@click.option("--request-id", default=None, help="Of this global or local request id.")
@click.option("--service", default=None, help="Of this service.")
@click.option("--host", default=None, help="Of this host.")
@click.option("--level", default=None, help="At least this level: debug, info, warning, error.")
@click.option("--text", "q", default=None, help="Whose message contains this text.")
@click.option("--since", default=None, help="After: relative (15m, 1h, 2d) or RFC 3339.")
@click.option("--until", default=None, help="Before: relative or RFC 3339.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Lines shown."
)
@common_options
def logs_search(
    request_id: str | None,
    service: str | None,
    host: str | None,
    level: str | None,
    q: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    url: str,
    as_json: bool,
) -> None:
    """Search stored log lines, oldest first, with their service and host."""
    params: dict[str, str | int] = {"limit": limit}
    optional = {
        "request_id": _check_request_id(request_id) if request_id else None,
        "service": service,
        "host": host,
        "level": level,
        "q": q,
        "start": since,
        "end": until,
    }
    params.update({k: v for k, v in optional.items() if v})
    doc = api_get(url, "/logs", params)
    if as_json:
        echo_json(doc)
        return
    logs = doc.get("logs", []) if isinstance(doc, dict) else []
    console = make_console()
    if not logs:
        console.print("no log lines match")
        return
    console.print(_logs_table(logs, f"{len(logs)} log line(s), oldest first", []))
    if len(logs) >= limit:
        console.print(Text("more lines may match: narrow the search or raise --limit"))


def _site(hop: Mapping[str, Any], side: str) -> str:
    """``service@host`` of a hop's caller or callee."""
    service = str(hop.get(f"{side}_service") or "")
    host = hop.get(f"{side}_host")
    return f"{service}@{host}" if host else service


def _logs_table(logs: list[dict[str, Any]], title: str, hops: list[dict[str, Any]]) -> Table:
    """Log lines with time, host, service, level, ids and message; the line a hop
    starts from says where it goes (``->``), the line it reaches where it came from."""
    marks: dict[int, list[str]] = {}
    for hop in hops:
        try:
            caller, callee = int(hop["caller"]), int(hop["callee"])
        except (KeyError, TypeError, ValueError):
            continue
        marks.setdefault(caller, []).append(f"-> {_site(hop, 'callee')}")
        marks.setdefault(callee, []).append(f"<- {_site(hop, 'caller')} ({hop.get('kind', '')})")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("host", no_wrap=True)
    table.add_column("service", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("request id", no_wrap=True)
    table.add_column("trace id", no_wrap=True)
    if marks:
        table.add_column("hop", no_wrap=True)
    table.add_column("message")
    for i, record in enumerate(logs):
        level = str(record.get("severity_text") or record.get("severity_number") or "")
        severity = int(record.get("severity_number") or 0)
        style = "bold red" if severity >= 17 else ("yellow" if severity >= 13 else "")
        cells = [
            Text(format_time(record.get("time_ns"))),
            Text(str(record.get("host") or "-")),
            Text(str(record.get("service", ""))),
            Text(level, style=style),
            Text(str(record.get("request_id") or "-")),
            Text(str(record.get("trace_id") or "-"), style="dim"),
        ]
        if marks:
            cells.append(Text("; ".join(marks.get(i, [])), style="cyan"))
        cells.append(Text(str(record.get("body", "")), style=style))
        table.add_row(*cells)
    return table
