"""``crosstrace demo``: a miniature cloud with injected faults, traced."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["demo"]


@click.command()
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
    help="RPC broker: memory:// (oslo.messaging's in-process fake driver) or a "
    "RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672//.",
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
@click.option(
    "--auth",
    is_flag=True,
    help="Access control on: the backend takes only the tokens it prints (an admin, an"
    " ingest token, a reader per domain).",
)
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
    auth: bool,
) -> None:
    """Run a miniature cloud with injected faults, traced into a local backend.

    Starts `crosstrace serve` and the cloud (compute API, image, network, volume,
    scheduler and compute services), boots servers with a progress bar, prints
    a summary with where to look, then keeps a trickle of traffic until Ctrl-C.
    """
    from crosstrace.demo.backend import BackendError
    from crosstrace.demo.cloud import Timings
    from crosstrace.demo.runner import DemoError, DemoSettings, run
    from crosstrace.server.settings import default_data_dir

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
        auth=auth,
    )
    try:
        status = run(settings)
    except BackendError as exc:
        raise click.ClickException(f"{exc}\n(try --port 0 if the port is taken)") from None
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(status)
