"""One ASGI app for ``crosstrace serve``, and the process that runs it.

:func:`create_app` routes ``/v1/*`` to the plain-ASGI ingest handler (the hot
path) and everything else to the FastAPI query API (``/api/v1/...``,
``/healthz``, ``/metrics``, ``/docs``). The web UI will be mounted beside them.

:func:`run` is the process: it opens the store, starts the RabbitMQ consumer and
the retention thread if configured, serves HTTP with uvicorn on a socket it binds
itself (so ``--port 0`` works and the real port is printed), and on SIGTERM or
SIGINT shuts down in order: stop accepting, finish in-flight requests, stop the
consumer (its pending batches committed and acknowledged), then close the store,
which flushes its queue.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from crosstrace.redact import mask_password
from crosstrace.server.auth import TokenSet
from crosstrace.server.auth.access import Access
from crosstrace.server.errors import ServerError
from crosstrace.server.ingest.http import IngestApp, Receive, Scope, Send
from crosstrace.server.ingest.pool import DecodePool
from crosstrace.server.metrics import Metrics
from crosstrace.server.query.api import create_api
from crosstrace.server.sampling import SamplingRegistry
from crosstrace.server.settings import Settings
from crosstrace.server.store import Store, open_store
from crosstrace.server.store.base import RetentionPass
from crosstrace.server.store.retention import RetentionThread
from crosstrace.server.web import mount_web

__all__ = [
    "INGEST_PREFIX",
    "RETENTION_INTERVAL_SECONDS",
    "ServerApp",
    "StartupError",
    "create_app",
    "run",
]

log = logging.getLogger(__name__)

#: Paths under this prefix go to the ingest handler.
INGEST_PREFIX: Final = "/v1/"
#: How often retention runs (the first run is at start).
RETENTION_INTERVAL_SECONDS: Final = 600.0


#: Host names a loopback server answers to by default (DNS rebinding defence).
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def host_allowed(host_header: str | None, allowed: frozenset[str] | None) -> bool:
    """Whether a request's ``Host`` (port ignored) is one the server answers to;
    *allowed* ``None`` means any."""
    if allowed is None:
        return True
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in allowed or host.strip("[]") in allowed


@dataclass
class ServerApp:
    """The ASGI callable, with the parts tests and the runner need to reach."""

    store: Store
    metrics: Metrics
    ingest: IngestApp
    api: Any  # FastAPI
    #: Host names answered; others get 400 (``None``: any).
    allowed_hosts: frozenset[str] | None = None
    hosts_refused: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed_hosts is not None:
            host = None
            for name, value in scope.get("headers") or ():
                if name == b"host":
                    host = bytes(value).decode("latin-1")
                    break
            if not host_allowed(host, self.allowed_hosts):
                self.hosts_refused += 1
                body = b"Host not allowed: add it with --allowed-hosts\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        if scope["type"] == "http" and scope["path"].startswith(INGEST_PREFIX):
            await self.ingest(scope, receive, send)
            return
        await self.api(scope, receive, send)


def create_app(
    store: Store,
    *,
    metrics: Metrics | None = None,
    ingest_tokens: TokenSet | None = None,
    api_tokens: TokenSet | None = None,
    max_body_size: int = 16 * 1024**2,
    max_decompressed_size: int = 64 * 1024**2,
    decode_pool: DecodePool | None = None,
    sampling: SamplingRegistry | None = None,
    access: Access | None = None,
    allowed_hosts: frozenset[str] | None = None,
    max_concurrent_ingest: int = 64,
    max_json_memory: int = 512 * 1024**2,
) -> ServerApp:
    """Build the one ASGI app over *store* (empty token sets and no *access*: auth
    off; without a *decode_pool*, trace bodies are decoded in this process;
    *allowed_hosts* ``None`` answers any Host)."""
    metrics = metrics or Metrics()
    access = access or Access(api_tokens=api_tokens, ingest_tokens=ingest_tokens)
    ingest = IngestApp(
        store,
        metrics,
        max_body_size=max_body_size,
        max_decompressed_size=max_decompressed_size,
        decode_pool=decode_pool,
        access=access,
        max_concurrent=max_concurrent_ingest,
        max_json_memory=max_json_memory,
    )
    api = mount_web(
        create_api(store, metrics, access=access, sampling=sampling), store, access=access
    )
    return ServerApp(
        store=store, metrics=metrics, ingest=ingest, api=api, allowed_hosts=allowed_hosts
    )


def access_from_settings(store: Store, settings: Settings) -> Access:
    """The identities, rules and audit log of a server with these settings."""
    from crosstrace.server.auth.access import DEFAULT_SENSITIVE_ATTRIBUTES
    from crosstrace.server.auth.audit import Auditor
    from crosstrace.server.auth.identities import IdentityFile
    from crosstrace.server.auth.policy import Policy

    keystone = None
    if settings.keystone_url:
        from crosstrace.server.auth.keystone import KeystoneValidator

        keystone = KeystoneValidator(
            settings.keystone_url,
            username=settings.keystone_user,
            password=settings.keystone_password or "",
            project_name=settings.keystone_project,
            user_domain_id=settings.keystone_user_domain,
            project_domain_id=settings.keystone_project_domain,
            system_scope="all" if settings.keystone_system_scope else None,
            cache_ttl_s=settings.keystone_cache_ttl / 1e9,
        )
    auditor = Auditor(store)

    def identities_changed(added: list[str], removed: list[str]) -> None:
        for name in added:
            auditor.record("auth-file", "file", "identity.create", name, "-", 0)
        for name in removed:
            auditor.record("auth-file", "file", "identity.revoke", name, "-", 0)

    identities = None
    if settings.auth_file:
        identities = IdentityFile(settings.auth_file, on_change=identities_changed)
    return Access(
        identities=identities,
        keystone=keystone,
        api_tokens=settings.api_tokenset,
        ingest_tokens=settings.ingest_tokenset,
        policy=Policy(settings.policy_file),
        auditor=auditor,
        sensitive_attributes=DEFAULT_SENSITIVE_ATTRIBUTES | set(settings.sensitive_attributes),
    )


def configure_redaction(settings: Settings) -> None:
    """Make this process (and the decode workers it starts later, which inherit
    the environment) redact with the configured keys and patterns."""
    import os

    from crosstrace.server.redaction import (
        ENV_REDACT_KEYS,
        ENV_REDACT_PATTERNS,
        reset_default_redactor,
    )

    if settings.redact_keys:
        os.environ[ENV_REDACT_KEYS] = ",".join(settings.redact_keys)
    if settings.redact_patterns:
        os.environ[ENV_REDACT_PATTERNS] = "\n".join(settings.redact_patterns)
    reset_default_redactor()


def app_from_settings(
    store: Store, settings: Settings, metrics: Metrics, decode_pool: DecodePool | None = None
) -> ServerApp:
    """:func:`create_app` configured from resolved :class:`Settings`."""
    return create_app(
        store,
        metrics=metrics,
        max_body_size=settings.max_body_size,
        max_decompressed_size=settings.max_decompressed_size,
        decode_pool=decode_pool,
        sampling=SamplingRegistry(sampling_file(settings.db)),
        access=access_from_settings(store, settings),
        allowed_hosts=settings.host_allow_list,
        max_concurrent_ingest=settings.max_concurrent_ingest,
        max_json_memory=settings.max_json_memory,
    )


def sampling_file(db: str) -> Path | None:
    """Where central sampling settings persist: beside a SQLite store's file."""
    if db.startswith("sqlite:///") and ":memory:" not in db:
        return Path(db[len("sqlite:///") :]).with_name("crosstrace-sampling.json")
    return None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on *host*:*port* (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _days(ns: int) -> str:
    """A retention period as the operator would write it: ``7d``, ``36h``, ``90s``."""
    for unit, size in (("d", 86_400 * 10**9), ("h", 3600 * 10**9), ("m", 60 * 10**9)):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / 1e9:g}s"


