"""Several services in one process: service tracers sharing one exporter."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import crosstrace
from crosstrace import config, otlp
from crosstrace.export import Transport
from crosstrace.propagation import start_server_span
from crosstrace.tracing import INVALID_SPAN, Span, SpanKind, Tracer, span, start_span
from crosstrace.tracing import tracer as tr
from tracing_support import Sink, sink_tracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Discard(Transport):
    def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
        return b""

    def send(self, signal: str, payload: bytes) -> None:
        pass


@pytest.fixture(autouse=True)
def _shutdown_after(no_tracer: None) -> Iterator[None]:
    """Shut the configured exporter down before ``no_tracer`` restores the old tracer."""
    yield
    config.shutdown(1.0)


def main_tracer(sink: Sink, **kwargs: Any) -> Tracer:
    return sink_tracer(sink, "main", **kwargs)


def test_for_service_is_cached_and_has_its_own_service_name() -> None:
    main = main_tracer(Sink())
    a = main.for_service("image")
    assert main.for_service("image") is a
    assert a.for_service("image") is a
    assert a.resource["service.name"] == "image"
    assert main.resource["service.name"] == "main"
    assert a.resource["host.name"] == main.resource["host.name"]
    assert main.for_service("main") is main


def test_for_service_refuses_an_empty_name() -> None:
    with pytest.raises(ValueError, match="service_name"):
        main_tracer(Sink()).for_service("")


def test_service_tracers_share_the_sink_and_a_batch_groups_them_by_resource() -> None:
    sink = Sink()
    main = main_tracer(sink)
    with span("GET /a", SpanKind.SERVER, tracer=main.for_service("a")), span("child"):
        pass
    with span("GET /b", SpanKind.SERVER, tracer=main.for_service("b")):
        pass
    assert [s.name for s in sink.spans] == ["child", "GET /a", "GET /b"]
    req = otlp.spans_to_request(sink.spans)
    by_service = {
        next(kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"): [
            s.name for s in rs.scope_spans[0].spans
        ]
        for rs in req.resource_spans
    }
    assert by_service == {"a": ["child", "GET /a"], "b": ["GET /b"]}


def test_settings_changed_on_either_apply_to_both() -> None:
    main = main_tracer(Sink())
    svc = main.for_service("svc")
    svc.update(sample_ratio=0.0, slow_threshold_s=0.0)
    assert main.sample_ratio == 0.0
    assert svc.threshold == main.threshold == 0
    main.update(sample_ratio=1.0)
    assert svc.effective_ratio == 1.0
    assert svc.threshold == main.threshold > 0


def test_the_overhead_controller_is_shared() -> None:
    main = main_tracer(Sink(), overhead_budget=0.05)
    svc = main.for_service("svc")
    assert svc.controller is main.controller is not None


def test_child_follows_the_parents_tracer_not_the_one_named() -> None:
    sink = Sink()
    main = main_tracer(sink)
    a, b = main.for_service("a"), main.for_service("b")
    with span("root", tracer=a), span("child", tracer=b) as child:
        assert isinstance(child, Span)
        assert child.segment.tracer is a


def test_start_span_under_a_recording_parent_needs_no_global_tracer() -> None:
    """start_span() follows the current span's tracer; no configure() needed."""
    sink = Sink()
    svc = main_tracer(sink).for_service("svc")
    assert tr.get_tracer() is None
    with span("root", tracer=svc):
        child = start_span("db", SpanKind.CLIENT)
        assert isinstance(child, Span)
        assert child.segment.tracer is svc
        child.end()
    assert [s.name for s in sink.spans] == ["db", "root"]


def test_start_span_without_parent_or_tracer_is_a_no_op() -> None:
    assert start_span("x") is INVALID_SPAN


def test_start_server_span_uses_the_tracer_given() -> None:
    sink = Sink()
    svc = main_tracer(sink).for_service("svc")
    s = start_server_span("GET /", {"traceparent": f"00-{TRACE}-{PARENT}-01"}, tracer=svc)
    assert isinstance(s, Span)
    assert s.segment.tracer is svc
    assert f"{s.trace_id:032x}" == TRACE
    s.end()
    assert sink.spans == [s]


def test_get_tracer_by_name_follows_reconfiguration() -> None:
    """The object get_tracer(name) returned keeps working after configure() rebuilds."""
    assert crosstrace.get_tracer("svc") is None
    crosstrace.configure(
        service_name="first", transport=Discard(), overhead_budget=0, sample_ratio=1
    )
    svc = crosstrace.get_tracer("svc")
    assert svc is not None
    assert crosstrace.get_tracer("svc") is svc
    first_sink = svc.sink
    crosstrace.configure(service_name="second", transport=Discard())
    assert crosstrace.get_tracer("svc") is svc
    assert svc.sink is not first_sink
    assert svc.sink is crosstrace.get_tracer().sink  # type: ignore[union-attr]
    crosstrace.configure(sample_ratio=0.0)
    assert svc.threshold == 0
    assert svc.resource["service.name"] == "svc"


def test_service_tracers_survive_shutdown_and_configure() -> None:
    crosstrace.configure(service_name="first", transport=Discard(), overhead_budget=0)
    svc = crosstrace.get_tracer("svc")
    config.shutdown(1.0)
    crosstrace.configure(service_name="again", transport=Discard(), overhead_budget=0)
    assert crosstrace.get_tracer("svc") is svc
    assert svc is not None
    assert svc.sink is crosstrace.get_tracer().sink  # type: ignore[union-attr]
