"""Root-cause analysis and error-group speed.

1. ``analyse_trace`` on a failed trace of 1,000 spans (an OpenStack-shaped tree:
   API -> RPC -> workers -> HTTP -> DB, a masked timeout three services deep),
   and for comparison on the demo's 20-span boot trace: p50 over many runs.
2. Error groups for a 1-hour window over 1M stored spans (``loadgen.py``: 3 % of
   traces fail) on SQLite and on PostgreSQL: the spans are written through the
   store, the error index is brought up to date (what ``serve``'s background
   thread does a few seconds behind ingest; timed too), then
   ``GET /api/v1/errors``'s work (``Diagnoser.groups``) is timed, p50 of repeats,
   with and without a service filter.

    python benchmarks/bench_analysis.py --spans 1000000
    python benchmarks/bench_analysis.py --spans 1000000 --postgres postgresql://127.0.0.1/test
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import loadgen
from crosstrace.server.analysis import analyse_trace
from crosstrace.server.model import STATUS_ERROR, SpanRecord
from crosstrace.server.query.diagnose import Diagnoser
from crosstrace.server.store import open_store

MS = 1_000_000


def _span(
    trace_id: bytes,
    n: int,
    parent: int | None,
    start: int,
    end: int,
    service: str,
    name: str,
    kind: int = 1,
    error: str | None = None,
    attrs: dict[str, object] | None = None,
) -> SpanRecord:
    events = []
    if error:
        events.append(
            {
                "time_ns": end,
                "name": "exception",
                "attributes": {"exception.type": error, "exception.message": "timed out"},
            }
        )
    return SpanRecord(
        trace_id=trace_id,
        span_id=n.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent is not None else None,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=end,
        service=service,
        status_code=STATUS_ERROR if error else 0,
        status_message=error or "",
        attributes=dict(attrs or {"http.request.method": "GET"}),
        events=events,
    )


def big_trace(n_spans: int = 1000) -> list[SpanRecord]:
    """A failed trace of *n_spans*: a root with 9 workers, each with a fan of
    HTTP calls and DB statements; one worker's volume call timed out while its
    callee's SQL still ran."""
    tid = uuid.uuid4().bytes
    t0 = time.time_ns()
    spans = [_span(tid, 1, None, t0, t0 + 5000 * MS, "api", "POST /servers", 2, "HTTP 504")]
    n = 2
    per_worker = (n_spans - 1) // 10
    for w in range(10):
        ws = t0 + w * 400 * MS
        worker = n
        failing = w == 7
        spans.append(
            _span(
                tid,
                n,
                1,
                ws,
                ws + 390 * MS,
                f"svc{w}",
                "worker",
                5,
                "ReadTimeout" if failing else None,
            )
        )
        n += 1
        for k in range(per_worker - 1):
            if len(spans) >= n_spans:
                break
            s = ws + k * MS // 4
            parent = worker if k % 3 == 0 else n - 1
            dur = MS // 5
            error = None
            if failing and k == 3:
                error, dur = "ReadTimeout", 100 * MS
            spans.append(_span(tid, n, parent, s, s + dur, f"svc{w}", f"op{k % 17}", 3, error))
            n += 1
    while len(spans) < n_spans:
        spans.append(_span(tid, n, 1, t0, t0 + MS, "api", "tail"))
        n += 1
    return spans[:n_spans]


def time_analysis(spans: list[SpanRecord], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        analyse_trace(spans)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def load_store(url: str, n_spans: int, end_ns: int) -> tuple[float, int]:
    store = open_store(url)
    t = time.perf_counter()
    pending = []
    traces = 0
    for batch in loadgen.service_batches(
        loadgen.generate(n_spans, seed=1, start_ns=end_ns, hours=1.0)
    ):
        pending.append(store.submit_spans(batch))
        if len(pending) > 8:
            pending.pop(0).result()
    for f in pending:
        f.result()
    traces = store.stats()["traces"]
    store.close()
    return time.perf_counter() - t, traces


def bench_groups(url: str, n_spans: int, repeat: int, label: str) -> None:
    end_ns = time.time_ns()
    seconds, traces = load_store(url, n_spans, end_ns)
    print(f"[{label}] stored {n_spans} spans ({traces} traces) in {seconds:.1f}s")
    store = open_store(url)
    diag = Diagnoser(store)
    start = end_ns - 3600 * 10**9
    t = time.perf_counter()
    analysed = diag.catch_up(start, end_ns + 1, budget=10**9)
    index_s = time.perf_counter() - t
    print(
        f"[{label}] error index: {analysed} error traces analysed in {index_s:.2f}s "
        f"({analysed / max(index_s, 1e-9):.0f} traces/s)"
    )
    for service in (None, "nova-compute"):
        times = []
        n_groups = 0
        for _ in range(repeat):
            t = time.perf_counter()
            groups, _, _ = diag.groups(start, end_ns + 1, service=service)
            times.append(time.perf_counter() - t)
            n_groups = len(groups)
        total = sum(g.count for g in groups)
        print(
            f"[{label}] error groups, 1 h window{' service=' + service if service else ''}: "
            f"p50 {statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms "
            f"({n_groups} groups, {total} failures)"
        )
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--postgres", default=os.environ.get("CROSSTRACE_TEST_POSTGRES_URL", ""))
    ap.add_argument("--skip-store", action="store_true", help="only the per-trace analysis")
    args = ap.parse_args()
    gc.collect()
    big = big_trace(1000)
    p50 = time_analysis(big, 200)
    print(f"analyse_trace, 1000-span failed trace: p50 {p50 * 1000:.2f} ms")
    a = analyse_trace(big)
    assert a.root_cause is not None
    print(f"  verdict {a.verdict}, root cause {a.root_cause.service} / {a.root_cause.name}")
    small = big_trace(20)
    print(f"analyse_trace, 20-span trace: p50 {time_analysis(small, 2000) * 1000:.3f} ms")
    if args.skip_store:
        return
    with tempfile.TemporaryDirectory() as tmp:
        bench_groups(f"sqlite:///{tmp}/bench.sqlite3", args.spans, args.repeat, "sqlite")
    if args.postgres:
        import psycopg

        schema = "bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.postgres else "?"
        url = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
        try:
            bench_groups(url, args.spans, args.repeat, "postgresql")
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
