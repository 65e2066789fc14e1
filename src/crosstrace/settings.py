"""Tracing settings: the fields, their parsers, and where values come from.

:class:`Settings` holds the resolved values :func:`crosstrace.configure` uses;
:data:`ENV_VARS` names the environment variable of each; the parsers turn raw
strings (environment, file, central settings) into values and raise
:class:`ValueError` with a clear message. :mod:`crosstrace.config` layers them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from crosstrace.export.transports import (
    DEFAULT_AMQP_EXCHANGE,
    DEFAULT_AMQP_QUEUE,
    DEFAULT_AMQP_ROUTING_KEY,
)

__all__ = [
    "ENV_CONFIG_FILE",
    "ENV_VARS",
    "TRANSPORTS",
    "Settings",
    "parse_duration",
]

log = logging.getLogger("crosstrace.config")

ENV_CONFIG_FILE = "CROSSTRACE_CONFIG_FILE"
TRANSPORTS = ("otlp", "amqp", "file", "none")


def _default_service_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name or "unknown_service"


@dataclass(frozen=True)
class Settings:
    """Resolved tracing settings (see the module docstring for each)."""

    service_name: str = field(default_factory=_default_service_name)
    transport: str = "otlp"
    endpoint: str = "http://127.0.0.1:4318"
    headers: tuple[tuple[str, str], ...] = ()
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    amqp_exchange: str = DEFAULT_AMQP_EXCHANGE
    amqp_routing_key: str = DEFAULT_AMQP_ROUTING_KEY
    amqp_queue: str = DEFAULT_AMQP_QUEUE
    file: str = "crosstrace-otlp.jsonl"
    sample_ratio: float = 1.0
    overhead_budget: float = 0.01
    rate_limit: float = 0.0
    slow_threshold: float = 2.0
    trigger_key: str | None = None
    osprofiler_keys: tuple[str, ...] = ()
    redact_keys: tuple[str, ...] = ()
    queue_size: int = 2048
    batch_size: int = 512
    export_delay: float = 1.0
    export_timeout: float = 10.0
    config_file: str | None = None
    reload_on_sighup: bool = False
    sampling_url: str | None = None
    sampling_interval: float = 30.0


# Settings whose change needs a new exporter/tracer (the rest update in place).
_REBUILD = (
    "service_name",
    "transport",
    "endpoint",
    "headers",
    "amqp_url",
    "amqp_exchange",
    "amqp_routing_key",
    "amqp_queue",
    "file",
    "queue_size",
    "batch_size",
    "export_delay",
    "export_timeout",
)

# -- value parsers: raise ValueError with a clear message ------------------------

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d|w)?\s*", re.ASCII)
_DURATION_UNITS = {
    None: 1.0,
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}


def parse_duration(value: object, *, unit_required: bool = False) -> float:
    """Seconds from ``2``, ``2.5``, ``"250ms"``, ``"2s"``, ``"1m"``, ``"7d"``
    (units ns, us, ms, s, m, h, d, w). With *unit_required*, only text with a unit."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number or a string like '250ms'")
    if isinstance(value, (int, float)) and not unit_required:
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if m is None or (unit_required and m.group(2) is None):
            raise ValueError(f"not a duration: {value!r} (use e.g. '250ms', '2s', '7d')")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not 0.0 <= seconds < 1e9:
        raise ValueError(f"duration out of range: {value!r}")
    return seconds


