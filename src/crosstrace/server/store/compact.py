"""A trace's chunks of several commits merged into one once the trace is quiet
(SQLite).

Over HTTP, a trace's spans come in the batches of several exporters, so they
are committed in several transactions and stored as several chunks: 3.7 per
trace on the benchmark's entropy load, where writes that come together give
one (``merge.py``). Each chunk pays for its row, its index entries and its own
compressed frame. Once no chunk has been written for :data:`QUIET_S` seconds
(Tempo cuts a trace after the same idle period), the writer merges a trace's
chunks into one. It does so while its queue is empty, a bounded step at a time,
so a write never waits long behind it. While writes keep coming, merging takes
at most :data:`BUSY_SHARE` of the writer's time, less as the server process's
own CPU use nears :data:`CPU_CEILING` of a core, none at full load; it catches
up once the writes stop. A merge costs ~0.3-0.4 ms of CPU per trace: done at
once, it took a fifth off ingest at full load, and a tenth of the writer's
time still took 8 % off it on the default load.

Progress is a chunk id, ``chunk_compaction.upto``: every chunk up to it has
been looked at. Chunk ids only grow, and the writer keeps the id it had reached
at each commit. A step reads the next chunks up to the last id committed
:data:`QUIET_S` ago and looks up every chunk of their traces. A trace is merged
when it has several chunks and none of them is newer than that id.

The merged chunk is appended, with a new id and postings of its own (written
in the place of the first chunk, the larger row split pages and the file grew
by a fifth). The attribute entries of the chunks it replaced are taken out of
their postings: a rare value is searched by collecting its chunks first when it
has few entries (``read.py``), and those would count twice. Their service and
operation keys keep their bits (a search only asks a key's posting about chunks
that exist; taking them out would cost about as much again as the merge), and
``chunk_compaction.id_floor`` (the highest id ever given) means no id is given
twice. Retention deletes the postings that hold no live chunk anymore.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crosstrace.server.store.codec import HASH_WIDTH, unpack_ints, unpack_keys, unpack_rids
from crosstrace.server.store.merge import merge_chunk_rows
from crosstrace.server.store.postings import drop_postings
from crosstrace.server.store.sql import ChunkRow, chunks, marks

if TYPE_CHECKING:
    import zstandard

__all__ = ["BUSY_SHARE", "CPU_CEILING", "IDLE_S", "QUIET_S", "STEP_CHUNKS", "ChunkCompaction"]

#: Seconds without a new chunk after which a trace's chunks are merged.
QUIET_S = 10.0
#: Chunks a compaction step reads (its traces' other chunks come with them).
STEP_CHUNKS = 256
#: Share of the writer's time merging may take while writes keep coming...
BUSY_SHARE = 0.1
#: ... less as the process's own CPU use (apart from merging) nears this many
#: cores, none beyond: at full load the server's core is the limit.
CPU_CEILING = 0.8
#: Seconds without a write after which merging takes all the time it needs.
IDLE_S = 1.0
#: Seconds merging pauses after a step failed (e.g. the disk is full).
FAILED_PAUSE_S = 60.0


class ChunkCompaction:
    """The compaction half of the SQLite store: :meth:`_compact_step` runs in
    the writer thread, as its idle work."""

    _wconn: sqlite3.Connection
    #: Traces merged, and the chunks they had, since the store was opened.
    traces_merged = 0
    chunks_merged = 0

    if TYPE_CHECKING:

        def _dictionary(self, conn: Any, did: int) -> zstandard.ZstdCompressionDict: ...
        def _merge_compressor(self) -> tuple[int, zstandard.ZstdCompressor] | None: ...
        def _insert_chunks(
            self, conn: Any, rows: list[ChunkRow], request_ids: bool = True
        ) -> None: ...
        def _delete_in(self, conn: Any, table: str, column: str, values: Sequence[Any]) -> None: ...

    def _init_compaction(self, conn: sqlite3.Connection) -> None:
        upto, floor = conn.execute("SELECT upto, id_floor FROM chunk_compaction").fetchone()
        top = int(conn.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0])
        self._compacted_upto = int(upto)
        self._next_chunk_id = max(top, int(floor)) + 1
        # (monotonic time, the highest chunk id then); what the store held when
        # it was opened counts as written now.
        now = time.monotonic()
        self._chunk_marks: deque[tuple[float, int]] = deque([(now, top)])
        self._quiet_id = 0
        self._last_write = now
        self._next_step = now  # the earliest start of a step while writes come
        self._paused_until = now
        # This process's CPU use apart from merging: (wall, CPU, merging CPU)
        # when it was last measured, and what it was.
        self._merging_cpu = 0.0
        self._cpu_mark = (now, time.process_time(), 0.0)
        self._load = 0.0

    def _new_chunk_ids(self, conn: sqlite3.Connection, n: int) -> range:
        """*n* chunk ids never given before: above every chunk (another process
        may have written some) and above every id given here."""
        top = int(conn.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0])
        first = max(top + 1, self._next_chunk_id)
        self._next_chunk_id = first + n
        return range(first, first + n)

    def _mark_chunks(self, write: bool = True) -> None:
        """After a commit (of writes, or of a step): remember the highest chunk
        id it reached, and when."""
        if write:
            self._last_write = time.monotonic()
        top = self._next_chunk_id - 1
        last = self._chunk_marks[-1][1] if self._chunk_marks else self._quiet_id
        if top > last:
            self._chunk_marks.append((time.monotonic(), top))

    def _quiet_bound(self) -> int:
        """The highest chunk id committed at least :data:`QUIET_S` ago."""
        marks_ = self._chunk_marks
        old = time.monotonic() - QUIET_S
        while marks_ and marks_[0][0] <= old:
            self._quiet_id = max(self._quiet_id, marks_.popleft()[1])
        return self._quiet_id

    def _share(self, now: float) -> float:
        """The share of the writer's time merging may take while writes come:
        :data:`BUSY_SHARE`, less as this process's CPU use apart from merging
        (measured over the last second or more) nears :data:`CPU_CEILING`,
        none beyond it."""
        wall0, cpu0, merging0 = self._cpu_mark
        if now - wall0 >= 1.0:
            cpu = time.process_time()
            used = (cpu - cpu0 - (self._merging_cpu - merging0)) / (now - wall0)
            self._load = max(0.0, used)
            self._cpu_mark = (now, cpu, self._merging_cpu)
        return BUSY_SHARE * max(0.0, 1 - self._load / CPU_CEILING)

    def _compact_step(self, everything: bool = False) -> bool:
        """One step (its own transaction); *everything*: without waiting for the
        quiet period. Returns whether more chunks are left to look at (``False``
        too when it is not yet time for a step while writes come)."""
        began = time.monotonic()
        busy = began - self._last_write < IDLE_S
        share = self._share(began) if busy else 1.0
        if not everything:
            if began < self._paused_until or (busy and began < self._next_step):
                return False
            if share <= 0:
                self._next_step = began + 1.0  # asked again in a second
                return False
        cpu = time.process_time()
        bound = self._next_chunk_id - 1 if everything else self._quiet_bound()
        start = self._compacted_upto
        if bound <= start:
            return False
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT id, trace_id FROM chunks WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (start, bound, STEP_CHUNKS),
            ).fetchall()
            reached = int(rows[-1][0]) if len(rows) == STEP_CHUNKS else bound
            traces, replaced = self._merge_traces(
                conn, list(dict.fromkeys(bytes(r[1]) for r in rows)), bound
            )
            conn.execute(
                "UPDATE chunk_compaction SET upto = ?, id_floor = ?",
                (reached, self._next_chunk_id - 1),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._paused_until = time.monotonic() + FAILED_PAUSE_S
            raise
        self._compacted_upto = reached
        self.traces_merged += traces
        self.chunks_merged += replaced
        self._mark_chunks(write=False)
        ended = time.monotonic()
        self._merging_cpu += time.process_time() - cpu
        if share > 0:
            self._next_step = ended + (ended - began) * (1 / share - 1)
        return reached < bound

    def _merge_traces(
        self, conn: sqlite3.Connection, trace_ids: list[bytes], bound: int
    ) -> tuple[int, int]:
        """Merge the chunks of each of *trace_ids* that has several, none above
        *bound*. Returns (traces merged, chunks they had)."""
        found: dict[bytes, list[tuple[int, ChunkRow]]] = {}
        for part in chunks(trace_ids):
            for cid, tid_, digest, data, keys, attrs, rids in conn.execute(
                "SELECT id, trace_id, digest, data, keys, attrs, rids FROM chunks"
                f" WHERE trace_id IN ({marks(len(part))}) ORDER BY id",
                part,
            ):
                tid = bytes(tid_)
                row = ChunkRow(
                    tid,
                    0,
                    digest,
                    bytes(data),
                    set(unpack_keys(keys)) if keys else set(),
                    set(unpack_ints(attrs, HASH_WIDTH)) if attrs else set(),
                    dict(unpack_rids(rids)) if rids else {},
                )
                found.setdefault(tid, []).append((int(cid), row))
        groups = {
            tid: group
            for tid, group in found.items()
            if len(group) > 1 and max(cid for cid, _ in group) <= bound
        }
        if not groups:
            return 0, 0
        out = merge_chunk_rows(
            [row for group in groups.values() for _, row in group],
            lambda d: self._dictionary(conn, d),
            self._merge_compressor(),
        )
        # A trace whose chunks cannot be merged (an older form) comes back as it was.
        count = Counter(r.trace_id for r in out)
        merged = [r for r in out if count[r.trace_id] == 1]
        if not merged:
            return 0, 0
        old = [cid for r in merged for cid, _ in groups[r.trace_id]]
        # The trace's request ids are in ``request_ids`` already.
        self._insert_chunks(conn, merged, request_ids=False)
        drop_postings(
            conn,
            "attr_chunks",
            "h",
            [(h, cid) for r in merged for cid, row in groups[r.trace_id] for h in row.attrs],
        )
        self._delete_in(conn, "chunks", "id", old)
        return len(merged), len(old)

    def _sweep_postings(self, conn: sqlite3.Connection) -> None:
        """Delete the postings whose chunks are all older than the oldest live
        chunk (left by merged and deleted chunks). A posting's last chunk is at
        most 8 ids per byte of its bitmap after its first."""
        row = conn.execute("SELECT min(id) FROM chunks").fetchone()
        oldest = self._next_chunk_id if row[0] is None else int(row[0])
        for table in ("key_chunks", "attr_chunks"):
            conn.execute(
                f"DELETE FROM {table} WHERE chunk_id + 8 * coalesce(length(more), 0) < ?",
                (oldest,),
            )
