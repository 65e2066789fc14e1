"""How each demo service is instrumented, through crosstrace's public API only.

This is the part an operator would write when adding crosstrace to a service:
wrap the WSGI/ASGI app in the request-id middleware, use the propagating HTTP
clients and the kombu integration, log through :mod:`crosstrace.logging`, and
open a few spans around interesting steps. One :class:`ServiceKit` per service
keeps those choices in one place, so each service in the demo's single process
logs to its own file and reports its own ``service.name``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import crosstrace
import crosstrace.logging as ctlog
from crosstrace import asgi as ct_asgi
from crosstrace import wsgi as ct_wsgi
from crosstrace.integrations import kombu as ct_kombu

__all__ = ["LogRouter", "ServiceKit", "Tracing", "current_service", "file_handler"]

#: Which demo service the current thread or task is working for (log routing).
_service_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "crosstrace_demo_service", default=None
)

#: Compat response headers each HTTP service adds beside ``x-openstack-request-id``.
COMPAT_HEADERS = {"compute-api": ("x-compute-request-id",)}


def current_service() -> str | None:
    """The demo service the caller is running in, if any."""
    return _service_var.get()


class LogRouter(logging.Handler):
    """Sends library records (crosstrace's, SQLAlchemy's) to the file of the
    service that was running when they were logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.handlers: dict[str, logging.Handler] = {}
        #: Where records logged outside any service go (the demo's own log).
        self.fallback: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        service = _service_var.get()
        handler = self.handlers.get(service) if service else None
        if handler is None:
            handler = self.fallback
        if handler is not None and record.levelno >= handler.level:
            handler.handle(record)


def file_handler(path: Path) -> logging.Handler:
    """A log file in oslo.log's format, with the request context on every line."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(ctlog.ContextFilter())
    handler.setFormatter(ctlog.ContextFormatter())
    return handler


class ServiceKit:
    """The instrumentation of one demo service: logger, middleware, clients, spans."""

    def __init__(
        self,
        name: str,
        logger_name: str,
        log_dir: Path,
        router: LogRouter,
        level: int = logging.INFO,
    ) -> None:
        self.name = name
        self.log = logging.getLogger(logger_name)
        self.log.setLevel(level)
        self.log_path = log_dir / f"{name}.log"
        handler = file_handler(self.log_path)
        self._handler = handler
        self._logger_handlers: list[tuple[logging.Logger, logging.Handler]] = [(self.log, handler)]
        self.log.addHandler(handler)
        router.handlers[name] = handler
        self._router = router

    def close(self) -> None:
        """Detach and close this service's log handlers."""
        for logger, handler in self._logger_handlers:
            logger.removeHandler(handler)
            handler.close()
        self._router.handlers.pop(self.name, None)

    # -- entry points -------------------------------------------------------

    def wsgi(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a WSGI app: request ids, context, log routing."""
        inner = ct_wsgi.RequestIdMiddleware(app, compat_headers=COMPAT_HEADERS.get(self.name, ()))
        name = self.name

        def service_app(environ: dict[str, Any], start_response: Any) -> Any:
            token = _service_var.set(name)
            try:
                # The demo apps return lists, so the body is complete here.
                return list(inner(environ, start_response))
            finally:
                _service_var.reset(token)

        return service_app

    def asgi(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap an ASGI app: request ids, context, log routing."""
        inner = ct_asgi.RequestIdMiddleware(app, compat_headers=COMPAT_HEADERS.get(self.name, ()))
        name = self.name

        async def service_app(scope: Any, receive: Any, send: Any) -> None:
            token = _service_var.set(name)
            try:
                await inner(scope, receive, send)
            finally:
                _service_var.reset(token)

        return service_app

    def rpc_callback(self, fn: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        """Wrap an RPC handler: the caller's context from the message headers."""
        wrapped = ct_kombu.consumer_callback(fn)
        name = self.name

        def run(body: Any, message: Any) -> None:
            token = _service_var.set(name)
            try:
                wrapped(body, message)
            finally:
                _service_var.reset(token)

        return run

    def rpc_publish(self, producer: Any, body: Any, **kwargs: Any) -> None:
        """Publish an RPC message carrying the current context."""
        ct_kombu.publish(producer, body, **kwargs)

    # -- clients ------------------------------------------------------------

    def requests_session(self) -> Any:
        """A ``requests`` session that sends the global request id."""
        from crosstrace.integrations.requests import Session

        return Session()

    def httpx_client(self, timeout: float) -> Any:
        """An ``httpx`` client that sends the global request id."""
        from crosstrace.integrations.httpx import Client

        return Client(timeout=timeout)

    def instrument_engine(self, engine: Any) -> None:
        """Add DB spans to a SQLAlchemy engine (when the tracer offers them)."""

    # -- spans and ids ------------------------------------------------------

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None, client: bool = False
    ) -> Iterator[Any]:
        """A span around one step of this service's work (``client``: a call out)."""
        yield None

    def trace_id(self) -> str | None:
        """The current trace id (hex), if a span is current."""
        return None

    def context(self) -> crosstrace.RequestContext | None:
        return crosstrace.get_current()


class Tracing:
    """Tracing for the whole demo process: exporters to the backend, one
    :class:`ServiceKit` per service, flush and shutdown."""

    def __init__(self, endpoint: str, slow_threshold_s: float = 1.0) -> None:
        self.endpoint = endpoint
        self.slow_threshold_s = slow_threshold_s

    def kit(self, name: str, logger_name: str, log_dir: Path, router: LogRouter) -> ServiceKit:
        """The instrumentation of the service called ``name``."""
        return ServiceKit(name, logger_name, log_dir, router)

    def flush(self, timeout: float = 10.0) -> bool:
        """Export everything queued so far; ``False`` if it did not finish in time."""
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Flush and stop the exporters."""
