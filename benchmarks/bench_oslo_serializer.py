"""CPU that crosstrace's oslo.messaging serializer adds to one RPC round trip.

Run from the repository root::

    .venv/bin/python benchmarks/bench_oslo_serializer.py            # markdown table
    .venv/bin/python benchmarks/bench_oslo_serializer.py --json     # machine-readable

One round trip here is what the serializer does around an RPC ``call``: the
client's ``serialize_context`` of an oslo.context ``RequestContext`` and the
server's ``deserialize_context`` of the dict that arrived (after a JSON
encode/decode, as the driver does, which both variants pay). Measured side by
side in one process, in CPU time (``time.process_time_ns``):

* nova's serializer shape alone (``ProfilerRequestContextSerializer`` around
  ``RequestContextSerializer``: ``to_dict``/``from_dict``), the baseline;
* the same inside :func:`crosstrace.integrations.oslo_messaging.wrap`, with a
  request context current, (a) without a current span and (b) inside a
  recorded span (``traceparent`` written and read).

The figure is the median over ``--repeats`` runs of ``--number`` round trips,
minus the baseline's median: what crosstrace adds per round trip (target
≤ 15 µs). Server spans are the tracer's cost, measured by ``bench_tracer.py``.
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
from collections.abc import Callable
from typing import Any

import oslo_messaging
from oslo_context import context as oslo_context

from crosstrace.context import RequestContext, use_context
from crosstrace.integrations import oslo_messaging as ct_messaging
from crosstrace.integrations.oslo_context import to_oslo
from crosstrace.spans import SpanKind
from crosstrace.tracer import Tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
TARGET_US = 15.0


class RequestContextSerializer(oslo_messaging.Serializer):  # type: ignore[misc]
    """nova/rpc.py's shape."""

    def __init__(self, base: Any) -> None:
        self._base = base

    def serialize_entity(self, context: Any, entity: Any) -> Any:
        return self._base.serialize_entity(context, entity) if self._base else entity

    def deserialize_entity(self, context: Any, entity: Any) -> Any:
        return self._base.deserialize_entity(context, entity) if self._base else entity

    def serialize_context(self, context: Any) -> dict[str, Any]:
        return dict(context.to_dict())

    def deserialize_context(self, context: dict[str, Any]) -> Any:
        return oslo_context.RequestContext.from_dict(context)


class ProfilerRequestContextSerializer(RequestContextSerializer):
    """nova's OSProfiler wrapper (profiling off: no trace_info)."""


class NullSink:
    def export_spans(self, spans: Any) -> None:
        pass

    def export_log(self, record: Any) -> None:
        pass

    def cpu_ns(self) -> int:
        return 0


def round_trip(serializer: Any, ctxt: Any) -> Callable[[], None]:
    dumps, loads = json.dumps, json.loads

    def run() -> None:
        sent = serializer.serialize_context(ctxt)
        serializer.deserialize_context(loads(dumps(sent)))

    return run


def measure(fn: Callable[[], None], number: int, repeats: int) -> float:
    """Median CPU µs per call over *repeats* runs of *number* calls."""
    samples = []
    for _ in range(repeats):
        start = time.process_time_ns()
        for _ in range(number):
            fn()
        samples.append((time.process_time_ns() - start) / number / 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    request = RequestContext(global_request_id=GID, user_id="u1", project_id="p1")
    base = ProfilerRequestContextSerializer(oslo_messaging.JsonPayloadSerializer())
    wrapped = ct_messaging.wrap(base)  # the same base object, inside crosstrace's
    tracer = Tracer("nova-api", sink=NullSink(), overhead_budget=0.0)
    results: dict[str, float] = {}
    with use_context(request):
        ctxt = to_oslo(overwrite=False)
        # Interleaved so that load changes hit every variant alike.
        base_runs, plain_runs, span_runs = [], [], []
        for _ in range(args.repeats):
            base_runs.append(measure(round_trip(base, ctxt), args.number, 1))
            plain_runs.append(measure(round_trip(wrapped, ctxt), args.number, 1))
            with tracer.span("POST /servers", SpanKind.SERVER):
                span_runs.append(measure(round_trip(wrapped, ctxt), args.number, 1))
    results["nova serializer alone (baseline), µs/round trip"] = statistics.median(base_runs)
    results["wrapped, request context, no span"] = statistics.median(plain_runs)
    results["wrapped, request context, recorded span"] = statistics.median(span_runs)
    added_plain = (
        results["wrapped, request context, no span"]
        - results["nova serializer alone (baseline), µs/round trip"]
    )
    added_span = (
        results["wrapped, request context, recorded span"]
        - results["nova serializer alone (baseline), µs/round trip"]
    )
    results["added by crosstrace, no span"] = added_plain
    results["added by crosstrace, recorded span"] = added_span
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "number": args.number,
        "repeats": args.repeats,
        "target_us": TARGET_US,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
    else:
        print(
            f"oslo.messaging serializer, CPU per round trip ({meta['date']}, "
            f"{meta['machine']}, load {meta['load_average_1m']})"
        )
        print()
        print("| variant | µs |")
        print("|---|---|")
        for name, value in results.items():
            print(f"| {name} | {value:.2f} |")
        verdict = "met" if max(added_plain, added_span) <= TARGET_US else "NOT met"
        print(f"\ntarget ≤ {TARGET_US:g} µs added per round trip: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
