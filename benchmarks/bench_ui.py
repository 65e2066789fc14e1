"""How fast the trace page of a big trace is readable in a real browser.

Run from the repository root (needs /usr/bin/chromium: scripts/install-system)::

    .venv/bin/python benchmarks/bench_ui.py                 # 5,000 spans, 7 rounds
    .venv/bin/python benchmarks/bench_ui.py --spans 20000 --rounds 3

It stores two traces into a fresh SQLite store, a big one (``--spans``: an API
call fanning out to RPC workers, each running a few hundred database and HTTP
spans, one of them failing deep down) and a small one (50 spans, same shape),
starts ``crosstrace serve`` over the store as a separate process, and opens
``/traces/{trace_id}`` in headless chromium (Playwright, Debian's browser).

Measured per load, in the browser's own clock from navigation start:

* ``response``: the server's answer has arrived (responseEnd);
* ``readable``: the first waterfall rows and the "Root cause" panel are on
  screen and the page's script has taken over the rows (the figure the target,
  <= 1 s, applies to);
* ``first paint``: first contentful paint (when the browser records one).

Rounds alternate the two traces; medians (and the big/small ratio, measured in
the same run) are printed. The machine is shared, so absolute times are noisy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from crosstrace.demo.backend import start_backend
from crosstrace.server.model import LogRecord, SpanRecord
from crosstrace.server.store import open_store

CHROMIUM = "/usr/bin/chromium"
MS = 1_000_000
SERVICES = ("compute-api", "scheduler", "compute", "network", "volume", "image")


def make_trace(n: int, seed: int = 7) -> tuple[bytes, list[SpanRecord], list[LogRecord]]:
    """*n* spans: root -> RPC calls -> workers -> DB/HTTP spans (depth up to 6),
    one failure deep in the middle with its consequences up the chain."""
    rng = random.Random(seed)
    tid = rng.randbytes(16)
    start = time.time_ns() - 120_000 * MS
    spans: list[SpanRecord] = []
    logs: list[LogRecord] = []

    def add(parent: SpanRecord | None, service: str, name: str, at: int, dur: int) -> SpanRecord:
        span = SpanRecord(
            trace_id=tid,
            span_id=rng.randbytes(8),
            parent_span_id=parent.span_id if parent else None,
            name=name,
            kind=2 if parent is None or parent.service != service else 1,
            start_ns=at,
            end_ns=at + dur,
            service=service,
            attributes={"db.system": "postgresql"} if name.startswith("SELECT") else {},
        )
        spans.append(span)
        return span

    root = add(None, "compute-api", "POST /v2.1/servers", start, 4000 * MS)
    calls = max(1, n // 100)
    per_call = max(1, (n - 1) // calls - 2)
    failing = calls // 2
    at = start + MS
    for c in range(calls):
        call = add(root, "compute-api", f"rpc.call build_{c}", at, 60 * MS)
        worker = add(call, SERVICES[2 + c % 4], f"build_and_run_instance_{c}", at + MS, 58 * MS)
        t = at + 2 * MS
        for k in range(per_call):
            if len(spans) >= n:
                break
            depth_parent = worker if k % 5 == 0 else spans[-1]
            if depth_parent.parent_span_id is not None and len(spans) % 7 == 0:
                depth_parent = worker
            name = "SELECT instances" if k % 3 else f"GET /v2/ports/{k}"
            add(depth_parent, worker.service, name, t, 50_000 + rng.randrange(200_000))
            t += 100_000
        if c == failing:
            leaf = spans[-1]
            leaf.status_code = 2
            leaf.status_message = "duplicate key value violates unique constraint"
            leaf.events = [
                {
                    "time_ns": leaf.end_ns,
                    "name": "exception",
                    "attributes": {
                        "exception.type": "IntegrityError",
                        "exception.message": "duplicate key value violates unique constraint",
                        "exception.stacktrace": "Traceback (most recent call last):\n  ...",
                    },
                }
            ]
            for up in (worker, call, root):
                up.status_code = 2
                up.status_message = "Failed to create volume"
            line = LogRecord(
                leaf.end_ns, 17, "ERROR", "IntegrityError: duplicate key", leaf.service
            )
            line.trace_id, line.span_id = tid, leaf.span_id
            logs.append(line)
        at += 40 * MS
        if len(spans) >= n:
            break
    while len(spans) < n:  # the remainder, under the last worker
        add(worker, worker.service, "SELECT instances", at, 50_000)
        at += 100_000
    return tid, spans[:n], logs


READY_JS = """() => {
  const rows = document.querySelectorAll('#wf-canvas .wf-row');
  const rc = document.getElementById('root-cause');
  return rows.length > 0 && rc && rc.getBoundingClientRect().height > 0
      && document.body.dataset.ready === '1';
}"""


def measure(page: Any, url: str) -> dict[str, float]:
    page.goto("about:blank")
    page.goto(url, wait_until="commit")
    page.wait_for_function(READY_JS, timeout=30_000)
    readable = page.evaluate("() => performance.now()")
    timing = page.evaluate(
        """() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const fcp = performance.getEntriesByName('first-contentful-paint')[0];
      return {response: nav.responseEnd, fcp: fcp ? fcp.startTime : -1};
    }"""
    )
    return {"response": timing["response"], "readable": readable, "first paint": timing["fcp"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        print(f"{CHROMIUM} is missing: run scripts/install-system", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        data = Path(tmp)
        store = open_store(f"sqlite:///{data / 'crosstrace.sqlite3'}")
        big, big_spans, big_logs = make_trace(args.spans)
        small, small_spans, small_logs = make_trace(50, seed=8)
        store.write_spans(big_spans + small_spans)
        store.write_logs(big_logs + small_logs)
        store.close()
        backend = start_backend(data, port=0)
        results: dict[str, list[dict[str, float]]] = {"big": [], "small": []}
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                for tid in (big, small):  # warm up
                    measure(page, f"{backend.url}/traces/{tid.hex()}")
                for _ in range(args.rounds):
                    for which, tid in (("big", big), ("small", small)):
                        results[which].append(measure(page, f"{backend.url}/traces/{tid.hex()}"))
                rows = page.locator("#wf-canvas .wf-row").count()
                page.goto(f"{backend.url}/traces/{big.hex()}")
                verdict = page.locator("#root-cause .verdict").inner_text()
                browser.close()
        finally:
            backend.stop()
    print(
        f"bench_ui: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} {os.cpu_count()} cores, chromium {CHROMIUM}, "
        f"{args.rounds} rounds, medians in ms"
    )
    print(f"{'trace':<16} {'response':>9} {'first paint':>12} {'readable':>9}")
    med: dict[str, dict[str, float]] = {}
    for which, n in (("big", args.spans), ("small", 50)):
        med[which] = {
            k: statistics.median([r[k] for r in results[which] if r[k] >= 0] or [-1])
            for k in results[which][0]
        }
        m = med[which]
        print(f"{which} ({n} spans){'':<3} {m['response']:>9.0f} {m['first paint']:>12.0f} "
              f"{m['readable']:>9.0f}")  # fmt: skip
    worst = max(r["readable"] for r in results["big"])
    print(
        f"big/small readable ratio {med['big']['readable'] / med['small']['readable']:.2f}; "
        f"big worst {worst:.0f} ms; rows in the document after load (small trace): {rows}"
    )
    print(f"big trace's root-cause panel: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
