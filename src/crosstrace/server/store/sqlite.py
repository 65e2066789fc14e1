"""The embedded store: one SQLite file, no server.

All writes go through one writer thread (``writer.GroupWriter``) that commits
every batch waiting in its queue in one transaction; readers use connections of
their own (one per thread), which WAL lets run while the writer writes.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A commit
has been written to the WAL file (handed to the operating system) before COMMIT
returns, so a crash or SIGKILL of this process never loses a committed
transaction; only an operating-system crash or power loss may lose the last few
commits (the WAL is not fsynced at every commit), and the database stays
consistent either way.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crosstrace.server.store.codec import (
    HASH_WIDTH,
    pack_ints,
    pack_keys,
    pack_posting,
    pack_rids,
    unpack_ints,
    unpack_keys,
    unpack_rids,
)
from crosstrace.server.store.compact import ChunkCompaction
from crosstrace.server.store.migrations import migrate
from crosstrace.server.store.postings import drop_postings
from crosstrace.server.store.read import SQLStore
from crosstrace.server.store.sql import ChunkRow, chunks, marks
from crosstrace.server.store.writer import Job

__all__ = ["SQLiteStore"]

URL_PREFIX = "sqlite://"
_BUSY_TIMEOUT_MS = 10_000
#: Page size of a new database. Chunks of a trace sent in one batch are often
#: 2-3 KiB: at SQLite's 4 KiB a page holds one, and a third of the file is the
#: rest of the pages; 8 KiB pages leave far less unused.
PAGE_SIZE = 8192
#: WAL pages (4 KiB) written before the writer checkpoints.
_CHECKPOINT_PAGES = 16_384
#: Rounds of "delete the oldest slice" tried when enforcing a size limit.
_SIZE_ROUNDS = 25


class SQLiteStore(ChunkCompaction, SQLStore):
    """A :class:`~crosstrace.server.store.base.Store` in one SQLite file."""

    dialect = "sqlite"
    _merges_chunks = True
    _parents_conflict = (
        "ON CONFLICT (trace_id, t) DO UPDATE SET"
        " data = CAST(span_parents.data || excluded.data AS BLOB)"
    )

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # Telemetry is private: a new directory is the owner's only (0700), a new
        # database file too (0600; SQLite gives its WAL and shared-memory files
        # the database file's mode).
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if str(path) != ":memory:" and not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._wconn = self._connect()
        # Both only take effect before the first table (an existing database keeps
        # its page size); the page size goes first, or SQLite keeps its default.
        self._wconn.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")
        new = self._wconn.execute("PRAGMA page_count").fetchone()[0] == 0
        if new:
            # Lets a size limit give space back.
            self._wconn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        self._wconn.execute("PRAGMA journal_mode = WAL")
        self._wconn.execute("PRAGMA synchronous = NORMAL")  # see the module docstring
        self._wconn.execute("PRAGMA cache_size = -65536")
        # Checkpoint every 64 MiB of WAL rather than SQLite's 4 MiB: a page that
        # several commits change is copied into the database once, and the fsyncs
        # of a checkpoint come far less often (a third off the write cost at 1M
        # spans). The WAL file is cut back to that size after each checkpoint.
        self._wconn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
        self._wconn.execute(f"PRAGMA journal_size_limit = {_CHECKPOINT_PAGES * 4096}")
        try:
            migrate(self._wconn, "sqlite")
            self._init_compaction(self._wconn)
        except BaseException:
            self._wconn.close()
            raise
        super().__init__()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` (parent
        directories are created). In-memory databases are not supported: readers
        need their own connections to the same database."""
        if not url.startswith(URL_PREFIX):
            raise ValueError(f"not a sqlite URL: {url!r}")
        rest = url[len(URL_PREFIX) :]
        path = rest[1:] if rest.startswith("/") else rest
        path = path.split("?", 1)[0]
        if not path or path == ":memory:" or path.startswith("file::memory:"):
            raise ValueError("in-memory SQLite is not supported; give a file path")
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        return conn

    # hooks -------------------------------------------------------------------
    def _writer_conn(self) -> sqlite3.Connection:
        return self._wconn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            conn.execute("PRAGMA mmap_size = 268435456")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        yield conn

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

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
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks(len(cols))}) {conflict}"
        cur = conn.executemany(sql, rows)
        return int(cur.rowcount)

    def _insert_chunks(self, conn: Any, rows: list[ChunkRow], request_ids: bool = True) -> None:
        # Chunk ids are given here (by the writer thread), so that the attribute
        # entries can name their chunk.
        ids = self._new_chunk_ids(conn, len(rows))
        conn.executemany(
            "INSERT INTO chunks (id, trace_id, digest, data, keys, attrs, rids)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    cid,
                    r.trace_id,
                    r.digest,
                    r.data,
                    pack_keys(r.keys) if r.keys else None,
                    pack_ints(r.attrs, HASH_WIDTH) if r.attrs else None,
                    pack_rids(r.rids) if r.rids else None,
                )
                for cid, r in zip(ids, rows, strict=True)
            ],
        )
        # One posting per key and commit: the chunks of this commit that have it.
        for table, col, attr in (("key_chunks", "key", "keys"), ("attr_chunks", "h", "attrs")):
            postings: dict[int, list[int]] = {}
            for cid, r in zip(ids, rows, strict=True):
                for k in getattr(r, attr):
                    postings.setdefault(k, []).append(cid)
            conn.executemany(
                f"INSERT INTO {table} ({col}, chunk_id, more) VALUES (?, ?, ?)",
                [(k, *pack_posting(cids)) for k, cids in postings.items()],
            )
        if request_ids:
            conn.executemany(
                "INSERT INTO request_ids (rid, trace_id, kind) VALUES (?, ?, ?)"
                " ON CONFLICT (rid, trace_id)"
                " DO UPDATE SET kind = request_ids.kind | excluded.kind",
                [(k, r.trace_id, kind) for r in rows for k, kind in r.rids.items()],
            )

    def _committed(self) -> None:
        super()._committed()
        self._mark_chunks()

    def _idle_work(self) -> Callable[[], bool]:
        return self._compact_step  # merging quiet traces

    def _delete_chunks(self, conn: Any, trace_ids: Sequence[bytes], cutoff_ns: int) -> None:
        """Delete the chunks of *trace_ids* with the index entries they carry."""
        # The newest chunk may go: its id must not be given again.
        conn.execute(
            "UPDATE chunk_compaction SET id_floor = max(id_floor, ?,"
            " (SELECT coalesce(max(id), 0) FROM chunks))",
            (self._next_chunk_id - 1,),
        )
        for part in chunks(trace_ids):
            in_list = marks(len(part))
            keys: list[tuple[int, int]] = []
            attrs: list[tuple[int, int]] = []
            rids: list[tuple[bytes, bytes]] = []
            for cid, tid, packed_keys, packed_attrs, packed_rids in conn.execute(
                f"SELECT id, trace_id, keys, attrs, rids FROM chunks WHERE trace_id IN ({in_list})",
                part,
            ).fetchall():
                if packed_keys:
                    keys.extend((k, cid) for k in unpack_keys(packed_keys))
                if packed_attrs:
                    attrs.extend((h, cid) for h in unpack_ints(packed_attrs, HASH_WIDTH))
                if packed_rids:
                    rids.extend((rid, tid) for rid, _ in unpack_rids(packed_rids))
            drop_postings(conn, "key_chunks", "key", keys)
            drop_postings(conn, "attr_chunks", "h", attrs)
            conn.executemany("DELETE FROM request_ids WHERE rid = ? AND trace_id = ?", rids)
            conn.execute(f"DELETE FROM chunks WHERE trace_id IN ({in_list})", part)

    def _db_bytes(self, conn: Any) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        try:
            wal = os.path.getsize(f"{self.path}-wal")
        except OSError:
            wal = 0
        return int(pages * size + wal)

    def _close_connections(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        try:
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._wconn.close()

    def _run_group(self, jobs: list[Job]) -> list[Any]:
        # "raw" jobs run outside any transaction (checkpoint, vacuum).
        if len(jobs) == 1 and jobs[0].kind == "raw":
            return [jobs[0].payload(self._wconn)]
        raw = [j for j in jobs if j.kind == "raw"]
        if not raw:
            return super()._run_group(jobs)
        rest = [j for j in jobs if j.kind != "raw"]
        results = iter(super()._run_group(rest) if rest else [])
        raw_results = iter([j.payload(self._wconn) for j in raw])
        return [next(raw_results) if j.kind == "raw" else next(results) for j in jobs]

    def compact(self) -> int:
        """Merge the chunks of every trace written in several commits now, without
        waiting for the quiet period (see ``compact.py``), a step per writer job,
        then give the free pages back to the file system. Returns the traces
        merged."""
        before = self.traces_merged
        step = lambda conn: self._compact_step(everything=True)  # noqa: E731
        while self._writer.submit("raw", step, 1).result():
            pass
        self._writer.submit("raw", _incremental_vacuum, 1).result()
        self.checkpoint()
        return self.traces_merged - before

    def stats(self) -> dict[str, int]:
        return {
            **super().stats(),
            "traces_merged": self.traces_merged,
            "chunks_merged": self.chunks_merged,
        }

    # size limit ----------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes held by live pages (the file size once free pages are returned)."""

        def used(conn: Any) -> int:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
            return int((pages - free) * size)

        return int(self._writer.submit("raw", used, 1).result())

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate the WAL."""
        self._writer.submit(
            "raw", lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), 1
        ).result()

    def apply_retention(self, max_age_ns: int | None, max_bytes: int | None = None) -> int:
        """Age limit as in every store, then, with *max_bytes*, delete the oldest
        traces and logs (a slice at a time, by start time) until the live pages fit,
        and give the freed pages back to the file system (incremental vacuum)."""
        removed = super().apply_retention(max_age_ns)
        if max_bytes is None:
            if removed:
                self._call(self._sweep_postings)
            return removed
        for _ in range(_SIZE_ROUNDS):
            used = self.used_bytes()
            if used <= max_bytes:
                break
            bounds = self._call(self._time_bounds)
            if bounds is None:
                break
            lo, hi = bounds
            frac = max(0.05, (used - max_bytes) / used)
            cutoff = lo + max(1, int((hi - lo) * frac))
            removed += self._delete_before(cutoff)
        if removed:
            self._call(self._sweep_postings)
        self._writer.submit("raw", _incremental_vacuum, 1).result()
        self.checkpoint()
        return removed

    def _time_bounds(self, conn: Any) -> tuple[int, int] | None:
        row = conn.execute(
            "SELECT min(lo), max(hi) FROM (SELECT min(start_ns) AS lo, max(start_ns) AS hi"
            " FROM traces UNION ALL SELECT min(time_ns), max(time_ns) FROM logs)"
        ).fetchone()
        if row[0] is None:
            return None
        return int(row[0]), int(row[1])


def _incremental_vacuum(conn: sqlite3.Connection) -> None:
    """Return every free page to the file system.

    The sqlite3 module steps a statement without result columns only once, and one
    step of ``PRAGMA incremental_vacuum`` frees one page: so step it once per page.
    """
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if free:
        conn.executemany("PRAGMA incremental_vacuum", [()] * free)
