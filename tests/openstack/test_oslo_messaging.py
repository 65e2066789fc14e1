"""oslo.messaging integration over the fake driver and a real RabbitMQ: call, cast,
fanout and notifications carry the global id and one trace, through nova's
serializer shape; worker threads start clean; bad context values fail clearly."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import oslo_messaging
import oslo_messaging.opts
import pytest
from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_messaging._metrics import client as metrics_opts
from oslo_messaging._tracing import client as tracing_opts

from crosstrace.context import RequestContext, get_current, use_context
from crosstrace.integrations import oslo_messaging as ct_messaging
from crosstrace.integrations.oslo_context import to_oslo
from crosstrace.spans import ATTR_GLOBAL_REQUEST_ID, SpanKind
from crosstrace.tracer import Tracer
from crosstrace.tracing.spans import _get_current_span
from tracing_support import Sink, sink_tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
LID = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"

pytestmark = pytest.mark.usefixtures("no_tracer")


# -- nova's serializer shape (nova/rpc.py), inside crosstrace's ------------------------


class RequestContextSerializer(oslo_messaging.Serializer):
    def __init__(self, base: Any) -> None:
        self._base = base

    def serialize_entity(self, context: Any, entity: Any) -> Any:
        return self._base.serialize_entity(context, entity) if self._base else entity

    def deserialize_entity(self, context: Any, entity: Any) -> Any:
        return self._base.deserialize_entity(context, entity) if self._base else entity

    def serialize_context(self, context: Any) -> dict[str, Any]:
        return dict(context.to_dict())

    def deserialize_context(self, context: dict[str, Any]) -> Any:
        unknown = set(context) - KNOWN_CONTEXT_KEYS
        if unknown:  # a strict from_dict: crosstrace's keys must be gone
            raise AssertionError(f"base serializer got foreign keys {sorted(unknown)}")
        return oslo_context.RequestContext.from_dict(context)


class ProfilerRequestContextSerializer(RequestContextSerializer):
    def serialize_context(self, context: Any) -> dict[str, Any]:
        out = super().serialize_context(context)
        out["trace_info"] = {"hmac_key": "k", "base_id": "b", "parent_id": "p"}
        return out

    def deserialize_context(self, context: dict[str, Any]) -> Any:
        context.pop("trace_info", None)
        return super().deserialize_context(context)


# The rabbit driver adds client_timeout to a call's context.
KNOWN_CONTEXT_KEYS = set(oslo_context.RequestContext().to_dict()) | {"trace_info", "client_timeout"}


def nova_serializer() -> ct_messaging.TracingSerializer:
    return ct_messaging.wrap(
        ProfilerRequestContextSerializer(oslo_messaging.JsonPayloadSerializer())
    )


# -- transports ------------------------------------------------------------------------


def _rabbit_url(amqp_url: str) -> str:
    parts = urlsplit(amqp_url)
    vhost = parts.path[1:] if parts.path not in ("", "/", "//") else ""
    return (
        f"rabbit://{parts.username}:{parts.password}@{parts.hostname}:{parts.port or 5672}/{vhost}"
    )


@pytest.fixture(params=["fake", "rabbit"])
def transport(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An RPC transport on the fake driver, or on the real RabbitMQ (one worker thread)."""
    if request.param == "rabbit":
        pytest.importorskip("amqp")
        url = _rabbit_url(request.getfixturevalue("amqp_url"))
        request.applymarker(pytest.mark.rabbitmq)
    else:
        url = "fake:/"
    conf = cfg.ConfigOpts()
    conf([], project="crosstrace-test")
    # oslo.messaging's options on this private conf (some are registered on the
    # global cfg.CONF only, as their conffixture notes).
    for group, opts in oslo_messaging.opts.list_opts():
        conf.register_opts(opts, group=group)
    conf.register_opts(metrics_opts.oslo_messaging_metrics, group="oslo_messaging_metrics")
    conf.register_opts(tracing_opts.oslo_messaging_tracing, group="oslo_messaging_tracing")
    conf.set_override("executor_thread_pool_size", 1)  # one worker thread, reused
    transport = oslo_messaging.get_rpc_transport(conf, url=url)
    yield transport
    transport.cleanup()


