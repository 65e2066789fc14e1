"""The demo cloud's RPC on oslo.messaging: ``call`` with a timeout, ``cast``.

Servers consume a topic and dispatch ``method(**args)`` to an endpoint object,
exactly as OpenStack services do, through oslo.messaging's RPC server (threading
executor) and client. crosstrace comes in the way an operator adds it to a
service: the serializer is wrapped (:func:`crosstrace.integrations.oslo_messaging.wrap`)
and the server's endpoints are traced (SERVER spans continuing the caller's trace).

Broker URLs: ``memory://`` (the default: oslo.messaging's in-process ``fake://``
driver, nothing to install; every server and client of the process share one
transport) or ``amqp://user:pass@host:port/vhost`` (RabbitMQ through oslo.messaging's
``rabbit://`` driver).

A call that gets no reply in time raises oslo.messaging's own
:class:`MessagingTimeout`; an endpoint that raised comes back as
:class:`RemoteError` with the exception's type name and message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import oslo_messaging
import oslo_messaging.opts
from oslo_config import cfg
from oslo_messaging._metrics import client as _metrics_opts
from oslo_messaging._tracing import client as _tracing_opts

from crosstrace.integrations import oslo_messaging as ct_messaging
from crosstrace.integrations.oslo_context import to_oslo_dict
from crosstrace.tracer import Tracer

__all__ = [
    "MessagingTimeout",
    "RemoteError",
    "RpcClient",
    "RpcServer",
    "transport_url",
]

log = logging.getLogger(__name__)

#: oslo.messaging's timeout exception, raised by :meth:`RpcClient.call`.
MessagingTimeout = oslo_messaging.MessagingTimeout

#: Wraps each endpoint call (e.g. to route the service's log lines).
CallScope = Callable[[], contextlib.AbstractContextManager[Any]]


class RemoteError(Exception):
    """The remote endpoint raised; carries its exception type and message."""

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message


def transport_url(broker_url: str) -> str:
    """oslo.messaging's transport URL for a demo broker URL."""
    if broker_url.startswith(("memory://", "fake:")):
        return "fake:/"
    parts = urlsplit(broker_url)
    if parts.scheme not in ("amqp", "pyamqp", "rabbit"):
        raise ValueError(f"unsupported RPC broker URL scheme {parts.scheme!r}")
    vhost = parts.path[1:] if parts.path not in ("", "/", "//") else ""
    auth = f"{parts.username}:{parts.password}@" if parts.username else ""
    return f"rabbit://{auth}{parts.hostname}:{parts.port or 5672}/{vhost}"


class _Transports:
    """One oslo.messaging transport per URL in this process, shared and counted
    (the fake driver's queues live in its transport)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_url: dict[str, tuple[Any, int]] = {}

    def acquire(self, url: str, workers: int) -> Any:
        with self._lock:
            transport, users = self._by_url.get(url, (None, 0))
            if transport is None:
                transport = oslo_messaging.get_rpc_transport(_conf(workers), url=url)
            self._by_url[url] = (transport, users + 1)
            return transport

    def release(self, url: str) -> None:
        with self._lock:
            transport, users = self._by_url.get(url, (None, 0))
            if transport is None:
                return
            if users > 1:
                self._by_url[url] = (transport, users - 1)
                return
            del self._by_url[url]
        transport.cleanup()


_transports = _Transports()


def _conf(workers: int) -> cfg.ConfigOpts:
    """A private oslo.config with oslo.messaging's options (the demo is no service
    with a config file; some groups are registered on the global CONF only)."""
    conf = cfg.ConfigOpts()
    for group, opts in oslo_messaging.opts.list_opts():
        conf.register_opts(opts, group=group)
    conf.register_opts(_metrics_opts.oslo_messaging_metrics, group="oslo_messaging_metrics")
    conf.register_opts(_tracing_opts.oslo_messaging_tracing, group="oslo_messaging_tracing")
    conf([], project="crosstrace-demo")
    conf.set_override("executor_thread_pool_size", workers)
    # A broker that is down fails fast instead of retrying for minutes.
    conf.set_override("rabbit_retry_interval", 1, group="oslo_messaging_rabbit")
    # Each demo run has its own topics: their queues go when the run does.
    conf.set_override("amqp_auto_delete", True, group="oslo_messaging_rabbit")
    return conf


class _Endpoint:
    """The demo endpoint as oslo.messaging sees it: only *methods*, each called
    ``method(ctxt, **args)``; :data:`RpcServer.NO_REPLY` holds the call."""

    def __init__(
        self,
        endpoint: object,
        methods: Iterable[str] | None,
        scope: CallScope | None,
        stop: threading.Event,
        hold_s: float,
    ) -> None:
        names = (
            set(methods)
            if methods is not None
            else {n for n in dir(endpoint) if not n.startswith("_")}
        )
        for name in names:
            fn = getattr(endpoint, name, None)
            if callable(fn):
                setattr(self, name, self._method(fn, scope, stop, hold_s))

    @staticmethod
    def _method(
        fn: Callable[..., Any], scope: CallScope | None, stop: threading.Event, hold_s: float
    ) -> Callable[..., Any]:
        def call(ctxt: Any, **kwargs: Any) -> Any:
            with scope() if scope is not None else contextlib.nullcontext():
                result = fn(**kwargs)
            if result is RpcServer.NO_REPLY:
                # A stuck worker: the caller times out; what comes afterwards
                # (a late, empty reply) finds nobody waiting.
                stop.wait(hold_s)
                return None
            return result

        call.__name__ = getattr(fn, "__name__", "call")
        return call


class RpcServer:
    """An oslo.messaging RPC server on ``topic`` dispatching to ``endpoint``.

    Only the names in ``methods`` (when given) can be called. A method that
    returns :data:`NO_REPLY` models a stuck worker: the call is held (until the
    server stops, or ``no_reply_hold_s``), so the caller gets a
    :class:`MessagingTimeout`. With ``tracer``, each call runs in a SERVER span
    named ``process <service>.<method>`` continuing the caller's trace.
    """

    NO_REPLY: Any = object()

    def __init__(
        self,
        url: str,
        exchange: str,
        topic: str,
        endpoint: object,
        *,
        methods: Iterable[str] | None = None,
        max_workers: int = 8,
        tracer: Tracer | None = None,
        service: str | None = None,
        scope: CallScope | None = None,
        no_reply_hold_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        self.url = transport_url(url)
        self.topic = topic
        self._stopped = threading.Event()
        self._transport = _transports.acquire(self.url, max_workers)
        target = oslo_messaging.Target(exchange=exchange, topic=topic, server=name or topic)
        adapter = _Endpoint(endpoint, methods, scope, self._stopped, no_reply_hold_s)
        endpoints = ct_messaging.traced_endpoints([adapter], service or topic, tracer)
        self._server = oslo_messaging.get_rpc_server(
            self._transport,
            target,
            endpoints,
            serializer=ct_messaging.wrap(oslo_messaging.JsonPayloadSerializer()),
        )
        self._started = False

    def start(self, timeout: float = 10.0) -> None:
        """Start consuming."""
        self._server.start()
        self._started = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop consuming, release held calls, and wait for running ones."""
        self._stopped.set()
        if self._started:
            self._server.stop()
            self._server.wait()
            self._started = False
        _transports.release(self.url)


