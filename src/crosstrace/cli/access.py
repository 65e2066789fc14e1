"""``crosstrace token`` and ``crosstrace policy``: identities and rules of the backend."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click

__all__ = ["policy", "token"]

_ROLES = ("reader", "sensitive", "admin", "ingest", "metrics")


def _auth_file(path: str | None) -> Path:
    value = path or os.environ.get("CROSSTRACE_AUTH_FILE")
    if not value:
        raise click.UsageError("give --auth-file FILE (or set CROSSTRACE_AUTH_FILE)")
    return Path(value)


_AUTH_FILE = click.option(
    "--auth-file",
    "auth_file",
    default=None,
    help="The identities file `serve --auth-file` reads [$CROSSTRACE_AUTH_FILE].",
)


@click.group()
def token() -> None:
    """Create, list and revoke the tokens of the --auth-file identities."""


@token.command("create")
@click.option("--name", required=True, help="Identity name, shown in the audit log.")
@click.option(
    "--role", "roles", multiple=True, required=True, type=click.Choice(_ROLES), help="Repeatable."
)
@click.option("--domain", "domains", multiple=True, help="Domain id in scope (repeatable).")
@click.option("--project", "projects", multiple=True, help="Project id in scope (repeatable).")
@click.option("--expires", default="never", show_default=True, help="e.g. 12h, 30d, 2w.")
@_AUTH_FILE
def create(
    name: str,
    roles: tuple[str, ...],
    domains: tuple[str, ...],
    projects: tuple[str, ...],
    expires: str,
    auth_file: str | None,
) -> None:
    """Add an identity and print its token, once: only its hash is kept.

    Without --domain and --project the identity is cloud-wide."""
    from crosstrace.server.auth.identities import AuthFileError, add_identity, parse_expiry

    path = _auth_file(auth_file)
    try:
        when = parse_expiry(expires)
        secret = add_identity(path, name, roles, domains, projects, when)
    except (AuthFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    scope = ", ".join([*(f"domain {d}" for d in domains), *(f"project {p}" for p in projects)])
    click.echo(
        f"identity {name!r} ({', '.join(roles)}; {scope or 'cloud-wide'}"
        f"{'; expires ' + when.isoformat() if when else ''}) added to {path}",
        err=True,
    )
    click.echo("the token (shown once, keep it in a secret store):", err=True)
    click.echo(secret)


@token.command("list")
@_AUTH_FILE
def list_(auth_file: str | None) -> None:
    """The identities, without their tokens."""
    from crosstrace.server.auth.identities import AuthFileError, load_identities

    try:
        entries = load_identities(_auth_file(auth_file))
    except AuthFileError as exc:
        raise click.ClickException(str(exc)) from None
    now = dt.datetime.now(dt.UTC)
    for e in entries:
        scope = ",".join(
            [*(f"domain:{d}" for d in e.domains), *(f"project:{p}" for p in e.projects)]
        )
        state = "expired" if e.expired(now) else "active"
        until = e.expires.isoformat() if e.expires else "never"
        click.echo(f"{e.name}\t{','.join(e.roles)}\t{scope or 'cloud'}\t{until}\t{state}")


@token.command("revoke")
@click.option("--name", required=True, help="The identity to remove.")
@_AUTH_FILE
def revoke(name: str, auth_file: str | None) -> None:
    """Remove an identity; a running server stops accepting its token within a second."""
    from crosstrace.server.auth.identities import AuthFileError, revoke_identity

    try:
        removed = revoke_identity(_auth_file(auth_file), name)
    except AuthFileError as exc:
        raise click.ClickException(str(exc)) from None
    if not removed:
        raise click.ClickException(f"no identity named {name!r}")
    click.echo(f"identity {name!r} revoked", err=True)


@click.group()
def policy() -> None:
    """The access rules (oslo.policy)."""


@policy.command("defaults")
def defaults() -> None:
    """Print the default rules as a commented policy.yaml."""
    from crosstrace.server.auth.policy import render_defaults

    click.echo(render_defaults())