class Endpoint:
    """Records what each method saw: the context object, crosstrace's context, the span."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.done = threading.Event()

    def _record(self, ctxt: Any, method: str, **kwargs: Any) -> None:
        span = _get_current_span()
        self.seen.append(
            {
                "method": method,
                "ctxt": ctxt,
                "crosstrace": get_current(),
                "span": span,
                "thread": threading.get_ident(),
                **kwargs,
            }
        )
        self.done.set()

    def echo(self, ctxt: Any, value: Any) -> Any:
        self._record(ctxt, "echo", value=value)
        return value

    def poke(self, ctxt: Any, value: Any) -> None:
        self._record(ctxt, "poke", value=value)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll *condition* until true (the server thread finishes on its own time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Rpc:
    """One topic's server(s) and a client on one transport, each side with its own tracer."""

    def __init__(self, transport: Any, sink: Sink, servers: int = 1) -> None:
        self.topic = "ct-" + uuid.uuid4().hex[:10]
        self.api = sink_tracer(sink, "api")
        self.conductor = sink_tracer(sink, "conductor")
        self.endpoints = [Endpoint() for _ in range(servers)]
        self.servers = [
            ct_messaging.get_rpc_server(
                transport,
                oslo_messaging.Target(topic=self.topic, server=f"host{i}"),
                [endpoint],
                serializer=nova_serializer(),
                tracer=self.conductor,
            )
            for i, endpoint in enumerate(self.endpoints)
        ]
        for server in self.servers:
            server.start()
        self.client = ct_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=self.topic), serializer=nova_serializer()
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
            server.wait()


@pytest.fixture
def rpc(transport: Any, sink: Sink) -> Iterator[Rpc]:
    r = Rpc(transport, sink)
    yield r
    r.stop()


def _in_request(tracer: Tracer, send: Callable[[Any], Any]) -> tuple[Any, Any]:
    """Run *send(oslo_ctxt)* inside a traced request with the global id GID."""
    request = RequestContext(request_id=LID, global_request_id=GID, user_id="u1")
    with use_context(request), tracer.span("POST /servers", SpanKind.SERVER) as root:
        return send(to_oslo()), root


def test_call_carries_the_global_id_and_continues_the_trace(rpc: Rpc, sink: Sink) -> None:
    result, root = _in_request(rpc.api, lambda c: rpc.client.call(c, "echo", value=[1, "a"]))
    assert result == [1, "a"]
    (seen,) = rpc.endpoints[0].seen
    ctx = seen["crosstrace"]
    assert ctx.global_request_id == GID
    assert ctx.request_id != LID  # the server's own local id
    assert ctx.user_id == "u1"
    assert isinstance(seen["ctxt"], oslo_context.RequestContext)  # built by nova's base
    assert seen["ctxt"].global_request_id == GID
    wait_for(
        lambda: any(s.kind == SpanKind.SERVER and s.name.endswith(".echo") for s in sink.spans),
        "server span",
    )
    client = sink.named(f"call {rpc.topic}.echo", SpanKind.CLIENT)
    server = sink.named(f"process {rpc.topic}.echo", SpanKind.SERVER)
    assert client.trace_id == server.trace_id == root.trace_id
    assert client.parent_id == root.span_id
    assert server.parent_id == client.span_id
    assert server.attributes[ATTR_GLOBAL_REQUEST_ID] == GID
    assert server.attributes["rpc.method"] == "echo"
    assert client.attributes["messaging.operation.name"] == "call"
    assert seen["span"].span_id == server.span_id


def test_cast_is_a_producer_and_consumer_span_in_one_trace(rpc: Rpc, sink: Sink) -> None:
    _, root = _in_request(rpc.api, lambda c: rpc.client.cast(c, "poke", value=1))
    wait_for(lambda: any(s.kind == SpanKind.CONSUMER for s in sink.spans), "consumer span")
    producer = sink.named(f"cast {rpc.topic}.poke", SpanKind.PRODUCER)
    consumer = sink.named(f"process {rpc.topic}.poke", SpanKind.CONSUMER)
    assert consumer.trace_id == producer.trace_id == root.trace_id
    assert consumer.parent_id == producer.span_id
    assert rpc.endpoints[0].seen[0]["crosstrace"].global_request_id == GID


