"""``crosstrace.configure()``: tracing settings from code, environment and a file.

Settings come from four layers, later ones winning:

1. defaults;
2. environment variables, read when :func:`configure` runs (table below);
3. the keyword arguments of :func:`configure` (a later call changes only the
   settings it names and keeps the others);
4. the operator's run-time file ``CROSSTRACE_CONFIG_FILE`` (JSON, or TOML when
   the name ends in ``.toml``), whose keys are the keyword argument names.
   It is watched (checked every 2 s) and re-read without a restart; with
   ``reload_on_sighup=True`` a ``SIGHUP`` re-reads it too.

Sampling ratio, overhead budget, rate limit, slow threshold and keys change in
place and apply to the next trace; changing the service name, transport or
queue settings builds a new exporter (the old one is flushed in the background).

Bad values from the environment or the file are logged and replaced by the
value the lower layers give (never raising at import or at reload); bad
keyword arguments raise :class:`ValueError`.

=============================  =====================================  ==========================
variable                       meaning                                default
=============================  =====================================  ==========================
CROSSTRACE_SERVICE_NAME        ``service.name`` of this process       the program name
CROSSTRACE_TRANSPORT           ``otlp``, ``amqp``, ``file``, ``none``   ``otlp``
CROSSTRACE_ENDPOINT            OTLP/HTTP base URL                     ``http://127.0.0.1:4318``
CROSSTRACE_HEADERS             extra HTTP headers ``k=v,k2=v2``       none
CROSSTRACE_AMQP_URL            broker URL for ``amqp``                ``amqp://guest:guest@127.0.0.1:5672//``
CROSSTRACE_AMQP_EXCHANGE       exchange / routing key / queue         ``crosstrace`` / ``otlp`` /
CROSSTRACE_AMQP_ROUTING_KEY                                           ``crosstrace.otlp``
CROSSTRACE_AMQP_QUEUE
CROSSTRACE_FILE                path for ``file`` (JSON lines)         ``crosstrace-otlp.jsonl``
CROSSTRACE_SAMPLE_RATIO        head-sampling ratio 0..1               ``1.0``
CROSSTRACE_OVERHEAD_BUDGET     CPU fraction for tracing (``0.01`` or   ``0.01``
                               ``1%``; ``0`` = no control)
CROSSTRACE_RATE_LIMIT          sampled traces per second (0 = none)   ``0``
CROSSTRACE_SLOW_THRESHOLD      keep traces slower than (``2s``,        ``2s``
                               ``250ms``; ``0`` = off)
CROSSTRACE_TRIGGER_KEY         key for ``X-Crosstrace-Trigger``       none
CROSSTRACE_OSPROFILER_KEYS     OSProfiler HMAC keys, comma-separated  none
CROSSTRACE_REDACT_KEYS         more secret attribute names            none
CROSSTRACE_QUEUE_SIZE          export queue bound (spans)             ``2048``
CROSSTRACE_BATCH_SIZE          spans per export batch                 ``512``
CROSSTRACE_EXPORT_DELAY        longest wait before a batch is sent    ``1s``
CROSSTRACE_EXPORT_TIMEOUT      per-request read timeout               ``10s``
CROSSTRACE_CONFIG_FILE         watched run-time settings file         none
CROSSTRACE_RELOAD_ON_SIGHUP    ``1`` to re-read the file on SIGHUP    ``0``
=============================  =====================================  ==========================
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from crosstrace import export
from crosstrace import tracer as _tracer_mod
from crosstrace.export import (
    AmqpTransport,
    BatchExporter,
    FileTransport,
    OtlpHttpTransport,
    Transport,
)
from crosstrace.tracer import Tracer

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "configure",
    "current_settings",
    "force_flush",
    "reload",
    "shutdown",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "CROSSTRACE_"
ENV_CONFIG_FILE = "CROSSTRACE_CONFIG_FILE"
#: How often the watched file's modification time is checked, seconds.
FILE_POLL_S = 2.0
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
    amqp_exchange: str = export.DEFAULT_AMQP_EXCHANGE
    amqp_routing_key: str = export.DEFAULT_AMQP_ROUTING_KEY
    amqp_queue: str = export.DEFAULT_AMQP_QUEUE
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


class _State:
    """Process-wide configuration state (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # configure/reload only, never the hot path
        self.explicit: dict[str, Any] = {}
        self.settings: Settings | None = None
        self.tracer: Tracer | None = None
        # The tracer shutdown() retired: its service tracers join the next one.
        self.retired: Tracer | None = None
        self.exporter: BatchExporter | None = None
        self.file_mtime: float | None = None
        self.watcher: threading.Thread | None = None
        self.watch_stop = threading.Event()
        self.sighup = False
        self.sighup_installed = False


_state = _State()


def configure(**kwargs: Any) -> Tracer:
    """Configure tracing for this process and return the tracer.

    Keyword arguments are the :class:`Settings` fields (``service_name``,
    ``transport`` -- also a :class:`~crosstrace.export.Transport` instance --,
    ``endpoint``, ``sample_ratio``, ``overhead_budget``, ``rate_limit``,
    ``slow_threshold``, ``osprofiler_keys``, ``trigger_key``, ``redact_keys``,
    ``queue_size``, ``batch_size``, ...). Raises :class:`ValueError` for an
    unknown name or a bad value. Call again to change settings at run time.
    """
    custom: Transport | None = None
    parsed: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name == "transport" and isinstance(value, Transport):
            custom = value
            continue
        parser = _PARSERS.get(name)
        if parser is None:
            raise ValueError(f"unknown setting {name!r}")
        parsed[name] = parser(value)
    with _state.lock:
        _state.explicit.update(parsed)
        if custom is not None:
            _state.explicit["_custom_transport"] = custom
        elif "transport" in parsed:
            _state.explicit.pop("_custom_transport", None)
        return _apply(_resolve())


def _resolve() -> Settings:
    values = _from_env(os.environ)
    values.update({k: v for k, v in _state.explicit.items() if not k.startswith("_")})
    path = values.get("config_file")
    if path:
        try:
            _state.file_mtime = os.stat(path).st_mtime
        except OSError:
            _state.file_mtime = None
        values.update(_read_file(path))
    return Settings(**values)


def _make_transport(s: Settings) -> Transport | None:
    custom = _state.explicit.get("_custom_transport")
    if isinstance(custom, Transport):
        return custom
    if s.transport == "none":
        return None
    if s.transport == "otlp":
        return OtlpHttpTransport(s.endpoint, dict(s.headers), timeout_s=s.export_timeout)
    if s.transport == "amqp":
        return AmqpTransport(
            s.amqp_url, s.amqp_exchange, s.amqp_routing_key, s.amqp_queue, s.export_timeout
        )
    return FileTransport(s.file)


def _runtime_kwargs(s: Settings) -> dict[str, Any]:
    return {
        "sample_ratio": s.sample_ratio,
        "rate_limit": s.rate_limit,
        "overhead_budget": s.overhead_budget,
        "slow_threshold_s": s.slow_threshold,
        "trigger_keys": (s.trigger_key,) if s.trigger_key else (),
        "osprofiler_keys": s.osprofiler_keys,
        "redact_keys": s.redact_keys,
    }


def _apply(s: Settings) -> Tracer:
    old = _state.settings
    tracer = _state.tracer
    custom_changed = _state.explicit.get("_custom_transport") is not getattr(
        _state.exporter, "transport", None
    )
    if (
        tracer is None
        or old is None
        or any(getattr(old, n) != getattr(s, n) for n in _REBUILD)
        or (custom_changed and "_custom_transport" in _state.explicit)
    ):
        transport = _make_transport(s)
        exporter = None
        new = Tracer(s.service_name, **_runtime_kwargs(s))
        if transport is not None:
            exporter = BatchExporter(
                transport,
                new.resource,
                queue_size=s.queue_size,
                batch_size=s.batch_size,
                max_delay_s=s.export_delay,
            )
            new.sink = exporter
        previous = _state.exporter
        _state.exporter = exporter
        before = tracer if tracer is not None else _state.retired
        if before is not None:
            before._hand_over(new)  # get_tracer(name) objects follow the new settings
            _state.retired = None
        _state.tracer = tracer = new
        export.set_active(exporter)
        _tracer_mod._set_tracer(new)
        if previous is not None:
            threading.Thread(
                target=previous.shutdown, args=(5.0,), name="crosstrace-old-exporter", daemon=True
            ).start()
    else:
        tracer.update(**_runtime_kwargs(s))
    _state.settings = s
    _watch(s)
    return tracer


def current_settings() -> Settings | None:
    """The settings in force, or ``None`` before :func:`configure`."""
    return _state.settings


def reload() -> bool:
    """Re-read the environment and the config file; ``True`` if settings changed."""
    with _state.lock:
        if _state.settings is None:
            return False
        before = _state.settings
        s = _resolve()
        if s == before:
            return False
        log.info("crosstrace: settings reloaded")
        _apply(s)
        return True


def force_flush(timeout_s: float = 5.0) -> bool:
    """Export everything the configured exporter holds; ``True`` if done in time
    (also when nothing is configured)."""
    exporter = _state.exporter
    return exporter.force_flush(timeout_s) if exporter is not None else True


def shutdown(timeout_s: float = 5.0) -> None:
    """Stop tracing: flush and stop the exporter, back to the no-op state."""
    with _state.lock:
        _tracer_mod._set_tracer(None)
        exporter, _state.exporter = _state.exporter, None
        export.set_active(None)
        if _state.tracer is not None:
            _state.retired = _state.tracer
        _state.tracer = None
        _state.settings = None
        _state.explicit = {}
        _state.watch_stop.set()
        _state.watcher = None
    if exporter is not None:
        exporter.shutdown(timeout_s)


# -- file watching and SIGHUP ------------------------------------------------------


def _watch(s: Settings) -> None:
    if s.reload_on_sighup and not _state.sighup_installed:
        _install_sighup()
    wanted = bool(s.config_file) or _state.sighup_installed
    alive = _state.watcher is not None and _state.watcher.is_alive()
    if wanted and not alive:
        _state.watch_stop = threading.Event()
        _state.watcher = threading.Thread(
            target=_watch_loop, args=(_state.watch_stop,), name="crosstrace-config", daemon=True
        )
        _state.watcher.start()


def _watch_loop(stop: threading.Event) -> None:
    waited = 0.0
    step = 0.25
    while not stop.wait(step):
        waited += step
        try:
            if _state.sighup:
                _state.sighup = False
                reload()
                continue
            if waited < FILE_POLL_S:
                continue
            waited = 0.0
            s = _state.settings
            if s is None or not s.config_file:
                continue
            try:
                mtime: float | None = os.stat(s.config_file).st_mtime
            except OSError:
                mtime = None
            if mtime != _state.file_mtime:
                reload()
        except Exception:
            log.warning("crosstrace: settings reload failed", exc_info=True)


def _install_sighup() -> None:
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        log.warning("crosstrace: SIGHUP reload needs configure() in the main thread")
        return
    previous = signal.getsignal(signal.SIGHUP)

    def on_sighup(signum: int, frame: Any) -> None:
        # Only a flag here: the watcher thread does the reading, so a handler
        # that interrupts code holding a lock cannot deadlock on it.
        _state.sighup = True
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGHUP, on_sighup)
    _state.sighup_installed = True


def _after_fork_in_child() -> None:
    _state.watcher = None
    _state.lock = threading.RLock()
    if _state.settings is not None:
        _watch(_state.settings)


os.register_at_fork(after_in_child=_after_fork_in_child)
