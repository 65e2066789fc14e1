"""``crosstrace sampling set`` and ``crosstrace sampling show``: central tracing settings.

``set`` changes a service's ratio, overhead budget, rate limit or slow threshold
in ``crosstrace serve`` (``--service _default`` for every service without
settings of its own); tracers pick the change up at their next poll.
``show`` prints the settings and, per service, the budget beside the overhead
its tracer reports. Both use ``--url`` / ``$CROSSTRACE_URL`` and the API token
``$CROSSTRACE_API_TOKEN``; exit statuses are those of the query commands.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import click
from rich import box
from rich.table import Table

from crosstrace.cli.query import (
    API_PREFIX,
    ENV_API_TOKEN,
    TIMEOUT_SECONDS,
    BackendUnavailable,
    QueryRefused,
    api_get,
    base_url,
    common_options,
    echo_json,
    make_console,
    response_detail,
)
from crosstrace.settings import parse_duration

__all__ = ["parse_fraction", "sampling"]

DEFAULT_SERVICE = "_default"


def parse_fraction(text: str, what: str) -> float:
    """``"2%"`` -> 0.02, ``"0.02"`` -> 0.02; a fraction between 0 and 1."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a fraction like 2% or 0.02") from None
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{what} must be between 0 and 1 (0% and 100%)")
    return value


def _put(url: str, path: str, body: dict[str, Any]) -> Any:
    import httpx

    base = base_url(url)
    headers = {"Accept": "application/json"}
    token = os.environ.get(ENV_API_TOKEN, "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.put(
            base + API_PREFIX + path, json=body, headers=headers, timeout=TIMEOUT_SECONDS
        )
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"cannot reach the backend at {base}: {exc}") from None
    if response.status_code == 401:
        raise QueryRefused(f"the backend at {base} requires an API token (${ENV_API_TOKEN})")
    if 400 <= response.status_code < 500:
        raise QueryRefused(f"{response_detail(response)} (HTTP {response.status_code})")
    if response.status_code != 200:
        raise BackendUnavailable(f"the backend at {base} answered HTTP {response.status_code}")
    return response.json()


@click.group()
def sampling() -> None:
    """Central tracing settings per service, and the overhead each one spends."""


@sampling.command("set")
@click.option("--service", default=DEFAULT_SERVICE, show_default=True, help="Service name.")
@click.option("--ratio", default=None, help="Head-sampling ratio, e.g. 10% or 0.1.")
@click.option("--budget", default=None, help="CPU overhead budget, e.g. 2% or 0.02.")
@click.option("--rate-limit", type=float, default=None, help="Sampled traces per second.")
@click.option("--slow-threshold", default=None, help="Keep traces slower than this, e.g. 2s.")
@click.option(
    "--unset",
    multiple=True,
    type=click.Choice(["ratio", "budget", "rate_limit", "slow_threshold"]),
    help="Follow the default again for this setting (repeatable).",
)
@common_options
def set_(
    service: str,
    ratio: str | None,
    budget: str | None,
    rate_limit: float | None,
    slow_threshold: str | None,
    unset: tuple[str, ...],
    url: str,
    as_json: bool,
) -> None:
    """Change a service's tracing settings in `crosstrace serve`."""
    body: dict[str, Any] = dict.fromkeys(unset)
    if ratio is not None:
        body["ratio"] = parse_fraction(ratio, "--ratio")
    if budget is not None:
        body["budget"] = parse_fraction(budget, "--budget")
    if rate_limit is not None:
        if rate_limit < 0:
            raise click.BadParameter("--rate-limit must be >= 0")
        body["rate_limit"] = rate_limit
    if slow_threshold is not None:
        try:
            body["slow_threshold"] = parse_duration(slow_threshold)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--slow-threshold") from None
    if not body:
        raise click.UsageError("nothing to set: give --ratio, --budget, --rate-limit, ...")
    doc = _put(url, "/sampling/" + quote(service, safe=""), body)
    if as_json:
        echo_json(doc)
        return
    settings = doc.get("settings", {})
    shown = ", ".join(f"{k}={_show(k, v)}" for k, v in sorted(settings.items())) or "defaults"
    click.echo(f"{doc.get('service', service)}: {shown}")


def _show(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in ("ratio", "budget"):
        return f"{float(value) * 100:g}%"
    if name == "slow_threshold":
        return f"{float(value):g}s"
    return f"{value:g}" if isinstance(value, float) else str(value)


@sampling.command("show")
@click.option("--service", default=None, help="Only this service.")
@common_options
def show(service: str | None, url: str, as_json: bool) -> None:
    """Print the settings, and budget against actual overhead per service."""
    if service is not None:
        doc = api_get(url, "/sampling/" + quote(service, safe=""))
        if as_json:
            echo_json(doc)
            return
        settings = doc.get("settings", {})
        for name in ("ratio", "budget", "rate_limit", "slow_threshold"):
            click.echo(f"{name:15} {_show(name, settings.get(name))}")
        return
    settings_doc = api_get(url, "/sampling")
    overhead_doc = api_get(url, "/overhead")
    if as_json:
        echo_json({"sampling": settings_doc, "overhead": overhead_doc})
        return
    table = Table(box=box.SIMPLE_HEAD, title="tracing settings and overhead")
    for col in ("service", "ratio", "budget", "rate limit", "slow", "overhead", "eff. ratio"):
        table.add_column(col)
    services = settings_doc.get("services", {})
    reports = {r["service"]: r for r in overhead_doc.get("services", [])}
    for name in sorted(set(services) | set(reports)):
        own = services.get(name, {})
        rep = reports.get(name, {}).get("reported", {})
        table.add_row(
            name,
            _show("ratio", own.get("ratio")),
            _show("budget", own.get("budget")),
            _show("rate_limit", own.get("rate_limit")),
            _show("slow_threshold", own.get("slow_threshold")),
            _show("budget", rep.get("overhead")),
            _show("ratio", rep.get("effective_ratio")),
        )
    make_console().print(table)
