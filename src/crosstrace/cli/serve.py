"""``crosstrace serve``: run the backend."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["serve"]


@click.command()
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
@click.option(
    "--auth-file",
    default=None,
    help="TOML identities ([[identity]] tables; see `crosstrace token`), reloaded when"
    " changed [$CROSSTRACE_AUTH_FILE].",
)
@click.option(
    "--policy-file",
    default=None,
    help="policy.yaml overriding the rules of `crosstrace policy defaults`.",
)
@click.option(
    "--allowed-hosts",
    default=None,
    help="Host names answered besides the loopback ones and --host, comma separated; '*': any.",
)
@click.option(
    "--keystone-url",
    default=None,
    help="Validate X-Auth-Token with this Keystone (service user from --keystone-user,"
    " password from $CROSSTRACE_KEYSTONE_PASSWORD).",
)
@click.option("--keystone-user", default=None, help="Service user validating tokens [crosstrace].")
@click.option("--keystone-project", default=None, help="Its project [service].")
@click.option("--tls-cert", default=None, help="Serve HTTPS with this PEM certificate.")
@click.option("--tls-key", default=None, help="The PEM private key of --tls-cert.")
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
