"""The span API, the keep/drop rule per local segment, and the propagation hooks."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import crosstrace
from crosstrace import tracing
from crosstrace.context import RequestContext, use_context, wrap
from crosstrace.propagation import extract_context, inject_context, start_server_span
from crosstrace.tracecontext import format_traceparent, parse_traceparent
from crosstrace.tracing import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanKind,
    StatusCode,
    Tracer,
    activate,
    current_span,
    deactivate,
    span,
    start_span,
)
from crosstrace.tracing import tracer as tr
from crosstrace.tracing.sampling import OverheadController
from crosstrace.trust import make_osprofiler_headers, make_trigger

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Sink:
    """Collects the segments a tracer keeps."""

    def __init__(self) -> None:
        self.segments: list[list[Span]] = []

    def export_spans(self, spans: Sequence[Span]) -> None:
        self.segments.append(list(spans))

    def cpu_ns(self) -> int:
        return 0

    @property
    def spans(self) -> list[Span]:
        return [s for seg in self.segments for s in seg]


@pytest.fixture
def sink() -> Sink:
    return Sink()


def install(sink: Sink, **kwargs: Any) -> Tracer:
    kwargs.setdefault("sample_ratio", 1.0)
    kwargs.setdefault("overhead_budget", 0.0)
    t = Tracer("svc-test", sink=sink, **kwargs)
    tr._set_tracer(t)
    return t


@pytest.fixture(autouse=True)
def _no_tracer() -> Iterator[None]:
    previous = tr.get_tracer()
    tr._set_tracer(None)
    yield
    tr._set_tracer(previous)


# -- unconfigured ----------------------------------------------------------------------


def test_unconfigured_span_is_the_shared_non_recording_span() -> None:
    with span("x") as s:
        assert s is INVALID_SPAN
        assert not s.is_recording()
        assert current_span() is INVALID_SPAN
        s.set_attribute("k", "v")
        s.add_event("e")


def test_unconfigured_decorator_calls_through() -> None:
    @span("work")
    def work(a: int, b: int) -> int:
        return a + b

    assert work(2, 3) == 5


def test_unconfigured_exception_still_propagates() -> None:
    with pytest.raises(KeyError), span("x"):
        raise KeyError("k")


def test_unconfigured_inject_writes_nothing() -> None:
    carrier: dict[str, str] = {}
    inject_context(carrier)
    assert carrier == {}


# -- recording ------------------------------------------------------------------------------


def test_nested_spans_share_the_trace_and_link_parents(sink: Sink) -> None:
    install(sink)
    with span("root") as root:
        assert current_span() is root
        with span("child", attributes={"a": 1}) as child:
            assert current_span() is child
        assert current_span() is root
    assert current_span() is INVALID_SPAN
    assert len(sink.segments) == 1
    child_s, root_s = sink.segments[0]
    assert (child_s.name, root_s.name) == ("child", "root")
    assert child_s.trace_id == root_s.trace_id != 0
    assert child_s.parent_id == root_s.span_id
    assert root_s.parent_id == 0
    assert child_s.attributes == {"a": 1}
    assert root_s.start_ns <= child_s.start_ns <= child_s.end_ns <= root_s.end_ns


def test_span_kind_values_are_otlp_numbers() -> None:
    assert [k.value for k in SpanKind] == [1, 2, 3, 4, 5]
    assert [c.value for c in StatusCode] == [0, 1, 2]


def test_attributes_events_and_status_are_recorded(sink: Sink) -> None:
    install(sink)
    with span("op", kind=SpanKind.CLIENT) as s:
        s.set_attribute("http.request.method", "GET")
        s.set_attributes({"n": 2, "ok": True})
        s.add_event("retry", {"attempt": 1})
        s.set_status(StatusCode.OK)
    (got,) = sink.spans
    assert got.kind == SpanKind.CLIENT
    assert got.attributes == {"http.request.method": "GET", "n": 2, "ok": True}
    assert got.events is not None
    assert got.events[0][0] == "retry"
    assert got.events[0][2] == {"attempt": 1}
    assert got.status_code == StatusCode.OK


def test_exception_is_recorded_sets_error_and_propagates(sink: Sink) -> None:
    install(sink)
    with pytest.raises(ValueError, match="boom"), span("op"):
        raise ValueError("boom")
    (got,) = sink.spans
    assert got.status_code == StatusCode.ERROR
    assert got.status_message == "ValueError: boom"
    assert got.events is not None
    name, _, attrs = got.events[0]
    assert name == "exception"
    assert attrs["exception.type"] == "ValueError"
    assert attrs["exception.message"] == "boom"
    assert "Traceback" in attrs["exception.stacktrace"]
    assert "raise ValueError" in attrs["exception.stacktrace"]


def test_record_exception_names_non_builtin_types_with_module(sink: Sink) -> None:
    install(sink)
    with span("op") as s:
        s.record_exception(TimeoutError("t"))
        s.record_exception(asyncio.InvalidStateError("x"))
    (got,) = sink.spans
    assert got.events is not None
    assert got.events[0][2]["exception.type"] == "TimeoutError"
    assert got.events[1][2]["exception.type"] == "asyncio.exceptions.InvalidStateError"


def test_attribute_count_is_bounded(sink: Sink) -> None:
    install(sink)
    with span("op") as s:
        for i in range(tracing.MAX_ATTRIBUTES + 10):
            s.set_attribute(f"k{i}", i)
    (got,) = sink.spans
    assert len(got.attributes) == tracing.MAX_ATTRIBUTES
    assert got.dropped_attributes == 10


def test_decorator_sync_and_async(sink: Sink) -> None:
    install(sink)

    @span("sync_op", kind=SpanKind.INTERNAL, attributes={"x": 1})
    def sync_op() -> str:
        return current_span().name  # type: ignore[union-attr]

    @span("async_op")
    async def async_op() -> str:
        await asyncio.sleep(0)
        return current_span().name  # type: ignore[union-attr]

    assert sync_op() == "sync_op"
    assert asyncio.run(async_op()) == "async_op"
    assert [s.name for s in sink.spans] == ["sync_op", "async_op"]
    assert sink.spans[0].attributes == {"x": 1}


def test_decorator_applied_before_configure_records_after(sink: Sink) -> None:
    @span("early")
    def early() -> int:
        return 7

    assert early() == 7
    assert sink.spans == []
    install(sink)
    assert early() == 7
    assert [s.name for s in sink.spans] == ["early"]


def test_decorated_function_nested_under_a_span(sink: Sink) -> None:
    install(sink)

    @span("inner")
    def inner() -> None:
        pass

    with span("outer"):
        inner()
        inner()
    inner_a, inner_b, outer = sink.spans
    assert inner_a.parent_id == outer.span_id == inner_b.parent_id
    assert inner_a.span_id != inner_b.span_id


def test_async_tasks_each_have_their_own_current_span(sink: Sink) -> None:
    install(sink)

    async def task(name: str) -> None:
        with span(name):
            await asyncio.sleep(0.001)
            with span(name + ".child"):
                await asyncio.sleep(0)

    async def main() -> None:
        with span("root"):
            await asyncio.gather(task("a"), task("b"))

    asyncio.run(main())
    by_name = {s.name: s for s in sink.spans}
    assert by_name["a.child"].parent_id == by_name["a"].span_id
    assert by_name["b.child"].parent_id == by_name["b"].span_id
    assert by_name["a"].parent_id == by_name["root"].span_id


def test_context_wrap_carries_the_span_to_a_thread(sink: Sink) -> None:
    install(sink)
    with span("root") as root:
        fn = wrap(lambda: span("in-thread").__enter__().__exit__(None, None, None))
        th = threading.Thread(target=fn)
        th.start()
        th.join()
    names = {s.name: s for s in sink.spans}
    assert names["in-thread"].parent_id == root.span_id  # type: ignore[union-attr]


def test_resource_has_service_host_and_pid(sink: Sink) -> None:
    t = install(sink)
    assert t.resource["service.name"] == "svc-test"
    assert t.resource["host.name"]
    assert isinstance(t.resource["process.pid"], int)


# -- request context ------------------------------------------------------------------------


def test_server_span_gets_request_context_ids(sink: Sink) -> None:
    install(sink)
    ctx = RequestContext(
        global_request_id="req-" + str(uuid.uuid4()),
        project_id="p1",
        domain_id="d1",
        user_id="u1",
    )
    with use_context(ctx), span("GET /servers", kind=SpanKind.SERVER):
        pass
    (got,) = sink.spans
    assert got.attributes[tracing.ATTR_REQUEST_ID] == ctx.request_id
    assert got.attributes[tracing.ATTR_GLOBAL_REQUEST_ID] == ctx.global_request_id
    assert got.attributes[tracing.ATTR_PROJECT_ID] == "p1"
    assert got.attributes[tracing.ATTR_DOMAIN_ID] == "d1"
    assert got.attributes[tracing.ATTR_USER_ID] == "u1"


def test_local_root_internal_span_also_gets_request_ids(sink: Sink) -> None:
    install(sink)
    ctx = RequestContext()
    with use_context(ctx), span("job"), span("step"):
        pass
    step, job = sink.spans
    assert job.attributes[tracing.ATTR_REQUEST_ID] == ctx.request_id
    assert tracing.ATTR_REQUEST_ID not in step.attributes  # internal children stay cheap


# -- keep / drop ------------------------------------------------------------------------------


def test_ratio_zero_drops_a_successful_segment(sink: Sink) -> None:
    t = install(sink, sample_ratio=0.0)
    with span("root"), span("child"):
        pass
    assert sink.segments == []
    assert t.segments_dropped == 1


def test_ratio_zero_keeps_a_segment_with_an_exception(sink: Sink) -> None:
    install(sink, sample_ratio=0.0)
    with pytest.raises(RuntimeError), span("root"), span("child"):
        raise RuntimeError("db down")
    assert [s.name for s in sink.spans] == ["child", "root"]


def test_ratio_zero_keeps_a_segment_whose_child_failed_quietly(sink: Sink) -> None:
    """The rule keys on status: a 5xx marked as error, no exception anywhere."""
    install(sink, sample_ratio=0.0)
    with span("root"), span("call downstream", kind=SpanKind.CLIENT) as c:
        c.set_status(StatusCode.ERROR, "HTTP 500")
    assert [s.name for s in sink.spans] == ["call downstream", "root"]
    assert sink.spans[1].status_code == StatusCode.UNSET


def test_ratio_zero_keeps_a_slow_segment(sink: Sink) -> None:
    install(sink, sample_ratio=0.0, slow_threshold_s=2.0)
    root = start_span("slow", start_ns=time.time_ns() - 3_000_000_000)
    root.end()
    fast = start_span("fast")
    fast.end()
    assert [s.name for s in sink.spans] == ["slow"]


def test_slow_threshold_zero_disables_the_slow_rule(sink: Sink) -> None:
    install(sink, sample_ratio=0.0, slow_threshold_s=0.0)
    start_span("slow", start_ns=time.time_ns() - 3_000_000_000).end()
    assert sink.spans == []


def test_ratio_change_applies_to_the_next_trace(sink: Sink) -> None:
    t = install(sink, sample_ratio=0.0)
    with span("a"):
        pass
    t.update(sample_ratio=1.0)
    with span("b"):
        pass
    assert [s.name for s in sink.spans] == ["b"]


def test_rate_limit_caps_sampled_traces(sink: Sink) -> None:
    install(sink, sample_ratio=1.0, rate_limit=3.0)
    for _ in range(20):
        with span("r"):
            pass
    assert 3 <= len(sink.segments) <= 4  # burst of 3, plus at most a refilled token


def test_unrecorded_trace_uses_one_non_recording_span(sink: Sink) -> None:
    t = install(sink, sample_ratio=0.0)
    t.controller = None
    t.record_threshold = 0  # record nothing
    with span("root") as root:
        assert isinstance(root, NonRecordingSpan)
        assert root.context.is_valid
        with span("child") as child:
            assert child is root
            carrier: dict[str, str] = {}
            inject_context(carrier)
    parsed = parse_traceparent(carrier["traceparent"])
    assert parsed is not None
    assert parsed[0] == root.trace_id
    assert current_span() is INVALID_SPAN
    assert sink.segments == []
    assert t.traces_unrecorded == 1


def test_span_ending_after_its_root_follows_the_segment_decision(sink: Sink) -> None:
    install(sink, sample_ratio=1.0)
    with span("root"):
        late = start_span("background")
    late.end()
    assert [s.name for s in sink.spans] == ["root", "background"]


def test_kept_segments_are_redacted(sink: Sink) -> None:
    install(sink, redact_keys=["pin"])
    with span("root", attributes={"password": "x", "user.pin": "1"}) as s:
        s.add_event("login", {"token": "abc", "user": "bob"})
    (got,) = sink.spans
    assert got.attributes == {"password": "***", "user.pin": "***"}
    assert got.events is not None
    assert got.events[0][2] == {"token": "***", "user": "bob"}


# -- propagation hooks ----------------------------------------------------------------------


def test_server_span_continues_the_incoming_trace(sink: Sink) -> None:
    install(sink)
    s = start_server_span("GET /", {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    token = activate(s)
    with span("child"):
        pass
    s.end()
    deactivate(token)
    child, server = sink.spans
    assert server.trace_id == int(TRACE, 16)
    assert server.parent_id == int(PARENT, 16)
    assert server.parent_remote
    assert server.kind == SpanKind.SERVER
    assert child.parent_id == server.span_id


def test_header_lookup_is_case_insensitive(sink: Sink) -> None:
    install(sink)
    remote = extract_context({"TraceParent": f"00-{TRACE}-{PARENT}-00"})
    assert remote.parent is not None
    assert remote.parent.trace_id == int(TRACE, 16)


def test_extract_accepts_a_getter_function(sink: Sink) -> None:
    install(sink)
    environ = {"HTTP_TRACEPARENT": f"00-{TRACE}-{PARENT}-00", "HTTP_TRACESTATE": "a=1"}
    remote = extract_context(lambda name: environ.get("HTTP_" + name.upper().replace("-", "_")))
    assert remote.parent is not None
    assert remote.parent.trace_state is not None
    assert remote.parent.trace_state.get("a") == "1"


def test_invalid_traceparent_restarts_the_trace(sink: Sink) -> None:
    install(sink)
    s = start_server_span("GET /", {"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"})
    s.end()
    (got,) = sink.spans
    assert got.trace_id != int(TRACE, 16)
    assert got.parent_id == 0


def test_untrusted_sampled_flag_does_not_force_recording(sink: Sink) -> None:
    install(sink, sample_ratio=0.0)
    s = start_server_span("GET /", {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    s.end()
    assert sink.spans == []


def test_signed_trigger_forces_sampling(sink: Sink) -> None:
    install(sink, sample_ratio=0.0, trigger_keys=["k"])
    headers = {
        "traceparent": f"00-{TRACE}-{PARENT}-00",
        "X-Crosstrace-Trigger": make_trigger("k", int(TRACE, 16)),
    }
    s = start_server_span("GET /", headers)
    token = activate(s)
    out: dict[str, str] = {}
    inject_context(out)
    deactivate(token)
    s.end()
    assert [x.name for x in sink.spans] == ["GET /"]
    # The trigger goes on to the next service, re-signed, with the sampled flag
    # (the caller's trace id was not marked random, so neither is ours).
    assert out["traceparent"].endswith("-01")
    assert extract_context(out).forced


def test_trigger_with_wrong_key_does_not_force(sink: Sink) -> None:
    install(sink, sample_ratio=0.0, trigger_keys=["k"])
    headers = {
        "traceparent": f"00-{TRACE}-{PARENT}-01",
        "X-Crosstrace-Trigger": make_trigger("wrong", int(TRACE, 16)),
    }
    start_server_span("GET /", headers).end()
    assert sink.spans == []


def test_osprofiler_headers_join_the_trace_and_force_sampling(sink: Sink) -> None:
    install(sink, sample_ratio=0.0, osprofiler_keys=["SECRET_KEY"])
    base_id, parent_id = str(uuid.uuid4()), str(uuid.uuid4())
    headers = make_osprofiler_headers(base_id, parent_id, "SECRET_KEY")
    s = start_server_span("GET /", headers)
    token = activate(s)
    out: dict[str, str] = {}
    inject_context(out)
    deactivate(token)
    s.end()
    (got,) = sink.spans
    assert got.trace_id == uuid.UUID(base_id).int
    assert got.parent_id == 0
    assert got.attributes["osprofiler.base_id"] == base_id
    assert got.attributes["osprofiler.parent_id"] == parent_id
    # Onwards: the same base_id, signed with the same key, so OSProfiler services join.
    assert extract_context(out).osprofiler_base_id == base_id


def test_osprofiler_headers_with_wrong_key_are_ignored(sink: Sink) -> None:
    install(sink, sample_ratio=0.0, osprofiler_keys=["SECRET_KEY"])
    headers = make_osprofiler_headers(str(uuid.uuid4()), None, "other")
    start_server_span("GET /", headers).end()
    assert sink.spans == []


def test_inject_writes_traceparent_and_tracestate(sink: Sink) -> None:
    install(sink)
    s = start_server_span("GET /", {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "x=1"})
    token = activate(s)
    with span("client", kind=SpanKind.CLIENT) as c:
        out: dict[str, str] = {}
        inject_context(out)
    deactivate(token)
    s.end()
    assert out["traceparent"] == format_traceparent(int(TRACE, 16), c.span_id, 1)
    assert out["tracestate"] == "x=1"


def test_malformed_tracestate_is_dropped_but_traceparent_kept(sink: Sink) -> None:
    install(sink)
    remote = extract_context({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "a=1,@b=2"})
    assert remote.parent is not None
    assert remote.parent.trace_state is None


def test_crosstrace_package_reexports_the_span_api() -> None:
    assert crosstrace.span is span
    assert crosstrace.current_span is current_span
    assert crosstrace.SpanKind is SpanKind


# -- overhead budget ---------------------------------------------------------------------------


def test_budget_counts_once_per_trace_and_prices_the_counts(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OverheadController, "MIN_BUSY_NS", 0)  # this test process is idle
    t = install(sink, overhead_budget=0.01)
    ctl = t.controller
    assert ctl is not None
    assert t.costs.calibrations == 1  # setting the budget calibrated the prices
    assert t.costs.span_ns > 0
    assert t.costs.root_ns > 0
    ctl.next_tick_ns = 1 << 62  # no window closes during the spans
    ctl.tick(t.accounting, t.costs, 0, now_ns=1 << 62)  # opens a fresh window
    t.costs.root_ns = t.costs.keep_ns = t.costs.unrecorded_ns = 0.0
    t.costs.span_ns = 1e12  # one child priced at 1000 s: nothing else matters
    with span("root", attributes={"a": 1}), span("child"):
        pass
    assert t.accounting.snapshot() == (1, 2, 2, 0, 0, 0)
    assert ctl.tick(t.accounting, t.costs, 0, now_ns=1 << 63)
    assert ctl.last_fraction > 1.0
    assert ctl.trace_fraction < 1.0


def test_controller_decision_changes_which_traces_are_sampled(sink: Sink) -> None:
    t = install(sink, overhead_budget=0.01)
    assert t.controller is not None
    t.controller.next_tick_ns = 1 << 62
    # 1 % of the 969 ms used without tracing is 9.69 ms; 1 ms of recording
    # leaves 8.69 ms for 30 ms of export.
    t.controller.adjust(record_ns=1_000_000, export_ns=30_000_000, proc_ns=1_000_000_000)
    t._apply_knobs()
    assert t.effective_ratio == pytest.approx(8.69 / 30)
    low = 1  # low 56 bits far below 0.3 * 2**56: sampled
    high = (1 << 56) - 1  # at the top: not sampled, dropped at ratio 0.3
    for trace_id in (low, high):
        remote = tracing.RemoteContext(tracing.SpanContext(trace_id, 7, 0, None, True))
        start_span("req", SpanKind.SERVER, parent=remote).end()
    assert [s.trace_id for s in sink.spans] == [low]
