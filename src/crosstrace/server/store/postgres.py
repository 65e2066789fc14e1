"""The PostgreSQL store (psycopg 3), for deployments that want a real database.

Same schema and queries as the SQLite store (``sqlcommon``), with these
differences:

- Rows are bulk-inserted with one ``INSERT ... SELECT * FROM unnest(arrays)``
  statement per table and batch, from one writer thread per process, each batch
  under a savepoint (a bad batch fails alone).
- A chunk row carries its index entries as arrays (service and operation keys,
  attribute hashes and request-id terms under a GIN index, packed request ids)
  instead of one row per trace and key in three more tables: PostgreSQL pays
  ~28 bytes of tuple header and line pointer per row, plus the B-tree entries.
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

from crosstrace.server.store.codec import pack_rids, rid_term
from crosstrace.server.store.migrations import migrate
from crosstrace.server.store.prepare import PreparedBatch
from crosstrace.server.store.read import SQLStore
from crosstrace.server.store.sql import ChunkRow, marks
from crosstrace.server.store.writer import Job

__all__ = ["PostgresStore"]

#: Column types of a chunk row, for binary COPY.
_CHUNK_TYPES = ["bytea", "int4", "int8", "int4[]", "int8[]", "bytea", "bytea"]

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 10**9
#: Read connections kept per store.
DEFAULT_POOL_SIZE = 4
_POOL_TIMEOUT_S = 30.0
_PARTITION_RE = re.compile(r"chunks_p(\d+)")
_DAYS_BACK = 3650
_DAYS_AHEAD = 365
#: The lookup tables the writer reads by trace id in every batch (see
#: :meth:`PostgresStore._maintain_lookup_tables`), and the spans written before
#: they are first vacuumed and analyzed, at most between two times.
_LOOKUP_TABLES = "span_parents, dep_pending"
_ANALYZE_FIRST_SPANS = 10_000
_ANALYZE_MAX_SPANS = 1_000_000


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
        self._analyze_at = _ANALYZE_FIRST_SPANS
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

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

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

    def _insert_chunks(self, conn: Any, rows: list[ChunkRow]) -> None:
        """Chunks with their index entries as arrays (see ``migrations.py``), by
        binary COPY: far less work per row for the server than row-by-row
        INSERTs."""
        if not rows:
            return
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY chunks (trace_id, day, digest, keys, attrs, rids, data)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(_CHUNK_TYPES)
            for r in rows:
                copy.write_row(
                    (
                        r.trace_id,
                        r.start_ns // DAY_NS,  # partitions: see _prepare_group
                        r.digest,
                        sorted(r.keys),
                        sorted(r.attrs | {rid_term(k) for k in r.rids}),
                        pack_rids(r.rids) if r.rids else None,
                        r.data,
                    )
                )

    def _run_group(self, jobs: list[Job]) -> list[Any]:
        results = super()._run_group(jobs)
        self._maintain_lookup_tables()
        return results

    def _maintain_lookup_tables(self) -> None:
        """VACUUM and ANALYZE the writer's lookup tables each time the spans
        written have doubled (then every :data:`_ANALYZE_MAX_SPANS`), so that
        neither depends on autovacuum (which may be off, or not come round
        while a fresh database fills): without statistics PostgreSQL takes a
        batch's ``trace_id = ANY(...)`` for most of the table and scans all of
        it, and every row these short-lived tables delete or update leaves a
        dead one behind. They stay small (their rows expire), so this is cheap."""
        written = self.spans_written
        if written < self._analyze_at:
            return
        self._analyze_at = written + min(max(written, _ANALYZE_FIRST_SPANS), _ANALYZE_MAX_SPANS)
        try:
            # VACUUM runs outside a transaction: a connection of its own.
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f"VACUUM (ANALYZE) {_LOOKUP_TABLES}")
        except psycopg.Error:
            log.warning("VACUUM of the lookup tables failed", exc_info=True)

    def _prepare_group(self, jobs: list[Job]) -> None:
        """Create the day partitions the group's chunks need before its
        transaction reads ``chunks``: creating a partition locks the default
        partition, which that transaction would hold."""
        days: set[int] = set()
        for job in jobs:
            if job.kind != "spans":
                continue
            if isinstance(job.payload, PreparedBatch):
                days.update(t.start_ns // DAY_NS for t in job.payload.traces)
            else:  # a batch that could not be prepared before (see submit_batch)
                days.update(
                    min(f[5] for f in g.facts) // DAY_NS for g in job.payload.groups.values()
                )
        if days:
            self._ensure_partitions(days)

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
                except psycopg.Error as exc:
                    # e.g. the default partition already holds rows of that day:
                    # the day's chunks go there (retention deletes them by trace).
                    log.warning("could not create chunk partition %d: %s", day, exc)
                self._days.add(day)

    # index entries on chunk rows (see the module docstring) -----------------
    def _has_keys_sql(self, n: int) -> str:
        return (
            "EXISTS (SELECT 1 FROM chunks c WHERE c.trace_id = t.trace_id"
            f" AND c.keys && ARRAY[{marks(n)}]::integer[])"
        )

    def _has_attr_sql(self, conn: Any, h: int) -> tuple[str, list[Any]]:
        return (
            "t.trace_id IN (SELECT c.trace_id FROM chunks c WHERE c.attrs @> ARRAY[?::bigint])",
            [h],
        )

    def _rid_sql(self, key: bytes) -> tuple[str, Any]:
        return "SELECT c.trace_id FROM chunks c WHERE c.attrs @> ARRAY[?::bigint]", rid_term(key)

    def _unpack_keys(self, keys: Any) -> list[int]:
        return list(keys or ())

    def _delete_chunks(self, conn: Any, trace_ids: Sequence[bytes], cutoff_ns: int) -> None:
        self._delete_in(conn, "chunks", "trace_id", trace_ids)

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