class RpcClient:
    """Calls and casts to RPC servers (thread-safe, like oslo.messaging's client).

    The context sent is the current request's, in oslo.context's dict form, as
    an OpenStack service sends its ``RequestContext``.
    """

    def __init__(self, url: str, exchange: str, *, name: str = "rpc-client") -> None:
        self.url = transport_url(url)
        self.name = name
        self._transport = _transports.acquire(self.url, 8)
        self._client = oslo_messaging.get_rpc_client(
            self._transport,
            oslo_messaging.Target(exchange=exchange, topic="unused"),
            serializer=ct_messaging.wrap(oslo_messaging.JsonPayloadSerializer()),
        )

    def start(self, timeout: float = 10.0) -> None:
        """Nothing to start: oslo.messaging connects on first use."""

    def stop(self, timeout: float = 5.0) -> None:
        """Release this client's transport."""
        _transports.release(self.url)

    def cast(self, topic: str, method: str, **args: Any) -> None:
        """Send ``method(**args)`` to ``topic`` without waiting for an answer."""
        self._client.prepare(topic=topic).cast(to_oslo_dict(), method, **args)

    def call(self, topic: str, method: str, timeout: float, **args: Any) -> Any:
        """Send ``method(**args)`` to ``topic`` and return its result.

        Raises :class:`MessagingTimeout` when no reply comes within ``timeout``
        seconds and :class:`RemoteError` when the endpoint raised.
        """
        with _remote_errors(method):
            try:
                cctxt = self._client.prepare(topic=topic, timeout=timeout)
                return cctxt.call(to_oslo_dict(), method, **args)
            except oslo_messaging.MessagingTimeout as exc:
                raise MessagingTimeout(
                    f"Timed out waiting for a reply to {method} after {timeout:g}s"
                ) from exc


# Raised on the caller's side, not by the endpoint: never a RemoteError.
_LOCAL_ERRORS = (
    oslo_messaging.MessagingTimeout,
    oslo_messaging.ClientSendError,
    oslo_messaging.MessageDeliveryFailure,
    oslo_messaging.InvalidTarget,
    ct_messaging.ContextValueError,
)


@contextlib.contextmanager
def _remote_errors(method: str) -> Iterator[None]:
    """The endpoint's exception as :class:`RemoteError` (oslo.messaging re-raises
    builtin and oslo exceptions as themselves, others as its ``RemoteError``)."""
    try:
        yield
    except _LOCAL_ERRORS:
        raise
    except oslo_messaging.RemoteError as exc:
        raise RemoteError(str(exc.exc_type), _first_line(exc.value)) from None
    except Exception as exc:
        exc_type = type(exc).__name__.removesuffix("_Remote")
        if exc_type == "NoSuchMethod":
            raise RemoteError(exc_type, f"unknown RPC method {method!r}") from None
        raise RemoteError(exc_type, _first_line(exc)) from None


def _first_line(value: Any) -> str:
    """The message without the remote traceback oslo.messaging may append."""
    text = str(value).split("\n", 1)[0]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # a KeyError's repr-quoted message
    return text