class StartupError(ServerError, RuntimeError):
    """``serve`` cannot start (address in use, store unreachable): a clear message."""


def run(settings: Settings, echo: Callable[[str], None] = print) -> None:
    """Run ``crosstrace serve`` with *settings* until SIGTERM / SIGINT."""
    stop = threading.Event()
    sock = None
    if not settings.no_http:
        try:
            sock = bind_socket(settings.host, settings.port)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
    try:
        store = open_store(settings.db)
    except Exception as exc:
        if sock is not None:
            sock.close()
        raise StartupError(f"cannot open the store {mask_password(settings.db)}: {exc}") from None
    configure_redaction(settings)
    warning = settings.argv_token_warning()
    if warning:
        echo(warning)
    metrics = Metrics()
    consumer = None
    retention = None
    pool: DecodePool | None = None
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, on_signal)
    try:
        echo(f"store: {mask_password(settings.db)}")
        if settings.retention or settings.max_db_size:

            def on_pass(done: RetentionPass) -> None:
                metrics.retention_pass(done.traces, done.logs)
                if done.traces or done.logs:
                    echo(f"retention: deleted {done.traces} traces, {done.logs} log records")

            if settings.retention:
                echo(
                    f"retention: {_days(settings.retention)}"
                    " (imported log records age from their import)"
                )
            retention = RetentionThread(
                store,
                settings.retention,
                settings.max_db_size,
                RETENTION_INTERVAL_SECONDS,
                on_pass=on_pass,
            )
            retention.start()
        if settings.decode_workers:
            pool = DecodePool(settings.decode_workers)
            echo(f"decoding trace bodies in {settings.decode_workers} worker process(es)")
        if settings.consume:
            from crosstrace.server.ingest.consume import Consumer

            consumer = Consumer(
                settings.consume,
                store,
                metrics,
                exchange=settings.amqp_exchange,
                queue=settings.amqp_queue,
                routing_key=settings.amqp_routing_key,
                prefetch=settings.prefetch,
                decode_pool=pool,
                max_json_memory=settings.max_json_memory,
            )
            consumer.start()
            echo(
                f"consuming queue {settings.amqp_queue!r} on {consumer.safe_url} "
                f"(prefetch {settings.prefetch})"
            )
        if sock is None:
            echo("HTTP disabled (--no-http)")
            stop.wait()
        else:
            _serve_http(sock, settings, store, metrics, echo, pool)
    finally:
        log.info("shutting down")
        if consumer is not None:
            consumer.stop()
            consumer.join(30)
        if retention is not None:
            retention.stop()
        if pool is not None:
            pool.close()
        store.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        echo("stopped")


def _serve_http(
    sock: socket.socket,
    settings: Settings,
    store: Store,
    metrics: Metrics,
    echo: Callable[[str], None],
    decode_pool: DecodePool | None,
) -> None:
    import uvicorn

    app = app_from_settings(store, settings, metrics, decode_pool)
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
        server_header=False,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls_cert else "http"
    echo(f"listening on {scheme}://{shown}:{port} (OTLP/HTTP /v1/traces /v1/logs, API /api/v1)")
    echo(f"auth: {settings.describe_auth()}")
    # uvicorn installs its own SIGTERM/SIGINT handlers while serving and, once shut
    # down gracefully, re-raises the signal to the handler installed before it:
    # ours (see run), which only records that we are stopping.
    asyncio.run(server.serve(sockets=[sock]))
