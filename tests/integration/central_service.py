"""A service for the central-sampling test, run as a process of its own:
``python central_service.py NAME URL POLL_S``.

The WSGI middleware in front of an application of ten spans, a tracer that
exports to ``crosstrace serve`` at URL over OTLP/HTTP and polls its central
settings every POLL_S seconds, and a loop serving requests until stdin closes.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import crosstrace
from crosstrace.central import SamplingPoller
from crosstrace.export import BatchExporter, OtlpHttpTransport
from crosstrace.tracing import Tracer
from crosstrace.wsgi import RequestIdMiddleware


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    for _ in range(9):
        with crosstrace.span("work", attributes={"a": 1, "b": "x", "c": True}):
            sum(range(200))
    start_response("200 OK", [])
    return [b"ok"]


def main() -> None:
    name, url, poll_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    exporter = BatchExporter(OtlpHttpTransport(url), max_delay_s=0.2)
    tracer = Tracer(name, exporter, sample_ratio=1.0, overhead_budget=0.5)
    poller = SamplingPoller(url, tracer, poll_s, dropped=lambda: exporter.spans_dropped)
    served = RequestIdMiddleware(app, tracer=tracer)
    stop = threading.Event()
    # Stop when the test closes stdin (or goes away).
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    poller.start()
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "SERVER_NAME": "t", "SERVER_PORT": "80"}
    while not stop.is_set():
        for _ in served(dict(env), lambda *a: None):
            pass
    poller.stop()
    exporter.shutdown(5)


if __name__ == "__main__":
    main()
