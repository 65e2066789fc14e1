"""The PostgreSQL store (psycopg 3), for deployments that want a real database.

Same schema and queries as the SQLite store (``sqlcommon``), with these
differences:

- Rows are bulk-inserted with one ``INSERT ... SELECT * FROM unnest(arrays)``
  statement per table and write group, from one writer thread per process.
- Trace summaries are merged by ``INSERT ... ON CONFLICT DO UPDATE``, so several
  ``serve`` processes can write the same trace concurrently.
- Span chunks are partitioned by day (``chunks_p<day>``; days outside ten years
  back / one year ahead go to ``chunks_default``): age retention drops whole
  partitions, then deletes the summary and index rows of the expired traces.
- Readers take connections from a small pool (autocommit, so they never hold a
  transaction open).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from crosstrace.server.store.migrations import migrate
from crosstrace.server.store.sqlcommon import SQLStore
from crosstrace.server.store.sqlwrite import _chunks, _marks

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 10**9
#: Read connections kept per store.
DEFAULT_POOL_SIZE = 4
_POOL_TIMEOUT_S = 30.0
_PARTITION_RE = re.compile(r"chunks_p(\d+)")
_DAYS_BACK = 3650
_DAYS_AHEAD = 365


class PostgresStore(SQLStore):
    """A :class:`~crosstrace.server.store.base.Store` in a PostgreSQL database."""

    dialect = "postgresql"
    _least = "LEAST"
    _greatest = "GREATEST"
    _like = "ILIKE"

    def __init__(self, url: str, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.url = url
        with psycopg.connect(url, autocommit=True) as setup:
            migrate(setup, "postgresql")
        self._wconn = psycopg.connect(url)
        self._pool: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._pool_size = pool_size
        self._pool_open = 0
        self._pool_lock = threading.Lock()
        self._days: set[int] = set()
        super().__init__()

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user@host:port/db`` (libpq URL; ``options=-csearch_path%3D...``
        selects a schema)."""
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        return cls(url)

    # hooks -------------------------------------------------------------------
    def _writer_conn(self) -> psycopg.Connection[Any]:
        if self._wconn.closed or self._wconn.broken:
            log.warning("PostgreSQL writer connection lost; reconnecting")
            self._wconn = psycopg.connect(self.url)
        return self._wconn

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._acquire()
        try:
            yield conn
        finally:
            if conn.closed or conn.broken:
                conn.close()
                with self._pool_lock:
                    self._pool_open -= 1
            else:
                self._pool.put(conn)

    def _acquire(self) -> psycopg.Connection[Any]:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._pool_lock:
            grow = self._pool_open < self._pool_size
            if grow:
                self._pool_open += 1
        if grow:
            try:
                return psycopg.connect(self.url, autocommit=True)
            except BaseException:
                with self._pool_lock:
                    self._pool_open -= 1
                raise
        return self._pool.get(timeout=_POOL_TIMEOUT_S)

    def _begin(self, conn: Any) -> None:
        """psycopg opens the transaction at the first statement."""

    def _commit(self, conn: Any) -> None:
        conn.commit()

    def _rollback(self, conn: Any) -> None:
        if not conn.closed:
            conn.rollback()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _insert(
        self,
        conn: Any,
        table: str,
        cols: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
    ) -> int:
        if not rows:
            return 0
        arrays = [list(col) for col in zip(*rows, strict=True)]
        unnest = ", ".join(f"%s::{t}[]" for t in types)
        cur = conn.execute(
            f"INSERT INTO {table} ({', '.join(cols)}) SELECT * FROM unnest({unnest}) {conflict}",
            arrays,
        )
        return int(cur.rowcount)

    def _insert_chunks(self, conn: Any, rows: list[tuple[bytes, int, bytes]]) -> None:
        if not rows:
            return
        days = [s // DAY_NS for _t, s, _d in rows]
        self._ensure_partitions(set(days))
        self._insert(
            conn,
            "chunks",
            ("trace_id", "day", "data"),
            ("bytea", "integer", "bytea"),
            [(t, day, d) for (t, _s, d), day in zip(rows, days, strict=True)],
        )

    def _ensure_partitions(self, days: set[int]) -> None:
        """Create the day partitions that do not exist yet (own connection and
        transaction, so a concurrent creator elsewhere cannot fail our write)."""
        today = time.time_ns() // DAY_NS
        missing = [
            d
            for d in days
            if d not in self._days and today - _DAYS_BACK <= d <= today + _DAYS_AHEAD
        ]
        if not missing:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            for day in missing:
                try:
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS chunks_p{day:d} PARTITION OF chunks"
                        f" FOR VALUES FROM ({day:d}) TO ({day + 1:d})"
                    )
                except psycopg.errors.DuplicateTable:
                    pass
                except psycopg.Error as exc:  # e.g. created concurrently: re-checked below
                    log.warning("could not create chunk partition %d: %s", day, exc)
                    continue
                self._days.add(day)

    def _delete_chunks(self, conn: Any, trace_ids: Sequence[bytes], cutoff_ns: int) -> None:
        for part in _chunks(trace_ids):
            self._x(conn, f"DELETE FROM chunks WHERE trace_id IN ({_marks(len(part))})", part)

    def _drop_partitions(self, conn: Any, cutoff_ns: int) -> int:
        """Drop the day partitions that hold only chunks older than *cutoff_ns*."""
        rows = self._q(
            conn,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = 'chunks' AND p.relnamespace = current_schema()::regnamespace",
        )
        dropped = 0
        for (name,) in rows:
            m = _PARTITION_RE.fullmatch(name)
            if m and (int(m.group(1)) + 1) * DAY_NS <= cutoff_ns:
                conn.execute(f"DROP TABLE {name}")
                self._days.discard(int(m.group(1)))
                dropped += 1
        return dropped

    def apply_retention(self, max_age_ns: int | None, max_bytes: int | None = None) -> int:
        """Drop expired day partitions of the span chunks, then delete the expired
        summaries, index rows and logs (*max_bytes* is not supported here)."""
        if max_age_ns is not None:
            cutoff = time.time_ns() - max_age_ns
            self._call(lambda conn: self._drop_partitions(conn, cutoff))
        return super().apply_retention(max_age_ns)

    def _db_bytes(self, conn: Any) -> int:
        row = self._q(
            conn,
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'",
        )
        return int(row[0][0])

    def _close_connections(self) -> None:
        self._wconn.close()
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            conn.close()
