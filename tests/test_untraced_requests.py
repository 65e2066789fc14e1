"""Requests the overhead budget leaves untraced, on the WSGI and ASGI middleware.

Below a small budget an entry point runs most requests exactly as with tracing
off. What must still hold: the request keeps its ids, a failed or slow request
still exports its server span (built after the fact, with the caller's trace
and the request's real start), a fast successful one exports nothing, and the
tracer counts both (so the budget can price them).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from crosstrace import get_current
from crosstrace.asgi import RequestIdMiddleware as AsgiMiddleware
from crosstrace.context import RequestContext
from crosstrace.tracing import SpanKind, StatusCode, Tracer, current_span
from crosstrace.tracing.budget import GROUP_SKIPPED
from crosstrace.tracing.plan import SKIP_MEASURED, TRACE_ALL, drop_plan
from crosstrace.tracing.serve import serve
from crosstrace.tracing.spans import INVALID_SPAN
from crosstrace.wsgi import RequestIdMiddleware as WsgiMiddleware
from tracing_support import Sink, sink_tracer

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
GLOBAL_ID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"


def untraced_tracer(sink: Sink, slow_s: float = 10.0, measured: str = "") -> Tracer:
    """A tracer whose budget leaves every request untraced; *measured*
    (``"with steps"`` or ``"without steps"``): each has its CPU time measured,
    instead of one in 32, the first timed with the untraced path's own steps
    or without them."""
    t = sink_tracer(sink, "api", slow_threshold_s=slow_s, overhead_budget=0.01)
    assert t.controller is not None
    t.controller.trace_fraction = 0.0
    t.controller.next_tick_ns = 1 << 62  # no window closes during the test
    t._apply_knobs()
    if measured:
        t.accounting.mask = 0
        t.costs._floor_turn = measured == "without steps"  # the turn before
    return t


class Seen:
    """What the application saw while it ran."""

    span: Any = None
    request_id: str | None = None
    global_id: str | None = None
    untraced = False

    def look(self) -> None:
        self.span = current_span()
        ctx = get_current()
        assert ctx is not None
        self.request_id, self.global_id = ctx.request_id, ctx.global_request_id
        self.untraced = ctx.untraced


def run_wsgi(tracer: Tracer, status: str = "200 OK", fail: bool = False, sleep: float = 0.0):
    seen = Seen()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.look()
        if sleep:
            time.sleep(sleep)
        if fail:
            raise RuntimeError("boom")
        start_response(status, [])
        return [b"ok"]

    mw = WsgiMiddleware(app, tracer=tracer)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/v2.1/servers/42",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "HTTP_TRACEPARENT": PARENT,
        "HTTP_X_OPENSTACK_REQUEST_ID": GLOBAL_ID,
    }
    responses: list[str] = []
    try:
        body = mw(environ, lambda s, h, e=None: responses.append(s))
        assert b"".join(body) == b"ok"
    except RuntimeError:
        assert fail
    return seen, responses


def run_asgi(tracer: Tracer, status: int = 200, fail: bool = False, sleep: float = 0.0):
    seen = Seen()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.look()
        if sleep:
            time.sleep(sleep)
        if fail:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = AsgiMiddleware(app, tracer=tracer)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v2.1/servers/42",
        "headers": [
            (b"traceparent", PARENT.encode()),
            (b"x-openstack-request-id", GLOBAL_ID.encode()),
        ],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        asyncio.run(mw(scope, receive, send))
    except RuntimeError:
        assert fail
    return seen, [m["status"] for m in sent if m["type"] == "http.response.start"]


SERVERS = {
    "wsgi": (run_wsgi, "500 Internal Server Error"),
    "asgi": (run_asgi, 500),
}


MEASURED = pytest.mark.parametrize(
    "measured", ["", "with steps", "without steps"], ids=["unmeasured", "with", "without"]
)


@MEASURED
@pytest.mark.parametrize("server", SERVERS)
def test_an_untraced_request_runs_as_with_tracing_off(server: str, measured: str) -> None:
    sink = Sink()
    t = untraced_tracer(sink, measured=measured)
    run, _ = SERVERS[server]
    seen, _ = run(t)
    # No span is current and the context says untraced: the app's spans take
    # the tracing-off path (and do not start roots).
    assert seen.span is INVALID_SPAN
    assert seen.untraced
    assert not seen.span.is_recording()
    assert seen.global_id == GLOBAL_ID  # the request ids are there as ever
    assert seen.request_id is not None
    assert seen.request_id.startswith("req-")
    assert sink.spans == []
    drop_plan(t)  # skips are counted when planned: uncount the ones not served
    assert t.accounting.bypassed == 1
    assert t.accounting.late == 0
    bare, steps = t.costs._floor_samples
    timed = {"": (0, 0), "with steps": (1, 0), "without steps": (0, 1)}[measured]
    assert (len(steps), len(bare)) == timed


@MEASURED
@pytest.mark.parametrize("server", SERVERS)
def test_an_untraced_request_that_fails_exports_its_server_span(server: str, measured: str) -> None:
    sink = Sink()
    t = untraced_tracer(sink, measured=measured)
    run, error_status = SERVERS[server]
    before = time.time_ns()
    run(t, error_status)
    (s,) = sink.spans
    assert s.kind == SpanKind.SERVER
    assert s.name == "GET /v2.1/servers/{id}"
    assert s.status_code == StatusCode.ERROR
    assert s.attributes["http.response.status_code"] == 500
    assert s.trace_id == int(PARENT[3:35], 16)  # continues the caller's trace
    assert s.parent_id == int(PARENT[36:52], 16)
    assert s.attributes["openstack.global_request_id"] == GLOBAL_ID
    assert before <= s.start_ns <= s.end_ns
    assert t.accounting.late == 1


@MEASURED
@pytest.mark.parametrize("server", SERVERS)
def test_an_untraced_request_that_raises_exports_the_exception(server: str, measured: str) -> None:
    sink = Sink()
    t = untraced_tracer(sink, measured=measured)
    run, _ = SERVERS[server]
    run(t, fail=True)
    (s,) = sink.spans
    assert s.status_code == StatusCode.ERROR
    (event,) = [e for e in s.events if e[0] == "exception"]
    assert event[2]["exception.type"] == "RuntimeError"


@MEASURED
@pytest.mark.parametrize("server", SERVERS)
def test_an_untraced_slow_request_exports_its_server_span(server: str, measured: str) -> None:
    sink = Sink()
    t = untraced_tracer(sink, slow_s=0.001, measured=measured)
    run, _ = SERVERS[server]
    run(t, sleep=0.002)  # slower than the threshold, whatever the machine
    (s,) = sink.spans
    assert s.status_code != StatusCode.ERROR
    assert s.attributes["http.response.status_code"] == 200
    assert s.end_ns - s.start_ns >= 1_000_000


@pytest.mark.parametrize("server", SERVERS)
def test_a_slow_request_of_the_control_group_exports_its_status(server: str) -> None:
    """A traced request the budget runs with tracing off (its control group)
    and that was slow exports its server span with the status it answered."""
    sink = Sink()
    t = sink_tracer(sink, "api", slow_threshold_s=0.001, overhead_budget=0.5, sample_ratio=0.0)
    assert t.controller is not None
    t.controller.next_tick_ns = 1 << 62  # no window closes during the test
    t.costs.control_every = 1  # every request not head-sampled is in the control group
    run, _ = SERVERS[server]
    seen, _ = run(t, "203 Non-Authoritative Information" if server == "wsgi" else 203, sleep=0.002)
    assert seen.untraced  # run with tracing off
    (s,) = sink.spans
    assert s.status_code != StatusCode.ERROR
    assert s.attributes["http.response.status_code"] == 203
    assert s.end_ns - s.start_ns >= 1_000_000


def test_skip_request_follows_the_traced_fraction_and_counts() -> None:
    t = sink_tracer(Sink(), "api", overhead_budget=0.01)
    assert t.controller is not None
    t.controller.trace_fraction = 0.0  # what a budget far too small comes to
    t.controller.next_tick_ns = 1 << 62  # no window closes during the test
    t._apply_knobs()
    assert t.trace_threshold == 0
    answers = [t.skip_request() for _ in range(128)]
    assert all(answers)
    assert t.accounting.bypassed == 128
    # One in 32 is measured (the budget's control group).
    assert [i for i, a in enumerate(answers, 1) if a == SKIP_MEASURED] == [32, 64, 96, 128]
    t.controller.trace_fraction = 0.5
    t._apply_knobs()
    assert t.trace_threshold == TRACE_ALL // 2
    before = t.accounting.bypassed
    skipped = sum(bool(t.skip_request()) for _ in range(4000))
    assert 1800 < skipped < 2200  # 2000 +- 6.3 standard deviations
    # Skips are counted when planned; dropping the plan uncounts those beyond
    # these 4000, so each skip is counted once.
    drop_plan(t)
    assert t.accounting.bypassed - before == skipped


@pytest.mark.parametrize("fraction", [0.02, 0.25, 0.9])
def test_the_planned_decisions_trace_the_fraction_asked(fraction: float) -> None:
    """Most requests pay a countdown, not a draw: the untraced requests before
    the next traced one are drawn at once. The traced share and the runs of
    untraced requests between traced ones are those of a draw per request."""
    t = sink_tracer(Sink(), "api", overhead_budget=0.01)
    assert t.controller is not None
    t.controller.trace_fraction = fraction
    t.controller.next_tick_ns = 1 << 62
    t._apply_knobs()
    # One traced phase throughout (no untraced phase to measure against).
    t.costs.phases.untraced, t.costs.phases.end = False, 1 << 62
    n = 40_000
    traced = [i for i in range(n) if not t.skip_request()]
    share = len(traced) / n
    assert abs(share - fraction) < 6 * (fraction * (1 - fraction) / n) ** 0.5
    # The runs between two traced requests: geometric, mean (1-p)/p, variance (1-p)/p^2.
    gaps = [b - a - 1 for a, b in itertools.pairwise(traced)]
    mean = sum(gaps) / len(gaps)
    expected = (1 - fraction) / fraction
    assert abs(mean - expected) < 6 * ((1 - fraction) / fraction**2 / len(gaps)) ** 0.5


def test_a_new_traced_fraction_applies_to_the_next_request() -> None:
    """A plan made under a tiny traced fraction must not outlive it: once the
    controller traces every request, the next one is traced."""
    t = untraced_tracer(Sink())
    assert t.skip_request() == 1  # and the skips up to the next measured one planned
    assert t.skips_left > 0
    assert t.accounting.bypassed == t.skips_left + 2  # counted when planned
    t.controller.trace_fraction = 1.0  # type: ignore[union-attr]
    t._apply_knobs()
    assert t.skips_left == 0
    assert t.accounting.bypassed == 1  # the planned ones uncounted
    assert t.trace_threshold == TRACE_ALL
    assert t.skip_request() == 0


def test_skipped_requests_let_the_controller_close_its_window() -> None:
    """When (almost) every request is skipped no trace starts, so the skips
    themselves must let the controller tick."""
    t = sink_tracer(Sink(), "api", overhead_budget=0.01)
    ctl = t.controller
    assert ctl is not None
    t.trace_threshold = 0
    ctl.next_tick_ns = 0  # the window is over
    for _ in range(64):
        t.skip_request()
    assert ctl.next_tick_ns > 0  # one of them closed it


@pytest.mark.parametrize("server", SERVERS)
def test_untraced_requests_are_measured_as_the_control_group(server: str) -> None:
    """One untraced request in 32 has its CPU time measured (tracing off, as
    far as the application can tell: the budget's control group)."""
    t = untraced_tracer(Sink())
    run, _ = SERVERS[server]
    for _ in range(64):
        run(t)
    bare, steps = t.costs._floor_samples
    assert (len(bare), len(steps)) == (1, 1)
    assert t.costs._n[GROUP_SKIPPED] == 1
    # The whole request (less the two clock reads inside it, priced), which
    # holds what ran around the application.
    assert steps[0] > 0
    reads = int(2 * t.costs.clock_ns)
    assert t.costs._sum[GROUP_SKIPPED] + reads >= steps[0]


@pytest.mark.parametrize("server", SERVERS)
def test_measured_untraced_requests_are_timed_with_and_without_the_untraced_path(
    server: str,
) -> None:
    """In turn: what runs around the application with the untraced path's
    own steps (the request also one of the skipped group) and without them,
    so that the budget prices that path in place."""
    t = untraced_tracer(Sink(), measured="with steps")
    run, _ = SERVERS[server]
    for _ in range(6):
        run(t)
    bare, steps = t.costs._floor_samples
    assert (len(bare), len(steps)) == (3, 3)
    assert min(bare) > 0  # two clock reads' gaps, with nothing between
    assert t.costs._n[GROUP_SKIPPED] == 3
    reads = 3 * int(2 * t.costs.clock_ns)  # inside each whole request, priced
    assert t.costs._sum[GROUP_SKIPPED] + reads >= sum(steps)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("measured", ["with steps", "without steps"])
def test_a_measured_untraced_request_is_timed_around_the_application_and_whole(
    server: str, measured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four reads of the thread's CPU clock: the first two bound what runs
    before the application, the last two what runs after it (their sum is
    the sample of the untraced path's price); the first and the last bound
    the whole request, which joins the skipped group (timed with the steps)
    less its two inner reads at their price."""
    t = untraced_tracer(Sink(), measured=measured)
    t.costs.clock_ns = 40.0
    readings = iter([1_000, 1_100, 11_100, 11_300])  # the application: 10 us
    module = "crosstrace.wsgi" if server == "wsgi" else "crosstrace.asgi"
    monkeypatch.setattr(f"{module}.thread_time_ns", lambda: next(readings))
    run, _ = SERVERS[server]
    run(t)
    bare, steps = t.costs._floor_samples
    if measured == "with steps":
        assert (list(steps), list(bare)) == ([300], [])
        assert t.costs._n[GROUP_SKIPPED] == 1
        assert t.costs._sum[GROUP_SKIPPED] == 11_300 - 1_000 - 2 * 40
    else:
        assert (list(steps), list(bare)) == ([], [300])
        assert t.costs._n[GROUP_SKIPPED] == 0


def test_a_configured_tracer_does_not_root_the_spans_of_an_untraced_request() -> None:
    """With tracing configured, a span opened with nothing current starts a
    trace; under an untraced request it must not."""
    sink = Sink()
    t = untraced_tracer(sink)
    t.controller.next_tick_ns = 1 << 62  # type: ignore[union-attr]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with t.span("db.query"):
            pass
        start_response("200 OK", [])
        return [b"ok"]

    mw = WsgiMiddleware(app, tracer=t)
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "t", "SERVER_PORT": "80"}
    assert b"".join(mw(env, lambda s, h, e=None: None)) == b"ok"
    with t.span("outside a request"):
        pass
    assert [s.name for s in sink.spans] == ["outside a request"]


def test_a_consumer_served_over_a_small_budget_runs_untraced_and_exports_its_failure() -> None:
    """Message consumers (kombu, oslo.messaging) go through ``serve()``, which
    asks the budget itself: an untraced message's failure is still exported."""
    sink = Sink()
    t = untraced_tracer(sink)
    ctx = RequestContext()
    with serve(ctx, t, "process compute", SpanKind.CONSUMER, {"messaging.system": "rabbitmq"}):
        assert current_span() is INVALID_SPAN
        assert ctx.untraced
    assert sink.spans == []
    with (
        pytest.raises(RuntimeError),
        serve(ctx, t, "process compute", SpanKind.CONSUMER, {"messaging.system": "rabbitmq"}),
    ):
        raise RuntimeError("boom")
    (s,) = sink.spans
    assert s.name == "process compute"
    assert s.kind == SpanKind.CONSUMER
    assert s.status_code == StatusCode.ERROR
    assert s.attributes["messaging.system"] == "rabbitmq"
    drop_plan(t)
    assert t.accounting.bypassed == 2


def test_a_streamed_body_of_an_untraced_request_opens_no_trace() -> None:
    """The untraced mark travels with the request context: spans the body
    opens while the server iterates it (after the middleware returned) do
    nothing either."""
    sink = Sink()
    t = untraced_tracer(sink)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Any:
            with t.span("render"):
                yield b"o"
            yield b"k"

        return body()

    mw = WsgiMiddleware(app, tracer=t)
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "t", "SERVER_PORT": "80"}
    assert b"".join(mw(env, lambda s, h, e=None: None)) == b"ok"
    assert sink.spans == []
    assert get_current() is None


@pytest.mark.parametrize("server", SERVERS)
def test_an_untraced_request_nested_in_a_traced_one_does_not_join_its_trace(server: str) -> None:
    """An entry point called inside another request's span (an in-process
    call) and left untraced: its spans neither join the outer trace nor start
    their own, and the outer span is current again afterwards."""
    sink = Sink()
    t = untraced_tracer(sink)
    run, _ = SERVERS[server]
    outer_tracer = sink_tracer(sink, "outer")
    with outer_tracer.span("outer") as outer:
        seen, _ = run(t)
        assert current_span() is outer
    assert seen.span is INVALID_SPAN
    assert [s.name for s in sink.spans] == ["outer"]