def test_fanout_reaches_every_server_in_the_same_trace(transport: Any, sink: Sink) -> None:
    two = Rpc(transport, sink, servers=2)
    try:
        _, root = _in_request(
            two.api, lambda c: two.client.prepare(fanout=True).cast(c, "poke", value=2)
        )
        wait_for(lambda: sum(s.kind == SpanKind.CONSUMER for s in sink.spans) == 2, "2 consumers")
    finally:
        two.stop()
    producer = sink.named(f"cast {two.topic}.poke", SpanKind.PRODUCER)
    assert producer.attributes["messaging.oslo.fanout"] is True
    consumers = [s for s in sink.spans if s.kind == SpanKind.CONSUMER]
    assert {s.parent_id for s in consumers} == {producer.span_id}
    assert {s.trace_id for s in consumers} == {root.trace_id}
    for endpoint in two.endpoints:
        assert endpoint.seen[0]["crosstrace"].global_request_id == GID


class NotificationEndpoint:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        self.seen.append({"ctxt": ctxt, "crosstrace": get_current(), "event_type": event_type})


@pytest.mark.parametrize("plain_dict", [False, True], ids=["oslo-context", "plain-dict"])
def test_notification_carries_the_global_id_and_the_trace(
    transport: Any, sink: Sink, plain_dict: bool
) -> None:
    """Even a plain-dict context (which the notifier replaces by ``{}``) carries them."""
    # nova's base serializer needs a context object; a plain dict goes with oslo's.
    serializer = (
        ct_messaging.wrap(oslo_messaging.JsonPayloadSerializer())
        if plain_dict
        else nova_serializer()
    )
    conf = transport.conf
    topic = "ct-notify-" + uuid.uuid4().hex[:8]
    notify_transport = (
        oslo_messaging.get_notification_transport(
            conf, url=str(transport._driver._url) if False else None
        )
        if False
        else transport
    )
    endpoint = NotificationEndpoint()
    listener = ct_messaging.get_notification_listener(
        notify_transport,
        [oslo_messaging.Target(topic=topic)],
        [endpoint],
        serializer=serializer,
        tracer=sink_tracer(sink, "notification-consumer"),
    )
    listener.start()
    try:
        notifier = ct_messaging.get_notifier(
            notify_transport,
            "compute.host1",
            driver="messaging",
            topics=[topic],
            serializer=serializer,
        )
        api = sink_tracer(sink, "api")
        _, root = _in_request(
            api,
            lambda c: notifier.info(
                {} if plain_dict else c, "compute.instance.create.end", {"id": 1}
            ),
        )
        wait_for(lambda: any(s.kind == SpanKind.CONSUMER for s in sink.spans), "consumer span")
    finally:
        listener.stop()
        listener.wait()
    (seen,) = endpoint.seen
    assert seen["crosstrace"].global_request_id == GID
    producer = sink.named("notify compute.instance.create.end", SpanKind.PRODUCER)
    consumer = next(s for s in sink.spans if s.kind == SpanKind.CONSUMER)
    assert producer.trace_id == consumer.trace_id == root.trace_id
    assert consumer.parent_id == producer.span_id


def test_a_reused_worker_thread_starts_each_message_clean(rpc: Rpc, sink: Sink) -> None:
    _, root = _in_request(rpc.api, lambda c: rpc.client.call(c, "echo", value=1))
    # The second call comes from outside any request and any trace.
    rpc.client.call(oslo_context.RequestContext(overwrite=False), "echo", value=2)
    first, second = rpc.endpoints[0].seen
    assert first["thread"] == second["thread"]  # one worker thread served both
    assert second["crosstrace"].global_request_id != GID
    assert second["crosstrace"].request_id != first["crosstrace"].request_id

    def servers() -> list[Any]:
        return [s for s in sink.spans if s.kind == SpanKind.SERVER and s.name.endswith(".echo")]

    wait_for(lambda: len(servers()) == 2, "2 server spans")
    first_span, second_span = servers()
    assert first_span.trace_id == root.trace_id
    assert second_span.trace_id != root.trace_id
    assert second_span.parent_id == 0


