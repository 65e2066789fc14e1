"""Store benchmark: write N realistic spans into SQLite and PostgreSQL, then time
the queries an operator runs.

    python benchmarks/bench_store.py --spans 1000000
    python benchmarks/bench_store.py --spans 100000 --backends sqlite --no-http
    python benchmarks/bench_store.py --spans 1000000 --profile entropy

``--profile`` picks the load (``loadgen.py``: ``default``, or ``entropy``: more
ids and random values per span, batches across services).

Reports, per backend: ingest rate with direct store writes (batches of 512
spans, per service or mixed as the profile sends them, decoded from their OTLP
bodies before the clock starts, 4 in flight; the decode rate is printed once),
ingest rate over HTTP with OTLP protobuf through ``crosstrace serve`` with its
default decode workers (one run per ``--clients`` value: 4 and 8 client threads
with keep-alive connections; the bodies encoded before the clock starts), bytes
per span on disk including indexes (SQLite: the file after a WAL checkpoint, and
where its bytes go per table and index from ``dbstat``, as written and after
the store has merged each trace's chunks of several commits, as it does once a
trace is quiet, with the time that took; PostgreSQL:
pg_total_relation_size of every table of the schema, the largest listed), and
p50 / p95 of: fetch a trace by id, search error traces in a one-hour window,
search by an indexed attribute, search by a non-indexed attribute in a one-hour
window, search by service. With ``--amqp URL``, also the ingest rate from
RabbitMQ: the bodies are published to a fresh queue first, then ``crosstrace
serve --consume`` reads them (timed from its first committed batch to its last).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from crosstrace.server.batch.scan import scan_traces
from crosstrace.server.batch.spanbatch import SpanBatch
from crosstrace.server.model import TraceQuery
from crosstrace.server.settings import default_decode_workers
from crosstrace.server.store.base import Store
from crosstrace.server.store.postgres import PostgresStore
from crosstrace.server.store.sqlite import SQLiteStore

HOUR = 3600 * 10**9
PG_URL = os.environ.get("CROSSTRACE_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """p50 and p95 in ms of *n* calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out), pct(out, 0.95)


