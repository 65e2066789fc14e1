"""The write half shared by the SQLite and PostgreSQL stores: the group-commit
writer's transaction, turning span and log batches into rows, name interning and
the zstd dictionary of the span chunks.

Dependencies are counted at write time. A parent/child pair in one write is
counted directly. A child whose parent is not in the same write looks the parent
up in ``span_parents`` (CLIENT and PRODUCER spans, the ones whose children run in
another service, except database calls, which have none) or, if the parent has
not arrived yet, waits in ``dep_pending`` until it does. Both lookups are pruned
after :data:`PARENT_LOOKUP_TTL_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from crosstrace.server.batch.spanbatch import SpanBatch
from crosstrace.server.batch.values import INDEXED_ATTRIBUTES
from crosstrace.server.model import RES_HOST_NAME, LogRecord
from crosstrace.server.redaction import default_redactor
from crosstrace.server.store.codec import compress_chunk, pack_blob
from crosstrace.server.store.merge import digests_of, merge_chunk_rows
from crosstrace.server.store.prepare import (
    BUCKET_NS,
    PreparedBatch,
    PreparedTrace,
    prepare_batch,
    service_of_spans,
)
from crosstrace.server.store.sql import LOG_COLUMNS, ChunkRow, SQLBase, chunks
from crosstrace.server.store.writer import GroupWriter, Job, JobFailed
from crosstrace.server.store.zdict import ChunkDictionary

__all__ = [
    "BUCKET_NS",
    "INDEXED_ATTRIBUTES",
    "PARENT_LOOKUP_TTL_S",
    "SQLWriter",
]

log = logging.getLogger(__name__)

#: How long the cross-write parent lookups are kept (seconds).
PARENT_LOOKUP_TTL_S = 3600
#: Traces whose index entries are remembered as written, per generation (two
#: generations are kept).
WRITTEN_GENERATION = 20_000
#: Bytes per waiting child in ``dep_pending.data``: parent id, service id, error, hour.
_PENDING_SIZE = 21


class _Written:
    """Attribute hashes and (request id, kind) pairs that recent commits indexed,
    per trace: two generations of at most *size* traces, the older dropped as a
    whole."""

    __slots__ = ("new", "old", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.new: dict[bytes, set[Any]] = {}
        self.old: dict[bytes, set[Any]] = {}

    def get(self, trace_id: bytes) -> set[Any] | None:
        return self.new.get(trace_id) or self.old.get(trace_id)

    def add(self, entries: list[tuple[bytes, set[Any]]]) -> None:
        new = self.new
        for tid, items in entries:
            mine = new.get(tid)
            if mine is None:
                mine = new[tid] = set(self.old.get(tid, ()))
            mine |= items
        if len(new) >= self.size:
            self.old, self.new = new, {}

    def clear(self) -> None:
        self.new.clear()
        self.old.clear()


class SQLWriter(ChunkDictionary, SQLBase):
    """The write path of both stores."""

    #: Whether the chunks of one trace from the writes of one commit are merged.
    _merges_chunks = False
    #: How a ``span_parents`` row meets one of the same key (SQLite: one row per
    #: trace and second, the packed callers appended).
    _parents_conflict = ""

    def __init__(self) -> None:
        super().__init__()
        self._op_cache: dict[tuple[int, str], int] = {}
        self._written = _Written(WRITTEN_GENERATION)
        self._txn_written: list[tuple[bytes, set[Any]]] = []
        self._txn_chunks: list[ChunkRow] = []
        self._init_dictionary()
        self._counter_lock = threading.Lock()
        self.spans_written = 0
        self.logs_written = 0
        self._retention: Any = None
        self._writer = GroupWriter(
            f"crosstrace-{self.dialect}-writer",
            self._run_group,
            self._idle_work(),
        )
        self._call(self._load_dictionary)

    # ------------------------------------------------------------------ write
    def submit_batch(self, batch: SpanBatch | PreparedBatch) -> Future[None]:
        """Queue a batch for the writer; a :class:`SpanBatch` is prepared first, in
        the calling thread."""
        if isinstance(batch, PreparedBatch) and not batch.compressed:
            self._lacked_dictionary()
        if isinstance(batch, SpanBatch):
            try:
                batch = prepare_batch(batch, self._published)
            except Exception:
                # Left as it is: it fails again in the writer, and is reported and
                # counted there as a failed write.
                log.debug("batch not prepared before the writer", exc_info=True)
        return self._writer.submit("spans", batch, len(batch))

    def submit_logs(self, logs: Sequence[LogRecord]) -> Future[int]:
        """Queue *logs*; secrets in them are masked first (in place), whichever
        way they came (OTLP, the broker, ``crosstrace logs import``)."""
        redactor = default_redactor()
        for record in logs:
            redactor.log(record)
        return self._writer.submit("logs", list(logs), len(logs))

    def _idle_work(self) -> Callable[[], bool] | None:
        """What the writer thread does, a step at a time, while no write waits
        (see ``writer.GroupWriter``); none here."""
        return None

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """Run *fn(conn)* in the writer thread, in a transaction; return its result."""
        return self._writer.submit("call", fn, 1).result()

    def _run_group(self, jobs: list[Job]) -> list[Any]:
        """All *jobs* in one transaction, each under a savepoint of its own: a job
        that fails is rolled back alone and reported as :class:`JobFailed`."""
        self._prepare_group(jobs)
        conn = self._writer_conn()
        self._txn_names.clear()
        self._txn_ops.clear()
        self._txn_trained.clear()
        self._txn_written.clear()
        self._txn_chunks.clear()
        self._begin(conn)
        results: list[Any] = []
        spans = logs = 0
        try:
            self._adopt_dictionary(conn)
            for job in jobs:
                marks = (
                    len(self._txn_names),
                    len(self._txn_ops),
                    len(self._txn_trained),
                    len(self._txn_written),
                )
                pending = len(self._txn_chunks)
                if job.kind != "spans":
                    self._flush_chunks(conn)  # in the order the jobs came
                self._x(conn, "SAVEPOINT job")
                try:
                    if job.kind == "spans":
                        result: Any = None
                        spans += self._write_batch(conn, job.payload)
                    elif job.kind == "logs":
                        result = self._write_logs(conn, job.payload)
                        logs += result
                    else:
                        result = job.payload(conn)
                except Exception as exc:
                    self._x(conn, "ROLLBACK TO SAVEPOINT job")
                    self._x(conn, "RELEASE SAVEPOINT job")
                    self._forget_rolled_back(*marks)
                    del self._txn_chunks[pending:]
                    log.warning("store write failed: %s", exc)
                    results.append(JobFailed(exc))
                    continue
                self._x(conn, "RELEASE SAVEPOINT job")
                results.append(result)
            self._flush_chunks(conn)
            self._commit(conn)
        except BaseException:
            try:
                self._rollback(conn)
            finally:
                self._forget_rolled_back(0, 0, 0, 0)
            raise
        self._committed()
        with self._counter_lock:
            self.spans_written += spans
            self.logs_written += logs
        return results

    def _committed(self) -> None:
        """Remember what the committed transaction wrote: index entries, and a
        dictionary it took up (now usable by batches prepared elsewhere)."""
        self._written.add(self._txn_written)
        self._publish_dictionary()

    def _forget_rolled_back(self, names: int, ops: int, trained: int, written: int) -> None:
        """Ids handed out, dictionaries taken up and index entries written after
        these marks were rolled back (ids may be reused): forget them."""
        del self._txn_written[written:]
        for name in self._txn_names[names:]:
            nid = self._name_ids.pop(name, None)
            if nid is not None:
                self._names.pop(nid, None)
        del self._txn_names[names:]
        for key in self._txn_ops[ops:]:
            self._op_ids.pop(key, None)
        if len(self._txn_ops) > ops:
            self._op_cache.clear()
        del self._txn_ops[ops:]
        self._forget_dictionaries(trained)

    def _stored_digests(self, conn: Any, tids: list[bytes]) -> set[tuple[bytes, int]]:
        """(trace id, digest) of the chunks already stored for *tids*."""
        out: set[tuple[bytes, int]] = set()
        for part in chunks(tids):
            cond, params = self._in("trace_id", part)
            for tid, digest in self._q(
                conn,
                f"SELECT trace_id, digest FROM chunks WHERE {cond} AND digest IS NOT NULL",
                params,
            ):
                out.update((bytes(tid), d) for d in digests_of(digest))
        return out

    def _write_batch(self, conn: Any, pb: PreparedBatch | SpanBatch) -> int:
        """Store one prepared batch: a chunk, a summary merge and the index entries
        not yet written per trace. Returns the spans stored (a group stored before
        is skipped)."""
        if isinstance(pb, SpanBatch):  # one that could not be prepared beforehand
            pb = prepare_batch(pb, self._published)
        traces = pb.traces
        if not traces:
            return 0
        intern = self._intern
        seen = self._stored_digests(conn, [t.trace_id for t in traces])
        seen.update((r.trace_id, d) for r in self._txn_chunks for d in digests_of(r.digest))
        now_s = int(time.time())
        ops = self._op_cache
        written = self._written
        stored = 0
        chunk_rows: list[ChunkRow] = []
        trace_rows = []
        parents: list[tuple[bytes, int, bytes]] = []
        orphans: dict[bytes, list[tuple[bytes, int, int, int]]] = {}
        edges: dict[tuple[int, int, int], list[int]] = {}
        group_traces: dict[bytes, PreparedTrace] = {}
        new_entries = self._txn_written
        for t in traces:
            tid = t.trace_id
            if (tid, t.digest) in seen:
                continue
            seen.add((tid, t.digest))
            stored += t.spans
            group_traces[tid] = t
            keys: set[int] = set()
            for svc, name in t.ops:
                sid = intern(conn, svc)
                op = ops.get((sid, name))
                if op is None:
                    op = ops[sid, name] = self._intern_op(conn, sid, intern(conn, name))
                keys.add(sid)
                keys.add(-op)
            for hour, caller, callee, err in t.edges:
                e = edges.setdefault((hour, intern(conn, caller), intern(conn, callee)), [0, 0])
                e[0] += 1
                e[1] += err
            if t.waiting:
                orphans[tid] = [(p, intern(conn, s), err, h) for p, s, err, h in t.waiting]
            if t.callers:
                parents.append(
                    (
                        tid,
                        now_s,
                        b"".join(sp + intern(conn, s).to_bytes(4, "big") for sp, s in t.callers),
                    )
                )
            trace_rows.append(
                (
                    tid,
                    t.start_ns,
                    t.end_ns,
                    intern(conn, t.root_service),
                    intern(conn, t.root_op),
                    t.root_real,
                    t.root_start,
                    t.spans,
                    t.errors,
                    t.project,
                    t.domain,
                )
            )
            # Attribute and request id entries an earlier write already made for
            # this trace are skipped (a trace comes in one batch per service,
            # mostly with the same ids and attribute values).
            entries: set[Any] = {*t.attrs, *t.rids.items()}
            done = written.get(tid)
            if done:
                entries -= done
                hashes = {h for h in t.attrs if h in entries}
                rids = {r: kind for r, kind in t.rids.items() if (r, kind) in entries}
            else:
                hashes, rids = set(t.attrs), t.rids
            new_entries.append((tid, entries))
            data = t.data
            if not pb.compressed:
                data = compress_chunk(data, self._zdict)
            chunk_rows.append(ChunkRow(tid, t.start_ns, t.digest, data, keys, hashes, rids))
        if not chunk_rows:
            return 0
        self._resolve_dependencies(conn, group_traces, orphans, edges, now_s)
        if self._merges_chunks:
            self._txn_chunks.extend(chunk_rows)  # inserted at the end of the commit
        else:
            self._sample_rows(conn, chunk_rows)
            self._insert_chunks(conn, chunk_rows)
        self._merge_summaries(conn, trace_rows)
        if parents:
            self._insert(
                conn,
                "span_parents",
                ("trace_id", "t", "data"),
                ("bytea", "bigint", "bytea"),
                parents,
                self._parents_conflict,
            )
        if edges:
            self._insert(
                conn,
                "dep_edges",
                ("bucket", "caller", "callee", "calls", "errors"),
                ("bigint", "integer", "integer", "bigint", "bigint"),
                [(b, c, d, n, e) for (b, c, d), (n, e) in edges.items()],
                "ON CONFLICT (bucket, caller, callee) DO UPDATE SET"
                " calls = dep_edges.calls + excluded.calls,"
                " errors = dep_edges.errors + excluded.errors",
            )
        return stored

    def _flush_chunks(self, conn: Any) -> None:
        """Insert the chunks the commit's writes left pending, a trace's chunks
        merged into one (``merge.py``)."""
        rows, self._txn_chunks = self._txn_chunks, []
        if rows:
            rows = merge_chunk_rows(
                rows, lambda d: self._dictionary(conn, d), self._merge_compressor()
            )
            self._sample_rows(conn, rows)
            self._insert_chunks(conn, rows)

    def _merge_summaries(self, conn: Any, trace_rows: list[tuple[Any, ...]]) -> None:
        lo, hi = self._least, self._greatest
        better = (
            "(excluded.root_real > traces.root_real OR (excluded.root_real = traces.root_real"
            " AND excluded.root_start < traces.root_start))"
        )
        self._insert(
            conn,
            "traces",
            (
                "trace_id",
                "start_ns",
                "end_ns",
                "root_service",
                "root_op",
                "root_real",
                "root_start",
                "span_count",
                "error_count",
                "project_id",
                "domain_id",
            ),
            (
                "bytea",
                "bigint",
                "bigint",
                "integer",
                "integer",
                "smallint",
                "bigint",
                "integer",
                "integer",
                "text",
                "text",
            ),
            trace_rows,
            "ON CONFLICT (trace_id) DO UPDATE SET"
            f" start_ns = {lo}(traces.start_ns, excluded.start_ns),"
            f" end_ns = {hi}(traces.end_ns, excluded.end_ns),"
            f" root_service = CASE WHEN {better} THEN excluded.root_service"
            " ELSE traces.root_service END,"
            f" root_op = CASE WHEN {better} THEN excluded.root_op ELSE traces.root_op END,"
            f" root_start = CASE WHEN {better} THEN excluded.root_start"
            " ELSE traces.root_start END,"
            f" root_real = {hi}(traces.root_real, excluded.root_real),"
            " span_count = traces.span_count + excluded.span_count,"
            " error_count = traces.error_count + excluded.error_count,"
            # The owner comes from the first batch holding the root span (a batch
            # without it claims nothing, see prepare.py); later ones cannot change it.
            " project_id = CASE WHEN traces.root_real = 0 AND excluded.root_real = 1"
            " THEN excluded.project_id ELSE traces.project_id END,"
            " domain_id = CASE WHEN traces.root_real = 0 AND excluded.root_real = 1"
            " THEN excluded.domain_id ELSE traces.domain_id END",
        )

    def _resolve_dependencies(
        self,
        conn: Any,
        group_traces: dict[bytes, PreparedTrace],
        orphans: dict[bytes, list[tuple[bytes, int, int, int]]],
        edges: dict[tuple[int, int, int], list[int]],
        now_s: int,
    ) -> None:
        """Count edges whose parent and child came in different writes.

        ``span_parents`` rows pack (span id, service id) of the CLIENT / PRODUCER
        spans of one trace and write; ``dep_pending`` rows pack (parent id, service
        id, error, hour) of the children still waiting for their parent."""

        def add(bucket: int, caller: int, callee: int, err: int) -> None:
            if caller != callee:
                e = edges.setdefault((bucket, caller, callee), [0, 0])
                e[0] += 1
                e[1] += err

        tids = list(group_traces)
        done: list[int] = []
        shrunk: list[tuple[bytes, int]] = []
        # Children stored earlier, waiting for a parent that is in this write.
        for part in chunks(tids):
            cond, params = self._in("trace_id", part)
            for pid, tid_, data_ in self._q(
                conn, f"SELECT id, trace_id, data FROM dep_pending WHERE {cond}", params
            ):
                svc_of = service_of_spans(group_traces[bytes(tid_)])
                data = bytes(data_)
                left = []
                for i in range(0, len(data), _PENDING_SIZE):
                    parent = data[i : i + 8]
                    pname = svc_of.get(parent)
                    if pname is None:
                        left.append(data[i : i + _PENDING_SIZE])
                        continue
                    svc = int.from_bytes(data[i + 8 : i + 12], "big")
                    bucket = int.from_bytes(data[i + 13 : i + 21], "big", signed=True)
                    add(bucket, self._intern(conn, pname), svc, data[i + 12])
                if not left:
                    done.append(pid)
                elif len(left) * _PENDING_SIZE != len(data):
                    shrunk.append((b"".join(left), pid))
        if done:
            self._delete_in(conn, "dep_pending", "id", done)
        if shrunk:
            conn.cursor().executemany(
                self._sql("UPDATE dep_pending SET data = ? WHERE id = ?"), shrunk
            )
        if not orphans:
            return
        # Children in this write whose parent was stored earlier (or not yet).
        known: dict[bytes, dict[bytes, int]] = {}
        otids = list(orphans)
        for part in chunks(otids):
            cond, params = self._in("trace_id", part)
            for tid_, data_ in self._q(
                conn, f"SELECT trace_id, data FROM span_parents WHERE {cond}", params
            ):
                data = bytes(data_)
                m = known.setdefault(bytes(tid_), {})
                for i in range(0, len(data), 12):
                    m[data[i : i + 8]] = int.from_bytes(data[i + 8 : i + 12], "big")
        rows = []
        for tid, waiting in orphans.items():
            m = known.get(tid, {})
            left = []
            for parent, svc, err, bucket in waiting:
                psvc = m.get(parent)
                if psvc is not None:
                    add(bucket, psvc, svc, err)
                else:
                    left.append(
                        parent
                        + svc.to_bytes(4, "big")
                        + bytes((err,))
                        + bucket.to_bytes(8, "big", signed=True)
                    )
            if left:
                rows.append((tid, now_s, b"".join(left)))
        if rows:
            self._insert(
                conn,
                "dep_pending",
                ("trace_id", "t", "data"),
                ("bytea", "bigint", "bytea"),
                rows,
            )

    def _write_logs(self, conn: Any, logs: list[LogRecord]) -> int:
        rows = []
        for r in logs:
            extra = pack_blob((r.attributes, r.resource)) if r.attributes or r.resource else None
            host = r.resource.get(RES_HOST_NAME)
            rows.append(
                (
                    r.time_ns,
                    r.severity_number,
                    r.severity_text,
                    self._intern(conn, r.service),
                    r.trace_id,
                    r.span_id,
                    r.request_id,
                    r.global_request_id,
                    r.user_id,
                    r.project_id,
                    r.domain_id,
                    r.logger,
                    r.body,
                    extra,
                    r.dedup_key,
                    self._intern(conn, host) if isinstance(host, str) and host else None,
                    r.imported_ns,
                )
            )
        return self._insert(
            conn,
            "logs",
            [c.strip() for c in LOG_COLUMNS.split(",")],
            (
                "bigint",
                "integer",
                "text",
                "integer",
                "bytea",
                "bytea",
                "text",
                "text",
                "text",
                "text",
                "text",
                "text",
                "text",
                "bytea",
                "bytea",
                "integer",
                "bigint",
            ),
            rows,
            "ON CONFLICT (dedup_key) DO NOTHING",
        )
