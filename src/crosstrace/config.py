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
CROSSTRACE_SAMPLING_URL        ``crosstrace serve`` to read central     the endpoint (``otlp``);
                               settings from (``off``: none)          else none
CROSSTRACE_SAMPLING_INTERVAL   how often they are read                ``30s``
=============================  =====================================  ==========================
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from crosstrace import export
from crosstrace.central import CENTRAL_KEYS, SamplingPoller
from crosstrace.export import (
    AmqpTransport,
    BatchExporter,
    FileTransport,
    OtlpHttpTransport,
    Transport,
)
from crosstrace.settings import (
    _PARSERS,
    _REBUILD,
    ENV_CONFIG_FILE,
    ENV_VARS,
    Settings,
    _from_env,
    _read_file,
    parse_duration,
)
from crosstrace.tracing import Tracer
from crosstrace.tracing import tracer as _tracer_mod

__all__ = [
    "ENV_CONFIG_FILE",
    "ENV_PREFIX",
    "ENV_VARS",
    "Settings",
    "configure",
    "current_settings",
    "force_flush",
    "parse_duration",
    "reload",
    "shutdown",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "CROSSTRACE_"
#: How often the watched file's modification time is checked, seconds.
FILE_POLL_S = 2.0


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
        # The central settings poller (crosstrace.central) and what it applied.
        self.poller: SamplingPoller | None = None


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
    kwargs = {
        "sample_ratio": s.sample_ratio,
        "rate_limit": s.rate_limit,
        "overhead_budget": s.overhead_budget,
        "slow_threshold_s": s.slow_threshold,
        "trigger_keys": (s.trigger_key,) if s.trigger_key else (),
        "osprofiler_keys": s.osprofiler_keys,
        "redact_keys": s.redact_keys,
    }
    # Central settings (crosstrace serve) win over defaults, not over local values.
    poller = _state.poller
    if poller is not None:
        for central, (keyword, _) in CENTRAL_KEYS.items():
            if central in poller.settings:
                kwargs[keyword] = poller.settings[central]
    return kwargs


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
    _poll_central(s, tracer)
    return tracer


def _explicit_local() -> frozenset[str]:
    """Settings this process sets itself (keywords, environment, config file)."""
    names = {k for k in _state.explicit if not k.startswith("_")}
    names |= set(_from_env(os.environ))
    s = _state.settings
    if s is not None and s.config_file:
        names |= set(_read_file(s.config_file))
    return frozenset(names)


def _poll_central(s: Settings, tracer: Tracer) -> None:
    """Start (or restart) polling central settings for *tracer*."""
    url = s.sampling_url
    if url is None and s.transport == "otlp" and "sampling_url" not in _explicit_local():
        url = s.endpoint
    old = _state.poller
    if old is not None and (
        url != old.url or old.tracer is not tracer or s.sampling_interval != old.interval_s
    ):
        old.stop(0.0)
        _state.poller = old = None
    if old is not None:
        old.explicit = _explicit_local()
        return
    if url is None:
        return
    exporter = _state.exporter

    def dropped() -> int:
        return exporter.spans_dropped if exporter is not None else 0

    try:
        poller = SamplingPoller(
            url,
            tracer,
            s.sampling_interval,
            headers=dict(s.headers),
            explicit=_explicit_local(),
            dropped=dropped,
        )
    except ValueError as exc:
        log.warning("crosstrace: central sampling settings off: %s", exc)
        return
    _state.poller = poller.start()


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
        poller, _state.poller = _state.poller, None
    if poller is not None:
        poller.stop(0.0)
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
