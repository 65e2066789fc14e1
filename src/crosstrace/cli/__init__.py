"""The ``crosstrace`` command line: one click group, one command per job."""

from __future__ import annotations

from pathlib import Path

import click

from crosstrace import __version__

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crosstrace")
def main() -> None:
    """Global request ids, cross-service tracing and a trace backend."""


@main.command()
@click.option("--host", default=None, help="Address to bind [$CROSSTRACE_HOST; 127.0.0.1].")
@click.option("--port", default=None, help="Port; 0 picks a free one [$CROSSTRACE_PORT; 4318].")
@click.option(
    "--db", default=None, help="Store URL, sqlite:///path or postgresql://... [$CROSSTRACE_DB]."
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with a [serve] table [$CROSSTRACE_CONFIG].",
)
@click.option(
    "--consume", default=None, help="Also read OTLP batches from RabbitMQ: amqp://... URL."
)
@click.option(
    "--no-http", is_flag=True, default=None, help="Consume only; serve no HTTP (needs --consume)."
)
@click.option("--retention", default=None, help="Delete data older than this, e.g. 7d; 'off'.")
@click.option("--max-db-size", default=None, help="SQLite: trim oldest data beyond e.g. 10GB.")
@click.option(
    "--ingest-token",
    "ingest_tokens",
    multiple=True,
    help="Token ingest requires (repeatable; sha256:<hex> accepted). Prefer the env var.",
)
@click.option(
    "--api-token",
    "api_tokens",
    multiple=True,
    help="Token the query API requires (repeatable; sha256:<hex> accepted).",
)
@click.option(
    "--no-auth", is_flag=True, default=None, help="Make loopback-only, token-less mode explicit."
)
@click.option("--queue", "amqp_queue", default=None, help="RabbitMQ queue [crosstrace.otlp].")
@click.option("--exchange", "amqp_exchange", default=None, help="RabbitMQ exchange [crosstrace].")
@click.option("--routing-key", "amqp_routing_key", default=None, help="Routing key [otlp].")
@click.option("--prefetch", default=None, help="Unacknowledged messages per consumer [32].")
@click.option(
    "--decode-workers",
    default=None,
    help="Processes decoding OTLP trace bodies beside the writer; 0: decode in the server"
    " [one per core beyond the first, at most 4].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def serve(config_file: Path | None, verbose: bool, **flags: object) -> None:
    """Run the backend: OTLP ingest, query API, optional RabbitMQ consumer.

    Settings come from flags, then CROSSTRACE_* environment variables, then the
    config file, then defaults. On loopback with no tokens configured, auth is off.
    """
    import logging

    from crosstrace.server.app import StartupError, run
    from crosstrace.server.settings import SettingsError, resolve

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = resolve(flags, config=config_file)
    except SettingsError as exc:
        name = exc.name.removeprefix("amqp_").removesuffix("_tokens").replace("_", "-")
        hint = "--" + name + ("-token" if exc.name.endswith("_tokens") else "")
        raise click.BadParameter(exc.message, param_hint=hint) from None
    try:
        run(settings, echo=lambda line: click.echo(line, err=True))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
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
    from crosstrace.server.config import default_db_url
    from crosstrace.server.logs.importer import parse_timezone, run_import

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


@main.command()
@click.option(
    "--requests",
    "n_requests",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Boot requests to drive before the summary.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the fault plan.")
@click.option("--once", is_flag=True, help="Exit after the summary (status 0 if all traces).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the store, logs and ground truth go [user data dir/demo].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=4318,
    show_default=True,
    help="Port of the backend it starts; 0 picks a free one.",
)
@click.option(
    "--broker",
    default="memory://",
    show_default=True,
    help="kombu URL for RPC, e.g. amqp://guest:guest@127.0.0.1:5672//.",
)
@click.option(
    "--volume-db",
    default=None,
    help="SQLAlchemy URL of the volume service's DB (postgresql://..., mariadb+pymysql://...) "
    "[SQLite in the data dir].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Boot requests in flight at once.",
)
@click.option("--fast", is_flag=True, help="Shorter timeouts and delays (tests, quick looks).")
def demo(
    n_requests: int,
    seed: int,
    once: bool,
    data_dir: Path | None,
    port: int,
    broker: str,
    volume_db: str | None,
    concurrency: int,
    fast: bool,
) -> None:
    """Run a miniature cloud with injected faults, traced into a local backend.

    Starts `crosstrace serve` and the cloud (compute API, image, network, volume,
    scheduler and compute services), boots servers with a progress bar, prints
    a summary with where to look, then keeps a trickle of traffic until Ctrl-C.
    """
    from crosstrace.demo.backend import BackendError
    from crosstrace.demo.cloud import Timings
    from crosstrace.demo.runner import DemoError, DemoSettings, run
    from crosstrace.server.config import default_data_dir

    settings = DemoSettings(
        data_dir=data_dir or default_data_dir() / "demo",
        requests=n_requests,
        seed=seed,
        once=once,
        port=port,
        broker_url=broker,
        volume_db_url=volume_db,
        concurrency=concurrency,
        timings=Timings.fast() if fast else Timings(),
    )
    try:
        status = run(settings)
    except BackendError as exc:
        raise click.ClickException(f"{exc}\n(try --port 0 if the port is taken)") from None
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(status)


def _add_query_commands() -> None:
    """``traces``, ``trace`` and ``request``: read the query API (crosstrace.querycli)."""
    from crosstrace.querycli import request, trace, traces

    for command in (traces, trace, request):
        main.add_command(command)


_add_query_commands()
