"""Request latency when the OTLP endpoint hangs or refuses, against tracing off.

Run from the repository root::

    .venv/bin/python benchmarks/bench_exporter_down.py               # 3 rounds x 8 s
    .venv/bin/python benchmarks/bench_exporter_down.py --seconds 3   # quicker

Each phase runs in a fresh child process (so its memory figures are its own):
``--threads`` request threads call a WSGI service (crosstrace's middleware, an
application doing ~0.2 ms of CPU work and opening five child spans) at a steady
``--rate`` requests per second in total for ``--seconds``, recording each
request's latency. (A saturating closed loop would measure the GIL instead: an
export thread that does socket I/O barely gets the interpreter back from busy
threads.) The OTLP endpoints live in the parent process. Phases:

* ``off``: tracing not configured (request ids only);
* ``healthy``: exporting to an OTLP/HTTP endpoint that answers 200 at once;
* ``hanging``: to an endpoint that accepts connections and never answers
  (the exporter's read timeout is 10 s, so every batch waits for it);
* ``refusing``: to a closed port (connection refused, retries with back-off).

Tracing phases record and keep every request (ratio 1, no budget), the worst
case for the exporter. Reported per phase: requests, latency p50 / p99 (ms),
RSS when measuring starts and its peak while measuring (sampled every 50 ms;
``tracemalloc`` is not used: it slows every allocation tenfold and would be
what is measured), the exporter's counters (queued, exported, dropped,
failed), and exceptions raised into the service (must be 0). Rounds alternate
the phases; medians over rounds are printed, with each tracing phase's p50/p99
ratio to ``off``.
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any
from wsgiref.util import setup_testing_defaults

PHASES = ("off", "healthy", "hanging", "refusing")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _healthy_endpoint() -> str:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


def _hanging_endpoint() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            conn, _ = sock.accept()
            held.append(conn)  # never read, never answered

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _refusing_endpoint() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    return f"http://127.0.0.1:{port}"


def run_phase(
    phase: str, endpoint: str, seconds: float, threads: int, rate: float
) -> dict[str, Any]:
    """One phase in this process; returns its figures."""
    import crosstrace
    from crosstrace.wsgi import RequestIdMiddleware

    if phase != "off":
        crosstrace.configure(
            service_name="bench-down",
            endpoint=endpoint,
            sample_ratio=1.0,
            overhead_budget=0,
            queue_size=2048,
        )

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        x = 0
        for i in range(2500):  # ~0.2 ms of CPU
            x += i * i
        for _ in range(5):
            with crosstrace.span("step", attributes={"n": x & 7}):
                pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    service = RequestIdMiddleware(app)
    base: dict[str, Any] = {"PATH_INFO": "/servers/42"}
    setup_testing_defaults(base)
    errors = [0]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = threading.Event()

    interval = threads / rate

    def worker(out: list[float]) -> None:
        pc = time.perf_counter
        next_at = pc()
        while not stop.is_set():
            delay = next_at - pc()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            t0 = pc()
            try:
                body = service(dict(base), lambda s, h, e=None: None)
                for _ in body:
                    pass
            except Exception:
                errors[0] += 1
            out.append(pc() - t0)

    # warm-up, then measure
    warm = threading.Thread(target=worker, args=([],))
    warm.start()
    time.sleep(min(1.0, seconds / 4))
    stop.set()
    warm.join()
    stop.clear()
    before = crosstrace.export.stats()
    rss_start = _rss_mib()
    rss_peak = [rss_start]

    def monitor() -> None:
        while not stop.wait(0.05):
            rss_peak[0] = max(rss_peak[0], _rss_mib())

    workers = [threading.Thread(target=worker, args=(latencies[i],)) for i in range(threads)]
    workers.append(threading.Thread(target=monitor))
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    all_lat = sorted(x for lst in latencies for x in lst)
    stats = crosstrace.export.stats()
    return {
        "phase": phase,
        "requests": len(all_lat),
        "p50_ms": all_lat[len(all_lat) // 2] * 1000,
        "p99_ms": all_lat[int(len(all_lat) * 0.99)] * 1000,
        "rss_start_mib": rss_start,
        "rss_peak_mib": rss_peak[0],
        "exceptions": errors[0],
        "spans_queued": stats["spans_queued"] - before["spans_queued"],
        "spans_exported": stats["spans_exported"] - before["spans_exported"],
        "spans_dropped": stats["spans_dropped"] - before["spans_dropped"],
        "spans_failed": stats["spans_failed"] - before["spans_failed"],
        "queue_length": stats["queue_length"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per phase")
    parser.add_argument("--threads", type=int, default=4, help="request threads")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all phases")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s in total")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args()
    if args.phase:
        figures = run_phase(args.phase, args.endpoint, args.seconds, args.threads, args.rate)
        print(json.dumps(figures))
        sys.stdout.flush()
        os._exit(0)  # do not wait for the hanging exporter's flush at exit
    endpoints = {
        "off": "",
        "healthy": _healthy_endpoint(),
        "hanging": _hanging_endpoint(),
        "refusing": _refusing_endpoint(),
    }
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    for _ in range(args.rounds):
        for phase in PHASES:
            cmd = [sys.executable, __file__, "--phase", phase, "--seconds", str(args.seconds)]
            cmd += ["--threads", str(args.threads), "--rate", str(args.rate)]
            cmd += ["--endpoint", endpoints[phase]]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
            results[phase].append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = [k for k in results["off"][0] if k != "phase"]
    med = {p: {k: statistics.median(r[k] for r in rs) for k in keys} for p, rs in results.items()}
    summary = {
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
        "load_average": os.getloadavg(),
        "seconds": args.seconds,
        "threads": args.threads,
        "rate": args.rate,
        "rounds": args.rounds,
        "medians": med,
        "runs": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"Python {summary['python']} on {summary['machine']}, {summary['date']}")
    print(f"load average at the end {summary['load_average']}")
    print(
        f"{args.rounds} rounds x {args.seconds:.0f} s per phase, {args.threads} request threads, "
        f"{args.rate:.0f} requests/s"
    )
    print()
    print(
        "| phase | requests | p50 | p99 | p50 / off | p99 / off | RSS start / peak "
        "| queued | exported | dropped | failed | exceptions |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    off = med["off"]
    for phase, m in med.items():
        print(
            f"| {phase} | {m['requests']:.0f} | {m['p50_ms']:.3f} ms | {m['p99_ms']:.3f} ms "
            f"| {m['p50_ms'] / off['p50_ms']:.2f} | {m['p99_ms'] / off['p99_ms']:.2f} "
            f"| {m['rss_start_mib']:.1f} / {m['rss_peak_mib']:.1f} MiB "
            f"| {m['spans_queued']:.0f} | {m['spans_exported']:.0f} | {m['spans_dropped']:.0f} "
            f"| {m['spans_failed']:.0f} | {m['exceptions']:.0f} |"
        )


if __name__ == "__main__":
    main()