def load() -> str:
    """The load average (1, 5, 15 min), to report beside each figure."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def write_direct(store: Store, batches: list[SpanBatch], inflight: int = 4) -> float:
    pending: list[Future[None]] = []
    t0 = time.perf_counter()
    for b in batches:
        pending.append(store.submit_batch(b))
        if len(pending) >= inflight:
            pending.pop(0).result()
    for f in pending:
        f.result()
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(
    db_url: str, workers: int | None, *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh ``crosstrace serve`` (with *workers* decode workers, else its
    default) answering on a free port; returns the process and the port."""
    exe = shutil.which("crosstrace", path=str(Path(sys.executable).parent)) or "crosstrace"
    port = free_port()
    if workers is not None:
        extra = (*extra, "--decode-workers", str(workers))
    proc = subprocess.Popen(
        [exe, "serve", "--db", db_url, "--port", str(port), "--no-auth", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                c.close()
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_serve(proc)
            raise RuntimeError("crosstrace serve did not start")
        time.sleep(0.1)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def write_http(
    db_url: str, bodies: list[bytes], clients: int = 4, workers: int | None = None
) -> tuple[float, int]:
    """Post every body to a fresh ``crosstrace serve`` (with *workers* decode
    workers, else its default); return (seconds, failures)."""
    proc, port = start_serve(db_url, workers)
    try:
        failures = [0] * clients
        nxt = iter(range(len(bodies)))
        lock = threading.Lock()

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    break
                conn.request(
                    "POST",
                    "/v1/traces",
                    body=bodies[i],
                    headers={"Content-Type": "application/x-protobuf"},
                )
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    failures[k] += 1
            conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        return elapsed, sum(failures)
    finally:
        stop_serve(proc)


def spans_written(port: int) -> int:
    """The server's count of spans committed, from its /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    for line in text.splitlines():
        if line.startswith('crosstrace_records_written_total{signal="traces"}'):
            return int(line.rsplit(" ", 1)[1])
    raise RuntimeError("no written-spans counter in /metrics")


def write_consume(
    db_url: str, bodies: list[bytes], total: int, amqp_url: str, workers: int | None = None
) -> tuple[float, int]:
    """Publish every body (*total* spans) to a fresh queue with the tracer's
    RabbitMQ transport, then start ``crosstrace serve --consume`` on it. Returns the
    seconds from the first committed batch to the last and the spans committed in
    that time (the count polled from /metrics)."""
    import kombu

    from crosstrace.export.transports import AmqpTransport

    queue = "bench-" + uuid.uuid4().hex[:8]
    try:
        transport = AmqpTransport(amqp_url, routing_key=queue, queue=queue)
        try:
            for body in bodies:
                transport.send("traces", body)
        finally:
            transport.close()
        proc, port = start_serve(
            db_url, workers, "--consume", amqp_url, "--queue", queue, "--routing-key", queue
        )
        try:
            first: tuple[float, int] | None = None
            while True:
                n = spans_written(port)
                now = time.perf_counter()
                if first is None and n:
                    first = (now, n)
                if n >= total:
                    break
                if proc.poll() is not None:
                    raise RuntimeError("crosstrace serve --consume stopped")
                time.sleep(0.02)
            assert first is not None
            return now - first[0], n - first[1]
        finally:
            stop_serve(proc)
    finally:
        with kombu.Connection(amqp_url) as conn:
            kombu.Queue(queue)(conn.channel()).delete()


def run_queries(
    store: Store, traces: list[list[Any]], n: int, t_end: int, services: list[str]
) -> dict[str, Any]:
    rng = random.Random(7)
    ids = [t[0].trace_id for t in rng.sample(traces, min(n, len(traces)))]
    it = iter(ids * 2)
    res: dict[str, Any] = {}
    res["fetch_trace"] = timed(lambda: store.get_trace(next(it)), len(ids))
    assert store.get_trace(ids[0]), "trace not found"

    def window() -> tuple[int, int]:
        w = t_end - rng.randint(1, 23) * HOUR
        return w, w + HOUR

    def err_search() -> None:
        s, e = window()
        page = store.search_traces(TraceQuery(error=True, start_ns=s, end_ns=e, limit=20))
        assert page.traces

    res["error_1h"] = timed(err_search, n)
    users = sorted({t[0].attributes["openstack.user_id"] for t in traces})

    def attr_indexed() -> None:
        store.search_traces(TraceQuery(attributes={"openstack.user_id": rng.choice(users)}))

    res["attr_indexed"] = timed(attr_indexed, n)

    def attr_scan() -> None:
        s, e = window()
        q = TraceQuery(attributes={"db.collection.name": "quotas"}, start_ns=s, end_ns=e)
        store.search_traces(q)

    res["attr_scan_1h"] = timed(attr_scan, max(10, n // 5))

    def by_service() -> None:
        store.search_traces(TraceQuery(service=rng.choice(services)))

    res["service"] = timed(by_service, n)
    return res


def pg_fresh_schema() -> tuple[str, Callable[[], None]]:
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"

    def drop() -> None:
        with psycopg.connect(PG_URL, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {schema} CASCADE")

    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", drop


def open_backend(name: str, tmp: Path) -> tuple[str, Callable[[], Store], Callable[[], None]]:
    if name == "sqlite":
        path = tmp / f"bench-{uuid.uuid4().hex[:6]}.sqlite3"
        return f"sqlite:///{path}", lambda: SQLiteStore(path), lambda: None
    url, drop = pg_fresh_schema()
    return url, lambda: PostgresStore(url), drop


def disk_bytes(store: Store, n_spans: int) -> int:
    """Bytes on disk, after printing where they go (bytes per span per table or
    index, the largest first)."""
    if isinstance(store, SQLiteStore):
        store.checkpoint()
        with store._reader() as conn:
            rows = conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 10"
            ).fetchall()
        print(
            "  where the bytes go (dbstat, B/span): "
            + ", ".join(f"{n} {b / n_spans:.1f}" for n, b in rows)
        )
        return os.path.getsize(store.path)
    if isinstance(store, PostgresStore):
        with store._reader() as conn:
            conn.execute("ANALYZE")
            # Partitions count under their parent table.
            rows = conn.execute(
                "SELECT coalesce(p.relname, c.relname), sum(pg_total_relation_size(c.oid))"
                " FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
                " LEFT JOIN pg_class p ON p.oid = i.inhparent"
                " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
                " GROUP BY 1 ORDER BY 2 DESC LIMIT 8"
            ).fetchall()
            index_rows = conn.execute(
                "SELECT coalesce(pi.relname, c.relname), sum(pg_relation_size(c.oid))"
                " FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
                " LEFT JOIN pg_class pi ON pi.oid = i.inhparent"
                " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'i'"
                " GROUP BY 1 ORDER BY 2 DESC LIMIT 8"
            ).fetchall()
        print(
            "  largest tables with their indexes (pg_total_relation_size, B/span): "
            + ", ".join(f"{n} {b / n_spans:.1f}" for n, b in rows)
        )
        print(
            "  of which indexes (B/span): "
            + ", ".join(f"{n} {b / n_spans:.1f}" for n, b in index_rows)
        )
    return store.stats()["db_bytes"]


def settle(store: Store, n_spans: int, label: str) -> int | None:
    """SQLite: merge every trace's chunks now (``SQLiteStore.compact``), as the
    store does once traces are quiet; print the time and return the bytes on
    disk after it (``None`` for a store that does not merge)."""
    compact = getattr(store, "compact", None)  # not in older code, for A/B runs
    if not isinstance(store, SQLiteStore) or compact is None:
        return None
    t0 = time.perf_counter()
    merged = compact()
    secs = time.perf_counter() - t0
    size = disk_bytes(store, n_spans)
    print(
        f"[sqlite] {label}: on disk after merging quiet traces {size / n_spans:.1f} bytes/span"
        f" ({merged} traces merged in {secs:.1f} s,"
        f" {secs / max(merged, 1) * 1e6:.0f} us per trace, {load()})"
    )
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--profile", choices=loadgen.PROFILES, default="default")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--tmp", default=None, help="directory for SQLite files")
    ap.add_argument(
        "--clients",
        default="4,8",
        help="concurrent HTTP clients, one ingest run per value (8: one exporter per"
        " service of the load)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="HTTP ingest runs per setting (median printed)"
    )
    ap.add_argument(
        "--decode-workers",
        default="",
        help="serve's --decode-workers, one ingest run per value (default: serve's default)",
    )
    ap.add_argument(
        "--amqp",
        default="",
        metavar="URL",
        help="also measure ingest from this RabbitMQ through `serve --consume` (one run per"
        " --decode-workers value)",
    )
    args = ap.parse_args()

    t_end = time.time_ns()
    t0 = time.perf_counter()
    traces = list(loadgen.generate(args.spans, seed=1, start_ns=t_end, profile=args.profile))
    batches = list(loadgen.batches(iter(traces), args.batch, args.profile))
    n_spans = sum(len(b) for b in batches)
    print(
        f"# {platform.node()} python {platform.python_version()} {os.cpu_count()} cpus,"
        f" serve's default decode workers: {default_decode_workers()}"
    )
    print(
        f"generated {n_spans} spans / {len(traces)} traces / {len(batches)} batches"
        f" of the {args.profile} profile"
        f" in {time.perf_counter() - t0:.1f} s"
    )
    http_ok = not args.no_http
    t0 = time.perf_counter()
    bodies = [loadgen.to_otlp(b) for b in batches]
    print(
        f"encoded {len(bodies)} OTLP bodies ({sum(map(len, bodies)) / n_spans:.0f} B/span)"
        f" in {time.perf_counter() - t0:.1f} s"
    )
    t0 = time.perf_counter()
    decoded = [scan_traces(b, lambda reason: None) for b in bodies]
    secs = time.perf_counter() - t0
    print(f"decoded them into span batches: {n_spans / secs:,.0f} spans/s ({load()})")
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="crosstrace-bench-"))
    for backend in args.backends.split(","):
        url, opener, drop = open_backend(backend, tmp)
        try:
            store = opener()
            print(f"\n[{backend}] before direct writes: {load()}")
            secs = write_direct(store, decoded)
            size = disk_bytes(store, n_spans)
            print(
                f"[{backend}] direct store writes: {n_spans / secs:,.0f} spans/s ({secs:.1f} s,"
                f" {load()})"
            )
            print(f"[{backend}] on disk: {size / n_spans:.1f} bytes/span ({size / 2**20:.1f} MiB)")
            settle(store, n_spans, "direct writes")
            res = run_queries(store, traces, args.queries, t_end, loadgen.services(args.profile))
            for k, (p50, p95) in res.items():
                print(f"[{backend}] {k}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")
            store.close()
        finally:
            drop()
        worker_counts = (
            [int(w) for w in args.decode_workers.split(",")] if args.decode_workers else [None]
        )
        for workers in worker_counts if args.amqp else []:
            shown = "default" if workers is None else workers
            rates = []
            for _ in range(args.repeat):
                url, opener, drop = open_backend(backend, tmp)
                try:
                    secs, counted = write_consume(url, bodies, n_spans, args.amqp, workers)
                    store = opener()
                    st = store.stats()
                    store.close()
                    rates.append(counted / secs)
                    print(
                        f"[{backend}] RabbitMQ ingest (serve --consume), {shown} decode workers:"
                        f" {counted / secs:,.0f} spans/s ({counted} spans in {secs:.1f} s after"
                        f" the first commit, {st['traces']} traces stored, {load()})"
                    )
                finally:
                    drop()
            if len(rates) > 1:
                print(
                    f"[{backend}] RabbitMQ ingest, {shown} decode workers:"
                    f" median {statistics.median(rates):,.0f} spans/s of {len(rates)} runs"
                )
        if not http_ok:
            continue
        runs = [(c, w) for w in worker_counts for c in [int(c) for c in args.clients.split(",")]]
        for clients, workers in runs:
            shown = "default" if workers is None else workers
            rates = []
            for _ in range(args.repeat):
                url, opener, drop = open_backend(backend, tmp)
                try:
                    print(f"[{backend}] before HTTP ({clients} clients, {shown} workers): {load()}")
                    secs, failed = write_http(url, bodies, clients, workers)
                    store = opener()
                    st = store.stats()
                    got = sum(
                        1
                        for t in traces[:: max(1, len(traces) // 100)]
                        if store.get_trace(t[0].trace_id)
                    )
                    # What the store HTTP ingest wrote takes (it merges fewer
                    # chunks than direct writes when fewer batches wait).
                    size = disk_bytes(store, n_spans)
                    settle(store, n_spans, "HTTP ingest")
                    store.close()
                    rates.append(n_spans / secs)
                    print(
                        f"[{backend}] HTTP OTLP protobuf ingest, {clients} clients,"
                        f" {shown} decode workers: {n_spans / secs:,.0f} spans/s ({secs:.1f} s,"
                        f" {failed} non-200, {st['traces']} traces stored, sampled traces"
                        f" found {got}, on disk {size / n_spans:.1f} bytes/span, {load()})"
                    )
                finally:
                    drop()
            if len(rates) > 1:
                print(
                    f"[{backend}] HTTP ingest, {clients} clients, {shown} decode workers:"
                    f" median {statistics.median(rates):,.0f} spans/s of {len(rates)} runs"
                )


if __name__ == "__main__":
    main()