def test_non_json_context_value_is_a_clear_error(rpc: Rpc) -> None:
    class Flavor:
        pass

    ctxt = to_oslo(RequestContext(global_request_id=GID))
    ctxt.flavor = Flavor()  # type: ignore[attr-defined]

    class Leaky(RequestContextSerializer):
        def serialize_context(self, context: Any) -> dict[str, Any]:
            return {**super().serialize_context(context), "flavor": context.flavor}

    client = ct_messaging.get_rpc_client(
        rpc.client.transport, oslo_messaging.Target(topic=rpc.topic), serializer=Leaky(None)
    )
    with pytest.raises(ct_messaging.ContextValueError, match="'flavor' is a Flavor"):
        client.call(ctxt, "echo", value=1)
    assert rpc.endpoints[0].seen == []


@pytest.fixture(scope="module")
def otel_spans() -> Any:
    """oslo.messaging's OpenTelemetry tracing exporting into memory."""
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = otel_trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # set once per process
        provider = TracerProvider()
        otel_trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_with_oslo_messaging_tracing_enabled_the_trace_stays_one(
    transport: Any, sink: Sink, otel_spans: Any
) -> None:
    """oslo.messaging injects its PRODUCER span; crosstrace parents it and only extracts."""
    from opentelemetry.trace import SpanKind as OtelKind

    transport.conf.set_override("tracing_enabled", True, group="oslo_messaging_tracing")
    r = Rpc(transport, sink)
    try:
        _, root = _in_request(r.api, lambda c: r.client.call(c, "echo", value=1))
        wait_for(lambda: any(s.name == f"process {r.topic}.echo" for s in sink.spans), "server")
    finally:
        r.stop()
        transport.conf.clear_override("tracing_enabled", group="oslo_messaging_tracing")
    client = sink.named(f"call {r.topic}.echo", SpanKind.CLIENT)
    server = sink.named(f"process {r.topic}.echo", SpanKind.SERVER)
    (producer,) = [
        s
        for s in otel_spans.get_finished_spans()
        if s.kind == OtelKind.PRODUCER and s.name == f"{r.topic}.echo"
    ]
    assert producer.context.trace_id == client.trace_id == root.trace_id
    assert producer.parent.span_id == client.span_id
    assert server.trace_id == root.trace_id
    assert server.parent_id == producer.context.span_id


def test_wrap_is_idempotent_and_stays_outermost() -> None:
    base = ProfilerRequestContextSerializer(None)
    once = ct_messaging.wrap(base)
    assert ct_messaging.wrap(once) is once
    assert ct_messaging.TracingSerializer(once)._base is base
    # Someone wrapped crosstrace's inside theirs: wrapping again unlinks the inner one.
    theirs = RequestContextSerializer(ct_messaging.wrap(oslo_messaging.NoOpSerializer()))
    outer = ct_messaging.wrap(theirs)
    assert isinstance(theirs._base, oslo_messaging.NoOpSerializer)
    with use_context(RequestContext(global_request_id=GID)):
        out = outer.serialize_context(to_oslo())
    assert out[ct_messaging.KEY_GLOBAL_REQUEST_ID] == GID


def test_deserialize_removes_its_keys_before_the_base_and_resets_state() -> None:
    serializer = nova_serializer()
    with use_context(RequestContext(global_request_id=GID)):
        sent = serializer.serialize_context(to_oslo())
    assert {ct_messaging.KEY_GLOBAL_REQUEST_ID, ct_messaging.KEY_REQUEST_ID} <= set(sent)
    stale = RequestContext(global_request_id="req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d")
    with use_context(stale):
        ctxt = serializer.deserialize_context(dict(sent))  # the strict base would raise
        received = get_current()
    assert isinstance(ctxt, oslo_context.RequestContext)
    assert received is not stale
    assert received is not None
    assert received.global_request_id == GID
