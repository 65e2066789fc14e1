"""Retention never silently deletes what was just imported: an imported log record
ages from its import, a record sent live from its own time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg

from crosstrace.server.metrics import Metrics
from crosstrace.server.model import LogQuery, LogRecord
from crosstrace.server.store import Store, open_store
from crosstrace.server.store.base import RetentionPass
from crosstrace.server.store.migrations import migrate
from crosstrace.server.store.retention import RetentionThread

DAY = 86_400 * 10**9
WEEK = 7 * DAY


def record(body: str, time_ns: int, imported_ns: int | None, host: str = "cmp1") -> LogRecord:
    return LogRecord(
        time_ns=time_ns,
        severity_number=9,
        severity_text="INFO",
        body=body,
        service="nova-compute",
        resource={"service.name": "nova-compute", "host.name": host},
        dedup_key=body.encode() if imported_ns is not None else None,
        imported_ns=imported_ns,
    )


def bodies(store: Store) -> set[str]:
    return {r.body for r in store.search_logs(LogQuery(limit=100))}


def test_imported_records_age_from_their_import(store: Store) -> None:
    """A 30-day-old record imported now survives a 7-day retention pass; the same age
    sent live, or imported 8 days ago, is deleted; the pass says how many."""
    now = time.time_ns()
    month_ago = now - 30 * DAY
    store.write_logs(
        [
            record("imported now", month_ago, now),
            record("imported 8 days ago", month_ago, now - 8 * DAY),
            record("sent live a month ago", month_ago, None),
            record("sent live now", now, None),
        ]
    )
    assert store.retention_pass(WEEK) == RetentionPass(traces=0, logs=2)
    assert bodies(store) == {"imported now", "sent live now"}
    assert store.retention_pass(WEEK) == RetentionPass(traces=0, logs=0)


def test_host_filter(store: Store) -> None:
    """`host=` narrows the search to one host's records."""
    now = time.time_ns()
    store.write_logs([record("a", now, now, "cmp1"), record("b", now + 1, now, "cmp2")])
    assert [r.body for r in store.search_logs(LogQuery(host="cmp2"))] == ["b"]
    assert store.search_logs(LogQuery(host="nowhere")) == []
    [a] = store.search_logs(LogQuery(host="cmp1"))
    assert a.imported_ns == now


def test_retention_thread_reports_each_pass(store: Store) -> None:
    """Each pass is handed to on_pass (serve prints it and counts it in /metrics)."""
    store.write_logs([record("old", time.time_ns() - 30 * DAY, None)])
    metrics = Metrics()
    passes: list[RetentionPass] = []

    def on_pass(done: RetentionPass) -> None:
        passes.append(done)
        metrics.retention_pass(done.traces, done.logs)

    thread = RetentionThread(store, WEEK, interval_s=3600, on_pass=on_pass)
    thread.start()
    thread.stop()  # waits for the first pass, which runs at start
    assert passes == [RetentionPass(traces=0, logs=1)]
    assert thread.logs_removed == 1
    text = metrics.render()
    assert "crosstrace_retention_runs_total 1" in text
    assert 'crosstrace_retention_deleted_total{signal="logs"} 1' in text


def test_upgrade_gives_earlier_imports_a_fresh_start(tmp_path: Path) -> None:
    """Records imported before the upgrade (they have a dedup key) age from the
    upgrade; records sent live keep their own time."""
    path = tmp_path / "v5.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, "sqlite", target=5) == 5
    old = time.time_ns() - 30 * DAY
    for body, key in (("imported", b"k"), ("live", None)):
        conn.execute("INSERT INTO names (id, name) VALUES (?, ?)", (1 if key else 2, body))
        conn.execute(
            "INSERT INTO logs (time_ns, severity, severity_text, service_id, logger, body,"
            " dedup_key) VALUES (?, 9, 'INFO', ?, '', ?, ?)",
            (old, 1 if key else 2, body, key),
        )
    conn.close()
    s = open_store(f"sqlite:///{path}")
    try:
        assert s.retention_pass(WEEK) == RetentionPass(traces=0, logs=1)
        assert bodies(s) == {"imported"}
    finally:
        s.close()


def test_postgres_upgrade_gives_earlier_imports_a_fresh_start(postgres_schema_url: str) -> None:
    old = time.time_ns() - 30 * DAY
    with psycopg.connect(postgres_schema_url, autocommit=True) as conn:
        assert migrate(conn, "postgresql", target=5) == 5
        conn.execute("INSERT INTO names (id, name) VALUES (1, 'svc')")
        for body, key in (("imported", b"k"), ("live", None)):
            conn.execute(
                "INSERT INTO logs (time_ns, severity, severity_text, service_id, logger, body,"
                " dedup_key) VALUES (%s, 9, 'INFO', 1, '', %s, %s)",
                (old, body, key),
            )
    s = open_store(postgres_schema_url)
    try:
        assert s.retention_pass(WEEK) == RetentionPass(traces=0, logs=1)
        assert bodies(s) == {"imported"}
    finally:
        s.close()
