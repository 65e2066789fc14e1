"""A traced WSGI request: crosstrace's middleware vs the OpenTelemetry SDK, in one run.

Run from the repository root (needs the ``bench`` extra)::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_wsgi_tracing.py

Each request goes through the WSGI middleware and the application opens five
child spans with three attributes each (six spans per request). Cases,
measured interleaved in one process (medians of ``--repeats`` runs of
``--number`` requests; a fresh environ per request, also for the bare app):

* ``bare``: the application alone (its five ``with`` blocks do nothing);
* ``crosstrace off``: ``crosstrace.wsgi.RequestIdMiddleware`` with tracing
  unconfigured (request ids only; the child spans are no-ops);
* ``crosstrace recorded``: the same middleware with a tracer, ratio 1: every
  span recorded and handed to a ``BatchExporter`` whose transport discards;
* ``crosstrace recorded, dropped``: ratio 0, record fraction 1: every span
  recorded, the segment dropped at the end by the tail rule (no error, not slow);
* ``crosstrace unrecorded``: ratio 0, record fraction 0;
* ``OTel SDK``: ``opentelemetry.instrumentation.wsgi.OpenTelemetryMiddleware``
  with an ``ALWAYS_ON`` ``TracerProvider`` and a ``BatchSpanProcessor`` whose
  exporter discards; the children are ``start_as_current_span`` blocks.

Reported: time per request, the added cost over the bare app, and the ratio of
each crosstrace case's added cost to the SDK's.
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
from wsgiref.util import setup_testing_defaults

import crosstrace
from crosstrace.export import BatchExporter, Transport
from crosstrace.tracing import Tracer
from crosstrace.tracing import tracer as tr
from crosstrace.wsgi import RequestIdMiddleware

ATTRS = {"db.system": "sqlite", "rows": 3, "cached": False}
CHILDREN = 5
QUEUE = 1 << 20


class DiscardTransport(Transport):
    def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
        return b""

    def send(self, signal: str, payload: bytes) -> None:
        return None


def base_environ() -> dict[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": "/v2.1/servers/3f2a5a6e-7d0b-4c1e-9c4e-5f0f1d2c3b4a"}
    setup_testing_defaults(env)
    env["HTTP_X_OPENSTACK_REQUEST_ID"] = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
    env["HTTP_TRACEPARENT"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    return env


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def make_apps() -> dict[str, Callable[[dict[str, Any], Any], Any]]:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=QUEUE))
    otel = provider.get_tracer("bench")

    def bare(environ: dict[str, Any], sr: Any) -> list[bytes]:
        for _ in range(CHILDREN):
            pass
        sr("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    def ct_app(environ: dict[str, Any], sr: Any) -> list[bytes]:
        span = crosstrace.span
        for _ in range(CHILDREN):
            with span("db.query", attributes=ATTRS):
                pass
        sr("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    def otel_app(environ: dict[str, Any], sr: Any) -> list[bytes]:
        for _ in range(CHILDREN):
            with otel.start_as_current_span("db.query", attributes=ATTRS):
                pass
        sr("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    exporter = BatchExporter(DiscardTransport(), queue_size=QUEUE, batch_size=512)
    recorded = Tracer("bench", sink=exporter, sample_ratio=1.0, overhead_budget=0.0)
    dropped = Tracer("bench", sink=exporter, sample_ratio=0.0, overhead_budget=0.0)
    dropped.update(slow_threshold_s=0.0)
    unrecorded = Tracer("bench", sink=exporter, sample_ratio=0.0, overhead_budget=0.0)
    unrecorded.record_threshold = 0
    make_apps.exporter = exporter  # type: ignore[attr-defined]
    make_apps.provider = provider  # type: ignore[attr-defined]
    return {
        "bare": bare,
        "crosstrace off": RequestIdMiddleware(ct_app),
        "crosstrace recorded": RequestIdMiddleware(ct_app, tracer=recorded),
        "crosstrace recorded, dropped": RequestIdMiddleware(ct_app, tracer=dropped),
        "crosstrace unrecorded": RequestIdMiddleware(ct_app, tracer=unrecorded),
        "OTel SDK": OpenTelemetryMiddleware(otel_app, tracer_provider=provider),
    }


def run(app: Callable[[dict[str, Any], Any], Any], n: int, env: dict[str, Any]) -> float:
    """Microseconds per request."""
    copy = env.copy
    t0 = time.perf_counter_ns()
    for _ in range(n):
        body = app(copy(), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter_ns() - t0) / n / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000, help="requests per repeat")
    parser.add_argument("--repeats", type=int, default=9, help="repeats (median taken)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args()
    tr._set_tracer(None)
    apps = make_apps()
    env = base_environ()
    for app in apps.values():  # warm up
        run(app, 500, env)
    times: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.repeats):
        for name, app in apps.items():
            times[name].append(run(app, args.number, env))
            exporter: BatchExporter = make_apps.exporter  # type: ignore[attr-defined]
            exporter.force_flush(30)
    med = {name: statistics.median(v) for name, v in times.items()}
    bare = med["bare"]
    sdk_added = med["OTel SDK"] - bare
    rows = []
    for name, value in med.items():
        added = value - bare
        rows.append(
            {
                "case": name,
                "per_request_us": round(value, 2),
                "added_us": round(added, 2),
                "added_vs_sdk": round(added / sdk_added, 3) if name != "bare" else None,
            }
        )
    stats = make_apps.exporter.stats()  # type: ignore[attr-defined]
    result = {
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
        "load_average": os.getloadavg(),
        "number": args.number,
        "repeats": args.repeats,
        "rows": rows,
        "crosstrace_spans_dropped": stats["spans_dropped"],
    }
    make_apps.provider.shutdown()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Python {result['python']} on {result['machine']}, {result['date']}")
    print(f"load average {result['load_average']}")
    print(f"{args.repeats} repeats x {args.number} requests, 1 server span + {CHILDREN} children")
    print(f"crosstrace spans dropped by the exporter: {result['crosstrace_spans_dropped']}\n")
    print("| case | per request | added over bare | added / SDK's added |")
    print("|---|---:|---:|---:|")
    for row in rows:
        ratio = "" if row["added_vs_sdk"] is None else f"{row['added_vs_sdk']:.3f}"
        print(
            f"| {row['case']} | {row['per_request_us']:.2f} us | {row['added_us']:.2f} us "
            f"| {ratio} |"
        )


if __name__ == "__main__":
    main()
