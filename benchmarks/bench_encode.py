"""What encoding a batch of spans costs the export thread, per span, against the peers.

Run from the repository root (needs the ``bench`` extra)::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_encode.py
    .venv/bin/python benchmarks/bench_encode.py --rounds 5 --cpu 1

A batch of 512 spans (traces of a SERVER span and 19 children, every span
with the 3 attributes of ``benchmarks/bench_budget.py``'s service, the
server spans with the HTTP middleware's) is recorded with crosstrace and,
with the same shape, with the OpenTelemetry SDK. Each is then encoded the
way its exporter sends it, in alternation, on one core:

- OTLP protobuf: crosstrace's direct encoding (``crosstrace.export.wire``,
  what ``OtlpHttpTransport`` and ``AmqpTransport`` send) against building
  ``opentelemetry-proto`` messages and serializing them (what crosstrace
  did before; :func:`crosstrace.otlp.spans_to_request`), and against the
  OpenTelemetry SDK's OTLP exporter encoder
  (``opentelemetry.exporter.otlp.proto.common``), the peer;
- OTLP/JSON lines (``FileTransport``): the direct encoding against
  ``json.dumps`` of :func:`crosstrace.otlp.spans_to_json`.

Printed: the thread CPU time per span, median over the rounds (each round
encodes the batch ``--repeat`` times, the first time not counted), and the
ratios against the peers in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from crosstrace import otlp
from crosstrace.export import wire
from crosstrace.tracing import SpanKind, Tracer, span
from crosstrace.tracing import tracer as tr

BATCH = 512
SPANS_PER_TRACE = 20
ATTRS = {"db.system": "sqlite", "db.rows": 3, "cached": False}
SERVER_ATTRS = {
    "http.request.method": "GET",
    "url.path": "/v2.1/servers/{}",
    "openstack.request_id": "req-{}",
    "openstack.global_request_id": "req-3f1e2d4c-5b6a-4789-8abc-def012345678",
    "http.response.status_code": 200,
}


class Collect:
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def export_spans(self, spans: Sequence[Any]) -> None:
        self.spans.extend(spans)

    def cpu_ns(self) -> int:
        return 0


def _server_attrs(i: int) -> dict[str, Any]:
    return {k: v.format(i) if isinstance(v, str) else v for k, v in SERVER_ATTRS.items()}


def crosstrace_spans() -> list[Any]:
    sink = Collect()
    previous = tr.get_tracer()
    tr._set_tracer(Tracer("bench-encode", sink=sink, sample_ratio=1.0))
    try:
        i = 0
        while len(sink.spans) < BATCH:
            with span("GET /v2.1/servers/{id}", kind=SpanKind.SERVER, attributes=_server_attrs(i)):
                for _ in range(SPANS_PER_TRACE - 1):
                    with span("db.query", attributes=ATTRS):
                        pass
            i += 1
    finally:
        tr._set_tracer(previous)
    return sink.spans[:BATCH]


def sdk_spans() -> list[Any] | None:
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
        from opentelemetry.trace import SpanKind as OtelKind
    except ImportError:
        return None
    out: list[Any] = []

    class Keep(SpanExporter):
        def export(self, spans: Sequence[Any]) -> Any:
            out.extend(spans)

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    t = provider.get_tracer("bench-encode")
    i = 0
    while len(out) < BATCH:
        with t.start_as_current_span(
            "GET /v2.1/servers/{id}", kind=OtelKind.SERVER, attributes=_server_attrs(i)
        ):
            for _ in range(SPANS_PER_TRACE - 1):
                with t.start_as_current_span("db.query", attributes=ATTRS):
                    pass
        i += 1
    provider.shutdown()
    return out[:BATCH]


def sdk_encoder() -> Callable[[Sequence[Any]], bytes] | None:
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    except ImportError:
        return None

    def encode(spans: Sequence[Any]) -> bytes:
        return encode_spans(spans).SerializeToString()  # type: ignore[no-any-return]

    return encode


def _json_by_library(spans: Sequence[Any]) -> bytes:
    doc = otlp.spans_to_json(spans)
    return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _protobuf_by_library(spans: Sequence[Any]) -> bytes:
    return otlp.spans_to_request(spans).SerializeToString()  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--repeat", type=int, default=10, help="batches encoded per round")
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    args = p.parse_args(argv)
    cpu = args.cpu if args.cpu is not None else (os.cpu_count() or 1) - 1
    os.sched_setaffinity(0, {cpu})
    ours, theirs = crosstrace_spans(), sdk_spans()
    peer = sdk_encoder()
    cases: list[tuple[str, Callable[[Sequence[Any]], bytes], list[Any]]] = [
        ("protobuf, direct (crosstrace.export.wire)", wire.spans_to_protobuf, ours),
        ("protobuf, opentelemetry-proto messages", _protobuf_by_library, ours),
        ("JSON line, direct (crosstrace.export.wire)", wire.spans_to_json_line, ours),
        ("JSON line, json.dumps of OTLP/JSON objects", _json_by_library, ours),
    ]
    if peer is not None and theirs is not None:
        cases.append(("protobuf, OpenTelemetry SDK's OTLP exporter encoder", peer, theirs))
    assert wire.spans_to_protobuf(ours) == _protobuf_by_library(ours)
    assert wire.spans_to_json_line(ours) == _json_by_library(ours)
    per_span: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    sizes = {name: len(encode(spans)) / len(spans) for name, encode, spans in cases}
    for r in range(args.rounds):
        order = cases if r % 2 == 0 else list(reversed(cases))
        for name, encode, spans in order:
            encode(spans)
            t0 = time.thread_time_ns()
            for _ in range(args.repeat):
                encode(spans)
            per_span[name].append((time.thread_time_ns() - t0) / (args.repeat * len(spans)))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    print(
        f"# bench_encode  {now}  python {platform.python_version()}  pinned to cpu {cpu}  "
        f"load {load:.1f}  batch {BATCH} spans, {args.rounds} rounds x {args.repeat}"
    )
    print("| encoding | CPU per span, median (range) µs | bytes per span |")
    print("|---|---|---|")
    medians = {}
    for name, values in per_span.items():
        medians[name] = statistics.median(values)
        lo, hi = min(values) / 1e3, max(values) / 1e3
        print(f"| {name} | {medians[name] / 1e3:.2f} ({lo:.2f}-{hi:.2f}) | {sizes[name]:.0f} |")
    names = list(per_span)
    print()
    ratio = medians[names[0]] / medians[names[1]]
    print(f"direct protobuf / opentelemetry-proto messages: {ratio:.3f}")
    print(f"direct JSON / json.dumps: {medians[names[2]] / medians[names[3]]:.3f}")
    if len(names) > 4:
        print(
            f"direct protobuf / the OTel SDK's encoder: {medians[names[0]] / medians[names[4]]:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
