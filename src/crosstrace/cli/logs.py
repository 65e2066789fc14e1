"""``crosstrace logs``: work with existing log files (``logs import``)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["logs"]


@click.group()
def logs() -> None:
    """Work with existing log files."""


@logs.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--db",
    "db_url",
    default=None,
    help="Store URL (default: $CROSSTRACE_DB, else a SQLite file in the user's data directory).",
)
@click.option(
    "--service", default=None, help="Service name for every record (default: from each file name)."
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
    tz: str | None,
    year: int | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Import oslo.log, journald and JSON log files (plain or .gz) into the store.

    Malformed lines are counted and reported, never fatal; importing a file again
    adds nothing.
    """
    from crosstrace.server.logs.importer import parse_timezone, run_import
    from crosstrace.server.settings import default_db_url

    zone = parse_timezone(tz) if tz else None
    status = run_import(
        files,
        db_url=db_url or default_db_url(),
        service=service,
        tz=zone,
        year=year,
        batch_size=batch_size,
        as_json=as_json,
    )
    raise SystemExit(status)