def _fraction(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number between 0 and 1")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"{what} must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1, got {value!r}")
    return number


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a positive integer")
    try:
        number = int(value) if isinstance(value, (int, str)) else None
    except ValueError:
        number = None
    if number is None or number < 1 or number > 10_000_000:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return number


def _nonneg_float(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number >= 0")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else -1.0
    except ValueError:
        number = -1.0
    if not 0.0 <= number < 1e12:
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    return number


def _str_list(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"{what} must be a comma-separated string or a list")
    if not all(isinstance(i, str) for i in items):
        raise ValueError(f"{what} must hold strings")
    return tuple(i.strip() for i in items if i.strip())


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        pairs = []
        for item in value.split(","):
            if not item.strip():
                continue
            k, sep, v = item.partition("=")
            if not sep or not k.strip():
                raise ValueError("headers must look like 'name=value,name2=value2'")
            pairs.append((k.strip(), v.strip()))
    else:
        raise ValueError("headers must be a mapping or 'name=value,...'")
    for k, v in pairs:
        if any(c in k + v for c in "\r\n\0"):
            raise ValueError("header names and values must not hold line breaks")
    return tuple(pairs)


def _transport(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {value!r}")
    return value.strip().lower()


def _url(value: object, schemes: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in schemes:
        raise ValueError(f"{what} must be a {'/'.join(schemes)} URL, got {value!r}")
    if not urlsplit(value).netloc and urlsplit(value).scheme.startswith("http"):
        raise ValueError(f"{what} has no host: {value!r}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise ValueError(f"{what} must be a non-empty string")
    return value.strip()


def _optional_text(value: object, what: str) -> str | None:
    if value is None or value == "":
        return None
    return _text(value, what)


def _optional_url(value: object, what: str) -> str | None:
    """A URL, or ``None`` for empty / ``"none"`` / ``"off"`` (no central settings)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    return _url(value, ("http", "https"), what)


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{what} must be true or false, got {value!r}")


_PARSERS: dict[str, Callable[[object], Any]] = {
    "service_name": lambda v: _text(v, "service_name"),
    "transport": _transport,
    "endpoint": lambda v: _url(v, ("http", "https"), "endpoint"),
    "headers": _headers,
    "amqp_url": lambda v: _url(v, ("amqp", "amqps", "pyamqp", "memory", "redis"), "amqp_url"),
    "amqp_exchange": lambda v: _text(v, "amqp_exchange"),
    "amqp_routing_key": lambda v: _text(v, "amqp_routing_key"),
    "amqp_queue": lambda v: _text(v, "amqp_queue"),
    "file": lambda v: _text(v, "file"),
    "sample_ratio": lambda v: _fraction(v, "sample_ratio"),
    "overhead_budget": lambda v: _fraction(v, "overhead_budget"),
    "rate_limit": lambda v: _nonneg_float(v, "rate_limit"),
    "slow_threshold": parse_duration,
    "trigger_key": lambda v: _optional_text(v, "trigger_key"),
    "osprofiler_keys": lambda v: _str_list(v, "osprofiler_keys"),
    "redact_keys": lambda v: _str_list(v, "redact_keys"),
    "queue_size": lambda v: _positive_int(v, "queue_size"),
    "batch_size": lambda v: _positive_int(v, "batch_size"),
    "export_delay": parse_duration,
    "export_timeout": parse_duration,
    "config_file": lambda v: _optional_text(v, "config_file"),
    "reload_on_sighup": lambda v: _bool(v, "reload_on_sighup"),
    "sampling_url": lambda v: _optional_url(v, "sampling_url"),
    "sampling_interval": parse_duration,
}

#: Environment variable for each setting.
ENV_VARS: dict[str, str] = {
    "service_name": "CROSSTRACE_SERVICE_NAME",
    "transport": "CROSSTRACE_TRANSPORT",
    "endpoint": "CROSSTRACE_ENDPOINT",
    "headers": "CROSSTRACE_HEADERS",
    "amqp_url": "CROSSTRACE_AMQP_URL",
    "amqp_exchange": "CROSSTRACE_AMQP_EXCHANGE",
    "amqp_routing_key": "CROSSTRACE_AMQP_ROUTING_KEY",
    "amqp_queue": "CROSSTRACE_AMQP_QUEUE",
    "file": "CROSSTRACE_FILE",
    "sample_ratio": "CROSSTRACE_SAMPLE_RATIO",
    "overhead_budget": "CROSSTRACE_OVERHEAD_BUDGET",
    "rate_limit": "CROSSTRACE_RATE_LIMIT",
    "slow_threshold": "CROSSTRACE_SLOW_THRESHOLD",
    "trigger_key": "CROSSTRACE_TRIGGER_KEY",
    "osprofiler_keys": "CROSSTRACE_OSPROFILER_KEYS",
    "redact_keys": "CROSSTRACE_REDACT_KEYS",
    "queue_size": "CROSSTRACE_QUEUE_SIZE",
    "batch_size": "CROSSTRACE_BATCH_SIZE",
    "export_delay": "CROSSTRACE_EXPORT_DELAY",
    "export_timeout": "CROSSTRACE_EXPORT_TIMEOUT",
    "config_file": ENV_CONFIG_FILE,
    "reload_on_sighup": "CROSSTRACE_RELOAD_ON_SIGHUP",
    "sampling_url": "CROSSTRACE_SAMPLING_URL",
    "sampling_interval": "CROSSTRACE_SAMPLING_INTERVAL",
}
# Secrets are never logged back.
_SECRET_SETTINGS = frozenset({"trigger_key", "osprofiler_keys", "headers"})


def _lenient(values: Mapping[str, object], source: str) -> dict[str, Any]:
    """Parse *values*, logging and skipping the bad ones."""
    out: dict[str, Any] = {}
    for name, raw in values.items():
        parser = _PARSERS.get(name)
        if parser is None:
            log.warning("crosstrace: unknown setting %r in %s ignored", name, source)
            continue
        try:
            out[name] = parser(raw)
        except ValueError as exc:
            shown = "<hidden>" if name in _SECRET_SETTINGS else repr(raw)
            log.warning(
                "crosstrace: bad %s %s in %s (%s); using the default", name, shown, source, exc
            )
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    raw = {name: environ[var] for name, var in ENV_VARS.items() if var in environ}
    return _lenient(raw, "the environment")


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        doc = tomllib.loads(data.decode()) if path.endswith(".toml") else json.loads(data)
    except FileNotFoundError:
        log.warning("crosstrace: config file %s not found", path)
        return {}
    except (OSError, ValueError) as exc:  # JSON/TOML/Unicode errors are ValueErrors
        log.warning("crosstrace: cannot read config file %s: %s", path, exc)
        return {}
    if not isinstance(doc, dict):
        log.warning("crosstrace: config file %s must hold an object/table", path)
        return {}
    doc.pop("config_file", None)  # the file cannot move itself
    return _lenient(doc, f"config file {path}")
