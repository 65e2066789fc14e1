"""Root spans of untraced requests, built on the export thread.

A request the overhead budget left untraced that fails or is slow still
exports its server span, built after the fact. With a :class:`BatchExporter`
as the sink, the request thread only reads what the span is made of; the
span is built and queued on the export thread (``export_later``). What must
hold: the span that arrives is the same as one built in place (the request's
name, status, trace and ids, read while the request was still running, not
later), it is built on the export thread, a flush or a shutdown still
exports it, a full queue drops it counted, and a sink without
``export_later`` gets it built in place.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from crosstrace.export import BatchExporter
from crosstrace.export.transports import SIGNAL_TRACES, Transport
from crosstrace.tracing import SpanKind, StatusCode, Tracer
from crosstrace.wsgi import RequestIdMiddleware
from tracing_support import Sink

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
GLOBAL_ID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"


class Keep(Transport):
    """Keeps the spans of every batch, and the thread that encoded them."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.threads: set[int] = set()

    def encode(self, signal: str, items: Sequence[Any], resource: Mapping[str, Any]) -> bytes:
        if signal == SIGNAL_TRACES:
            self.spans.extend(items)
            self.threads.add(threading.get_ident())
        return b""

    def send(self, signal: str, payload: bytes) -> None:
        pass


class Watched(BatchExporter):
    """A BatchExporter that notes which threads queued spans."""

    def __init__(self, transport: Transport, **kwargs: Any) -> None:
        self.queued_from: set[int] = set()
        super().__init__(transport, **kwargs)

    def export_spans(self, spans: Sequence[Any]) -> None:
        self.queued_from.add(threading.get_ident())
        super().export_spans(spans)


def untraced(sink: Any) -> Tracer:
    """A tracer whose budget leaves every request untraced."""
    t = Tracer("api", sink=sink, overhead_budget=0.01, slow_threshold_s=10.0)
    assert t.controller is not None
    t.controller.trace_fraction = 0.0
    t.controller.next_tick_ns = 1 << 62  # no window closes during the test
    t._apply_knobs()
    return t


def failing_request(tracer: Tracer) -> dict[str, Any]:
    """One request answered 500 through the WSGI middleware; its environ."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [])
        return [b"no"]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/v2.1/servers/42",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "HTTP_TRACEPARENT": PARENT,
        "HTTP_X_OPENSTACK_REQUEST_ID": GLOBAL_ID,
    }
    body = RequestIdMiddleware(app, tracer=tracer)(environ, lambda s, h, e=None: None)
    assert b"".join(body) == b"no"
    return environ


def test_the_failure_of_an_untraced_request_is_built_on_the_export_thread() -> None:
    keep = Keep()
    exporter = Watched(keep, max_delay_s=30.0)  # nothing leaves before the flush
    try:
        t = untraced(exporter)
        environ = failing_request(t)
        # Read while the request ran: what a server does with the environ
        # afterwards does not reach the span.
        environ["PATH_INFO"] = "/changed"
        environ["HTTP_TRACEPARENT"] = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        assert keep.spans == []
        assert exporter.queue_length() == 1
        assert exporter.force_flush(5.0)
        (s,) = keep.spans
        assert s.kind == SpanKind.SERVER
        assert s.name == "GET /v2.1/servers/{id}"
        assert s.status_code == StatusCode.ERROR
        assert s.attributes["http.response.status_code"] == 500
        assert s.attributes["openstack.global_request_id"] == GLOBAL_ID
        assert s.attributes["openstack.request_id"] == environ["openstack.request_id"]
        assert (s.trace_id, s.parent_id) == (int(PARENT[3:35], 16), int(PARENT[36:52], 16))
        assert s.start_ns <= s.end_ns
        assert exporter.queued_from == {exporter._thread.ident}
        assert threading.get_ident() not in exporter.queued_from
        assert t.accounting.late == 1
        assert exporter.stats()["spans_exported"] == 1
    finally:
        exporter.shutdown(2.0)


def test_a_shutdown_builds_and_exports_what_was_handed_over() -> None:
    keep = Keep()
    exporter = BatchExporter(keep, max_delay_s=30.0)
    t = untraced(exporter)
    for _ in range(3):
        failing_request(t)
    assert exporter.shutdown(5.0)
    assert len(keep.spans) == 3
    st = exporter.stats()
    assert (st["spans_exported"], st["spans_dropped"], st["queue_length"]) == (3, 0, 0)


def test_a_full_queue_drops_what_is_handed_over_and_counts_it() -> None:
    keep = Keep()
    exporter = BatchExporter(keep, queue_size=2, max_delay_s=30.0)
    try:
        built: list[int] = []
        for i in range(5):
            exporter.export_later(lambda i=i: built.append(i))
        assert exporter.stats()["spans_dropped"] == 3
        assert exporter.force_flush(5.0)
        assert built == [0, 1]
    finally:
        exporter.shutdown(2.0)


def test_a_failing_build_does_not_stop_the_others() -> None:
    keep = Keep()
    exporter = BatchExporter(keep, max_delay_s=30.0)
    try:
        built: list[str] = []

        def broken() -> None:
            raise RuntimeError("boom")

        exporter.export_later(broken)
        exporter.export_later(lambda: built.append("next"))
        assert exporter.force_flush(5.0)
        assert built == ["next"]
        assert exporter._thread.is_alive()
    finally:
        exporter.shutdown(2.0)


def test_after_a_shutdown_nothing_more_is_handed_over() -> None:
    exporter = BatchExporter(Keep(), max_delay_s=30.0)
    exporter.shutdown(2.0)
    built: list[int] = []
    exporter.export_later(lambda: built.append(1))
    assert built == []
    assert exporter.stats()["spans_dropped"] == 1


def test_a_sink_without_export_later_gets_the_span_built_in_place() -> None:
    sink = Sink()
    t = untraced(sink)
    failing_request(t)
    (s,) = sink.spans  # there already: no export thread to wait for
    assert s.status_code == StatusCode.ERROR
    assert t.accounting.late == 1
