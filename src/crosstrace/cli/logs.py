"""``crosstrace logs``: existing log files into the store (``logs import``) and
searching them (``logs search``, defined with the other query commands).

``logs import`` names each file's service and host from its path (see
:mod:`crosstrace.server.logs.names`), prints a summary per file, then what was
imported, how long ``serve`` keeps it and where to look.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import zoneinfo
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from crosstrace.cli.query import DEFAULT_URL, ENV_URL, logs_search

if TYPE_CHECKING:
    from crosstrace.server.logs.importer import FileImportResult

__all__ = ["logs"]


@click.group()
def logs() -> None:
    """Import existing log files; search stored log lines."""


logs.add_command(logs_search)


@logs.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--db",
    "db_url",
    default=None,
    help="Store URL (default: $CROSSTRACE_DB, else a SQLite file in the user's data directory).",
)
@click.option(
    "--service",
    default=None,
    help="Service name for every record (default: from each file's path,"
    " <host>/var/log/<project>/<file>: neutron/server.log -> neutron-server).",
)
@click.option(
    "--host",
    default=None,
    help="Host name for every record (default: the host a line names, else"
    " <host>/var/log/... in the file's path).",
)
@click.option(
    "--tz",
    default=None,
    help="Zone of timestamps written without one, e.g. Europe/Paris or +02:00 (default: UTC).",
)
@click.option(
    "--year",
    type=click.IntRange(1970, 9999),
    default=None,
    help="Year of journald lines, which carry none "
    "(default: the journal header, else the file's modification year).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Records per store write.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def logs_import(
    files: tuple[Path, ...],
    db_url: str | None,
    service: str | None,
    host: str | None,
    tz: str | None,
    year: int | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Import oslo.log, journald and JSON log files (plain or .gz) into the store.

    Malformed lines are counted and reported, never fatal; importing a file again
    adds nothing. Imported records age from their import: `serve`'s retention
    does not delete them before it has kept them for its whole period.
    """
    from crosstrace.server.settings import default_db_url

    zone = parse_timezone(tz) if tz else None
    status = _run_import(
        files,
        db_url=db_url or default_db_url(),
        service=service,
        host=host,
        tz=zone,
        year=year,
        batch_size=batch_size,
        as_json=as_json,
    )
    raise SystemExit(status)


_OFFSET_RE = re.compile(r"(?P<sign>[+-])(?P<h>\d\d):?(?P<m>\d\d)")


def parse_timezone(value: str) -> _dt.tzinfo:
    """``UTC``, an IANA zone name (``Europe/Paris``) or a fixed offset (``+02:00``).

    Raises :class:`click.BadParameter` for anything else.
    """
    if value.upper() in ("UTC", "Z"):
        return _dt.UTC
    m = _OFFSET_RE.fullmatch(value)
    if m is not None:
        hours, minutes = int(m["h"]), int(m["m"])
        if hours <= 23 and minutes <= 59:
            offset = _dt.timedelta(hours=hours, minutes=minutes)
            return _dt.timezone(-offset if m["sign"] == "-" else offset)
    else:
        try:
            return zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    raise click.BadParameter(f"unknown time zone {value!r}", param_hint="--tz")


def _format_result(result: FileImportResult) -> str:
    """The plain-text summary of one file, as the command prints it."""
    s = result.stats
    head = f"{result.path}: service {result.service}"
    if result.host:
        head += f", host {result.host}"
    if s.formats:
        head += ", " + "+".join(sorted(s.formats))
    if result.compressed:
        head += ", gzip"
    lines = [head]
    if result.error is not None and s.lines_read == 0:
        lines.append(f"  error: {result.error}")
        return "\n".join(lines)
    lines += [
        f"  lines read           {s.lines_read}",
        f"  records              {s.records} ({s.lines_in_records} lines,"
        f" {s.continuation_lines} continuation lines joined)",
        f"  stored               {result.stored}",
        f"  already present      {result.duplicates}",
        f"  skipped lines        {s.skipped}",
    ]
    for reason, count in s.skipped_by_reason.most_common():
        examples = ", ".join(str(n) for n in s.skipped_examples.get(reason, []))
        more = ", ..." if count > len(s.skipped_examples.get(reason, [])) else ""
        lines.append(f"    {count} {reason} (line {examples}{more})")
    if s.invalid_request_ids:
        lines.append(f"  invalid request ids  {s.invalid_request_ids} (dropped)")
    if result.truncated_lines:
        from crosstrace.server.logs.importer import MAX_LINE_BYTES

        lines.append(f"  lines cut to {MAX_LINE_BYTES} bytes  {result.truncated_lines}")
    if result.error is not None:
        lines.append(f"  error: {result.error}")
    return "\n".join(lines)


