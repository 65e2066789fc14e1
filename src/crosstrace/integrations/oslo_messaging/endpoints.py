"""Server side: endpoint methods run in SERVER/CONSUMER spans that end when they return."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from crosstrace.context import RequestContext, get_current, set_current
from crosstrace.integrations.oslo_messaging.serializer import (
    ATTR_DESTINATION,
    ATTR_OPERATION_NAME,
    ATTR_OPERATION_TYPE,
    ATTR_RPC_METHOD,
    ATTR_RPC_SERVICE,
    ATTR_RPC_SYSTEM,
    RPC_SYSTEM,
    _received,
)
from crosstrace.propagation import extract_context
from crosstrace.tracing import SpanKind
from crosstrace.tracing import tracer as _tracer_mod
from crosstrace.tracing.serve import Served, serve
from crosstrace.tracing.spans import _current
from crosstrace.tracing.tracer import Tracer

__all__ = ["traced_endpoints"]


def _run_traced(
    fn: Callable[..., Any],
    method: str,
    topic: str | None,
    notification: bool,
    tracer: Tracer | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    received = _received.get()
    _received.set(None)
    if received is None:  # not through TracingSerializer: a context of its own
        _current.set(None)
        set_current(RequestContext())
        received = ({}, None)
    carrier, op = received
    t = tracer or _tracer_mod._tracer
    try:
        if t is None:
            return fn(*args, **kwargs)
        context = get_current() or RequestContext()
        try:
            kind = (
                SpanKind.CONSUMER if notification or op in ("cast", "notify") else SpanKind.SERVER
            )
            destination = topic or ""
            attrs: dict[str, Any] = {
                ATTR_RPC_SYSTEM: RPC_SYSTEM,
                ATTR_RPC_METHOD: method,
                ATTR_DESTINATION: destination,
                ATTR_OPERATION_TYPE: "process",
                ATTR_OPERATION_NAME: "process",
            }
            if topic:
                attrs[ATTR_RPC_SERVICE] = topic
            name = f"process {destination}.{method}" if destination else f"process {method}"
            remote = extract_context(carrier, t)
            # Under the overhead budget like any entry point: a message may
            # run untraced, its failure or slow run exported after the fact.
            served = serve(context, t, name, kind, attrs, remote)
        except Exception:  # tracing must never break the endpoint
            served = Served(context)
        with served:
            return fn(*args, **kwargs)
    finally:
        # Nothing of this message stays in the (reused) worker thread.
        _current.set(None)
        set_current(None)


class _TracedEndpoint:
    """An endpoint whose public methods run under :func:`_run_traced`."""

    def __init__(
        self, endpoint: Any, topic: str | None, notification: bool, tracer: Tracer | None
    ) -> None:
        self._endpoint = endpoint
        self._topic = topic
        self._notification = notification
        self._tracer = tracer
        self._methods: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._endpoint, name)
        if name.startswith("_") or not callable(attr) or name == "filter_rule":
            return attr
        found = self._methods.get(name)
        if found is not None:
            return found

        @functools.wraps(attr)
        def traced(*args: Any, **kwargs: Any) -> Any:
            return _run_traced(
                attr, name, self._topic, self._notification, self._tracer, args, kwargs
            )

        self._methods[name] = traced
        return traced

    def __repr__(self) -> str:
        return f"traced({self._endpoint!r})"


def traced_endpoints(
    endpoints: Sequence[Any],
    topic: str | None = None,
    tracer: Tracer | None = None,
    notification: bool = False,
) -> list[Any]:
    """*endpoints* whose methods each run in a SERVER/CONSUMER span that ends
    when the method returns (idempotent).

    :param topic: the server's topic, for span names and ``rpc.service``.
    :param tracer: the service's tracer (default: the configured one).
    :param notification: notification endpoints (CONSUMER spans).
    """
    return [
        e if isinstance(e, _TracedEndpoint) else _TracedEndpoint(e, topic, notification, tracer)
        for e in endpoints
    ]
