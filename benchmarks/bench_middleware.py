"""Per-request cost of the request-id middleware, and per-record cost of the log filter.

Run from the repository root::

    .venv/bin/python benchmarks/bench_middleware.py            # markdown table
    .venv/bin/python benchmarks/bench_middleware.py --json     # machine-readable

Measured in one process, side by side:

* a bare WSGI app (the baseline),
* ``crosstrace.wsgi.RequestIdMiddleware`` around it,
* ``oslo_middleware.RequestId`` around it (the peer it replaces),

each with and without a valid inbound ``X-OpenStack-Request-ID``. The figure is
the median over ``--repeats`` runs of ``--number`` calls, minus the bare app's
median (what the middleware adds per request). Then ``ContextFilter.filter`` per
log record, with a request context current and without one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Any

from oslo_middleware import RequestId as OsloRequestId

from crosstrace.context import RequestContext, use_context
from crosstrace.logging import ContextFilter
from crosstrace.wsgi import RequestIdMiddleware

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"

BASE_ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/v2.1/servers",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8774",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "127.0.0.1:8774",
    "HTTP_ACCEPT": "application/json",
    "wsgi.url_scheme": "http",
    "wsgi.version": (1, 0),
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def bare_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def median_us(fn: Callable[[], object], number: int, repeats: int) -> float:
    """Median over *repeats* of the mean time per call, in microseconds."""
    runs = timeit.repeat(fn, number=number, repeat=repeats)
    return statistics.median(runs) / number * 1e6


def wsgi_case(app: Any, environ: dict[str, Any]) -> Callable[[], object]:
    def call() -> object:
        body = app(dict(environ), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return body

    return call


def bench_middleware(number: int, repeats: int) -> list[dict[str, Any]]:
    apps = {
        "bare": bare_app,
        "crosstrace": RequestIdMiddleware(bare_app),
        "oslo.middleware": OsloRequestId(bare_app),
    }
    with_header = dict(BASE_ENVIRON, HTTP_X_OPENSTACK_REQUEST_ID=GID)
    rows = []
    for case, environ in (("no inbound id", BASE_ENVIRON), ("valid inbound id", with_header)):
        # Interleave the three so that drift on a shared machine hits them alike.
        samples: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(repeats):
            for name, app in apps.items():
                samples[name].append(median_us(wsgi_case(app, environ), number, 1))
        medians = {name: statistics.median(values) for name, values in samples.items()}
        bare = medians["bare"]
        ours = medians["crosstrace"] - bare
        peer = medians["oslo.middleware"] - bare
        rows.append(
            {
                "case": case,
                "bare_us": round(bare, 3),
                "crosstrace_us": round(ours, 3),
                "oslo_middleware_us": round(peer, 3),
                "ratio_crosstrace_to_oslo": round(ours / peer, 3),
            }
        )
    return rows


def bench_filter(number: int, repeats: int) -> list[dict[str, Any]]:
    flt = ContextFilter()

    def one() -> None:
        record = logging.LogRecord("nova.api", logging.INFO, __file__, 1, "msg", None, None)
        flt.filter(record)

    def bare() -> None:
        logging.LogRecord("nova.api", logging.INFO, __file__, 1, "msg", None, None)

    ctx = RequestContext(global_request_id=GID, user_id="u", project_id="p")
    rows = []
    for case, current in (("no request context", None), ("request context current", ctx)):
        with use_context(current):
            samples_f, samples_b = [], []
            for _ in range(repeats):
                samples_b.append(median_us(bare, number, 1))
                samples_f.append(median_us(one, number, 1))
        record_us = statistics.median(samples_b)
        rows.append(
            {
                "case": case,
                "record_creation_us": round(record_us, 3),
                "filter_us": round(statistics.median(samples_f) - record_us, 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=9, help="repeats (median taken)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args()

    result = {
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
        "number": args.number,
        "repeats": args.repeats,
        "middleware": bench_middleware(args.number, args.repeats),
        "context_filter": bench_filter(args.number, args.repeats),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Python {result['python']} on {result['machine']}, {result['date']}")
    print(f"{args.repeats} repeats x {args.number} calls, medians\n")
    print("| case | bare app | + crosstrace | + oslo.middleware | crosstrace / oslo |")
    print("|---|---:|---:|---:|---:|")
    for row in result["middleware"]:
        print(
            f"| {row['case']} | {row['bare_us']:.2f} us | {row['crosstrace_us']:.2f} us "
            f"| {row['oslo_middleware_us']:.2f} us | {row['ratio_crosstrace_to_oslo']:.3f} |"
        )
    print("\n| log record | LogRecord creation | + ContextFilter.filter |")
    print("|---|---:|---:|")
    for row in result["context_filter"]:
        print(f"| {row['case']} | {row['record_creation_us']:.2f} us | {row['filter_us']:.2f} us |")


if __name__ == "__main__":
    main()