def _run_import(
    paths: Sequence[Path],
    *,
    db_url: str,
    service: str | None,
    host: str | None = None,
    tz: _dt.tzinfo | None,
    year: int | None,
    batch_size: int,
    as_json: bool,
) -> int:
    """Import *paths* into the store at *db_url*, show progress and a summary per
    file; return the exit status (0 when every file was imported)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from crosstrace.server.logs.importer import import_file
    from crosstrace.server.store import open_store

    err = Console(stderr=True, highlight=False)
    results: list[FileImportResult] = []
    try:
        store = open_store(db_url)
    except Exception as exc:  # bad URL, driver missing, server down: all reported alike
        raise click.ClickException(f"cannot open the store: {exc}") from exc
    try:
        for path in paths:
            on_progress: Callable[[int], None] | None = None
            progress: Progress | None = None
            if err.is_terminal:
                progress = Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    transient=True,
                )
                try:
                    total: int | None = path.stat().st_size
                except OSError:
                    total = None
                task = progress.add_task(path.name, total=total)

                def on_progress(done: int, _p: Progress = progress, _t: Any = task) -> None:
                    _p.update(_t, completed=done)

                progress.start()
            elif not as_json:
                err.print(f"importing {path} ...")
            try:
                result = import_file(
                    store,
                    path,
                    service=service,
                    host=host,
                    tz=tz,
                    year=year,
                    batch_size=batch_size,
                    on_progress=on_progress,
                )
            finally:
                if progress is not None:
                    progress.stop()
            results.append(result)
            if not as_json:
                click.echo(_format_result(result))
            if result.store_failed:
                break
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        click.echo(_where_to_look(results, db_url))
    failed = [r for r in results if not r.ok]
    if failed or len(results) < len(paths):
        for r in failed:
            click.echo(f"error: {r.path}: {r.error}", err=True)
        return 1
    return 0


def _where_to_look(results: Sequence[FileImportResult], db_url: str) -> str:
    """What the import brought in, how long the server keeps it, and the commands
    and URL to read it with (printed after the per-file summaries)."""
    stored = sum(r.stored for r in results)
    records = sum(r.stats.records for r in results)
    hosts = sorted({h for r in results for h in r.hosts})
    services = sorted({r.service for r in results})
    firsts = [r.first_ns for r in results if r.first_ns is not None]
    lasts = [r.last_ns for r in results if r.last_ns is not None]
    failed: list[str] = []
    for r in results:
        failed += [rid for rid in r.failed_requests if rid not in failed]
    url = os.environ.get(ENV_URL) or DEFAULT_URL
    lines = [
        f"imported {records} records ({stored} new) from {len(results)} file(s):"
        f" {len(services)} service(s), "
        + (f"host(s) {', '.join(hosts)}" if hosts else "no host named")
    ]
    if firsts and lasts:
        lines.append(f"  dated {_utc(min(firsts))} to {_utc(max(lasts))} UTC")
    lines += [
        "Imported records age from when they were imported: `crosstrace serve` keeps them"
        " for its retention counted from now, whatever their own dates.",
        f"Where to look, with `crosstrace serve{_db_flag(db_url)}` running at {url}:",
        "  crosstrace logs search --level error      the errors, in time order",
    ]
    example = failed[0] if failed else "REQUEST_ID"
    lines.append(
        f"  crosstrace request {example}"
        + ("   a failing request, line by line across hosts" if failed else "")
    )
    if hosts:
        lines.append(f"  crosstrace logs search --host {hosts[0]}")
    lines.append(f"  {url}/api/v1/logs?level=error")
    if len(failed) > 1:
        lines.append("other failing requests: " + ", ".join(failed[1:]))
    return "\n".join(lines)


def _utc(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _db_flag(db_url: str) -> str:
    """`` --db URL`` for a SQLite store other than the default (a database URL with
    credentials is not printed: `` --db ...``)."""
    from crosstrace.server.settings import default_db_url

    if db_url == default_db_url():
        return ""
    return f" --db {db_url}" if db_url.startswith("sqlite:") else " --db ..."
