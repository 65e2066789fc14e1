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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any

import zstandard

from crosstrace.server.model import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    STATUS_ERROR,
    LogRecord,
    SpanRecord,
)
from crosstrace.server.store.base import Store
from crosstrace.server.store.codec import (
    ZSTD_LEVEL,
    attr_hash,
    attr_text,
    compress_chunk,
    encode_chunk,
    encode_rid,
    pack_blob,
)
from crosstrace.server.store.writer import GroupWriter, Job

__all__ = [
    "BUCKET_NS",
    "DICT_SAMPLES",
    "INDEXED_ATTRIBUTES",
    "PARENT_LOOKUP_TTL_S",
    "SQLWriter",
]

log = logging.getLogger(__name__)

#: Attribute keys searchable through the index (plus every ``openstack.*`` key).
INDEXED_ATTRIBUTES = frozenset(
    {
        "http.request.method",
        "http.response.status_code",
        "http.route",
        "db.system",
        "db.operation.name",
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "messaging.destination.name",
        "exception.type",
        "error.type",
        "peer.service",
    }
)
_NOT_INDEXED = frozenset({ATTR_REQUEST_ID, ATTR_GLOBAL_REQUEST_ID})  # own table
#: How long the cross-write parent lookups are kept (seconds).
PARENT_LOOKUP_TTL_S = 3600
#: Dependency counts are kept per hour.
BUCKET_NS = 3600 * 10**9
#: The zstd dictionary is trained once this many chunks (or bytes) were written.
DICT_SAMPLES = 1_000
DICT_SAMPLE_BYTES = 8 * 2**20
DICT_SIZE = 64 * 1024
_IN_CHUNK = 500  # values per IN (...) list
_PARENT_KINDS = (3, 4)  # CLIENT, PRODUCER
_SCALARS = frozenset({str, int, float, bool, bytes})
_HASH_CACHE_SIZE = 200_000
_RID_LOCAL = 1
_RID_GLOBAL = 2

_LOG_COLS = (
    "time_ns, severity, severity_text, service_id, trace_id, span_id, request_id,"
    " global_request_id, user_id, project_id, domain_id, logger, body, extra, dedup_key"
)


def _chunks(seq: Sequence[Any], n: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SQLWriter(Store):
    """Connection hooks, helpers and the write path of both stores."""

    dialect = ""
    _least = "MIN"
    _greatest = "MAX"
    _like = "LIKE"

    def __init__(self) -> None:
        self._name_ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._op_ids: dict[tuple[int, int], int] = {}
        self._txn_names: list[str] = []
        self._txn_ops: list[tuple[int, int]] = []
        self._indexed_keys: dict[str, bool] = {}
        self._hash_cache: dict[tuple[str, type, Any], int] = {}
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._zdict: tuple[int, zstandard.ZstdCompressor] | None = None
        self._samples: list[bytes] = []
        self._sample_bytes = 0
        self._train_failures = 0
        self._txn_dict: int | None = None
        self._counter_lock = threading.Lock()
        self.spans_written = 0
        self.logs_written = 0
        self._retention: Any = None
        self._writer = GroupWriter(f"crosstrace-{self.dialect}-writer", self._run_group)
        self._call(self._load_dictionary)

    # ------------------------------------------------------------------ hooks
    def _writer_conn(self) -> Any:
        """The writer thread's connection."""
        raise NotImplementedError

    def _reader(self) -> AbstractContextManager[Any]:
        """A read connection for the calling thread."""
        raise NotImplementedError

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def _commit(self, conn: Any) -> None:
        raise NotImplementedError

    def _rollback(self, conn: Any) -> None:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        """Dialect placeholders from ``?``."""
        return sql

    def _insert(
        self,
        conn: Any,
        table: str,
        cols: Sequence[str],
        types: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
    ) -> int:
        """Insert many rows (``types`` are PostgreSQL types); return rows inserted."""
        raise NotImplementedError

    def _insert_chunks(self, conn: Any, rows: list[tuple[bytes, int, bytes]]) -> None:
        """Store (trace_id, start_ns, data) chunks."""
        raise NotImplementedError

    def _delete_chunks(self, conn: Any, trace_ids: Sequence[bytes], cutoff_ns: int) -> None:
        raise NotImplementedError

    def _db_bytes(self, conn: Any) -> int:
        raise NotImplementedError

    def _close_connections(self) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def _q(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(conn.execute(self._sql(sql), params).fetchall())

    def _x(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> int:
        cur = conn.execute(self._sql(sql), params)
        return int(cur.rowcount or 0)

    def _intern(self, conn: Any, name: str) -> int:
        """Id of *name* in the names table, adding it (writer thread only)."""
        nid = self._name_ids.get(name)
        if nid is not None:
            return nid
        self._x(conn, "INSERT INTO names (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,))
        nid = int(self._q(conn, "SELECT id FROM names WHERE name = ?", (name,))[0][0])
        self._name_ids[name] = nid
        self._names[nid] = name
        self._txn_names.append(name)
        return nid

    def _intern_op(self, conn: Any, service_id: int, name_id: int) -> int:
        key = (service_id, name_id)
        oid = self._op_ids.get(key)
        if oid is not None:
            return oid
        self._x(
            conn,
            "INSERT INTO operations (service_id, name_id) VALUES (?, ?)"
            " ON CONFLICT (service_id, name_id) DO NOTHING",
            key,
        )
        oid = int(
            self._q(conn, "SELECT id FROM operations WHERE service_id = ? AND name_id = ?", key)[0][
                0
            ]
        )
        self._op_ids[key] = oid
        self._txn_ops.append(key)
        return oid

    def _name(self, conn: Any, nid: int) -> str:
        name = self._names.get(nid)
        if name is None:
            rows = self._q(conn, "SELECT name FROM names WHERE id = ?", (nid,))
            name = str(rows[0][0]) if rows else f"#{nid}"
            if rows:
                self._names[nid] = name
        return name

    def _lookup_name(self, conn: Any, name: str) -> int | None:
        nid = self._name_ids.get(name)
        if nid is not None:
            return nid
        rows = self._q(conn, "SELECT id FROM names WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    def _is_indexed(self, key: str) -> bool:
        hit = self._indexed_keys.get(key)
        if hit is None:
            hit = (key in INDEXED_ATTRIBUTES or key.startswith("openstack.")) and (
                key not in _NOT_INDEXED
            )
            if len(self._indexed_keys) < 10_000:
                self._indexed_keys[key] = hit
        return hit

    # ------------------------------------------------------ zstd dictionary
    def _load_dictionary(self, conn: Any) -> None:
        """Compress new chunks with the newest dictionary in the database, if any."""
        rows = self._q(conn, "SELECT id, data FROM zdicts ORDER BY id DESC LIMIT 1")
        if rows:
            did, data = int(rows[0][0]), bytes(rows[0][1])
            d = zstandard.ZstdCompressionDict(data)
            self._dicts[did] = d
            self._zdict = (did, zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=d))

    def _dictionary(self, conn: Any, did: int) -> zstandard.ZstdCompressionDict:
        d = self._dicts.get(did)
        if d is None:
            rows = self._q(conn, "SELECT data FROM zdicts WHERE id = ?", (did,))
            if not rows:
                raise ValueError(f"span chunk needs zstd dictionary {did}, which is missing")
            d = self._dicts[did] = zstandard.ZstdCompressionDict(bytes(rows[0][0]))
        return d

    def _sample(self, conn: Any, raw: bytes) -> None:
        """Keep chunk payloads until there are enough to train the dictionary."""
        self._samples.append(raw)
        self._sample_bytes += len(raw)
        if len(self._samples) < DICT_SAMPLES and self._sample_bytes < DICT_SAMPLE_BYTES:
            return
        samples, self._samples, self._sample_bytes = self._samples, [], 0
        try:
            d = zstandard.train_dictionary(DICT_SIZE, list[Any](samples))
        except zstandard.ZstdError as exc:
            self._train_failures += 1
            log.info("zstd dictionary training failed (%s); chunks stay plain zstd", exc)
            if self._train_failures >= 3:
                self._samples = []
                self._sample_bytes = -(2**62)  # stop trying
            return
        data = d.as_bytes()
        self._x(
            conn,
            "INSERT INTO zdicts (data, created_ns) VALUES (?, ?)",
            (data, time.time_ns()),
        )
        did = int(self._q(conn, "SELECT max(id) FROM zdicts")[0][0])
        self._dicts[did] = d
        self._zdict = (did, zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=d))
        self._txn_dict = did

    # ------------------------------------------------------------------ write
    def submit_spans(self, spans: Sequence[SpanRecord]) -> Future[None]:
        return self._writer.submit("spans", list(spans), len(spans))

    def submit_logs(self, logs: Sequence[LogRecord]) -> Future[int]:
        return self._writer.submit("logs", list(logs), len(logs))

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """Run *fn(conn)* in the writer thread, in a transaction; return its result."""
        return self._writer.submit("call", fn, 1).result()

    def _run_group(self, jobs: list[Job]) -> list[Any]:
        conn = self._writer_conn()
        self._txn_names.clear()
        self._txn_ops.clear()
        self._txn_dict = None
        self._begin(conn)
        try:
            spans: list[SpanRecord] = []
            for job in jobs:
                if job.kind == "spans":
                    spans.extend(job.payload)
            if spans:
                self._write_spans(conn, spans)
            results: list[Any] = []
            for job in jobs:
                if job.kind == "logs":
                    results.append(self._write_logs(conn, job.payload))
                elif job.kind == "call":
                    results.append(job.payload(conn))
                else:
                    results.append(None)
            self._commit(conn)
        except BaseException:
            try:
                self._rollback(conn)
            finally:
                self._forget_rolled_back()
            raise
        with self._counter_lock:
            self.spans_written += len(spans)
            self.logs_written += sum(
                r for r, j in zip(results, jobs, strict=True) if j.kind == "logs"
            )
        return results

    def _forget_rolled_back(self) -> None:
        """Ids handed out in a rolled-back transaction may be reused: forget them."""
        for name in self._txn_names:
            nid = self._name_ids.pop(name, None)
            if nid is not None:
                self._names.pop(nid, None)
        for key in self._txn_ops:
            self._op_ids.pop(key, None)
        if self._txn_dict is not None:
            self._zdict = None
            self._dicts.pop(self._txn_dict, None)

    def _write_spans(self, conn: Any, spans: list[SpanRecord]) -> None:
        groups: dict[bytes, list[SpanRecord]] = {}
        for s in spans:
            g = groups.get(s.trace_id)
            if g is None:
                groups[s.trace_id] = [s]
            else:
                g.append(s)
        now_s = int(time.time())
        intern = self._intern
        chunk_rows: list[tuple[bytes, int, bytes]] = []
        trace_rows = []
        keys: set[tuple[bytes, int]] = set()
        rids: dict[tuple[bytes, bytes], int] = {}
        attrs: set[tuple[int, bytes]] = set()
        parents: list[tuple[bytes, bytes, int, int]] = []
        orphans: list[tuple[bytes, bytes, int, int, int]] = []
        edges: dict[tuple[int, int, int], list[int]] = {}
        group_ids: dict[bytes, dict[bytes, int]] = {}
        is_indexed = self._is_indexed
        indexed = self._indexed_keys
        hashes = self._hash_cache
        rid_texts: dict[str, int] = {}
        pairs: set[tuple[str, type, Any]] = set()
        for tid, group in groups.items():
            svc_of: dict[bytes, int] = {}
            sids: list[int] = []
            for s in group:
                sid = intern(conn, s.service)
                svc_of[s.span_id] = sid
                sids.append(sid)
            group_ids[tid] = svc_of
            start = end = None
            errors = 0
            root: SpanRecord | None = None
            root_real = 0
            project = domain = None
            for s, sid in zip(group, sids, strict=True):
                st, en = s.start_ns, s.end_ns
                if start is None or st < start:
                    start = st
                if end is None or en > end:
                    end = en
                err = s.status_code == STATUS_ERROR
                errors += err
                parent = s.parent_span_id
                if parent is None:
                    if not root_real or (root is not None and st < root.start_ns):
                        root, root_real = s, 1
                elif parent in svc_of:
                    psid = svc_of[parent]
                    if psid != sid:
                        e = edges.setdefault((st // BUCKET_NS, psid, sid), [0, 0])
                        e[0] += 1
                        e[1] += err
                else:
                    orphans.append((tid, parent, sid, int(err), st // BUCKET_NS))
                    if not root_real and (root is None or st < root.start_ns):
                        root = s
                if s.kind in _PARENT_KINDS and "db.system" not in s.attributes:
                    parents.append((tid, s.span_id, sid, now_s))
                op = self._intern_op(conn, sid, intern(conn, s.name))
                keys.add((tid, sid))
                keys.add((tid, -op))
                a = s.attributes
                if a:
                    r = a.get(ATTR_REQUEST_ID)
                    if type(r) is str:
                        rid_texts[r] = rid_texts.get(r, 0) | _RID_LOCAL
                    r = a.get(ATTR_GLOBAL_REQUEST_ID)
                    if type(r) is str:
                        rid_texts[r] = rid_texts.get(r, 0) | _RID_GLOBAL
                    for key, value in a.items():
                        if value.__class__ in _SCALARS:
                            ix = indexed.get(key)
                            if ix is None:
                                ix = is_indexed(key)
                            if ix:
                                pairs.add((key, value.__class__, value))
                    if project is None and type(a.get(ATTR_PROJECT_ID)) is str:
                        project = a[ATTR_PROJECT_ID]
                    if domain is None and type(a.get(ATTR_DOMAIN_ID)) is str:
                        domain = a[ATTR_DOMAIN_ID]
            # Each distinct value once per trace; hashes cached across writes.
            for text, kind in rid_texts.items():
                k = encode_rid(text)
                if k is not None:
                    rids[k, tid] = kind
            rid_texts.clear()
            for pair in pairs:
                h = hashes.get(pair)
                if h is None:
                    txt = attr_text(pair[2])
                    if txt is None:
                        continue
                    h = attr_hash(pair[0], txt)
                    if len(hashes) >= _HASH_CACHE_SIZE:
                        hashes.clear()
                    hashes[pair] = h
                attrs.add((h, tid))
            pairs.clear()
            if root is None:  # every span's parent is in this group: a cycle
                root = min(group, key=lambda s: s.start_ns)
            if root.attributes:
                rp = root.attributes.get(ATTR_PROJECT_ID)
                project = rp if type(rp) is str else project
                rd = root.attributes.get(ATTR_DOMAIN_ID)
                domain = rd if type(rd) is str else domain
            rsid = svc_of[root.span_id] if root.span_id in svc_of else intern(conn, root.service)
            trace_rows.append(
                (
                    tid,
                    start,
                    end,
                    rsid,
                    intern(conn, root.name),
                    root_real,
                    root.start_ns,
                    len(group),
                    errors,
                    project,
                    domain,
                )
            )
            raw = encode_chunk(group, lambda n: intern(conn, n))
            if self._zdict is None:
                self._sample(conn, raw)
            chunk_rows.append((tid, int(start or 0), compress_chunk(raw, self._zdict)))
        self._resolve_dependencies(conn, group_ids, orphans, edges, now_s)
        self._insert_chunks(conn, chunk_rows)
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
            " project_id = COALESCE(traces.project_id, excluded.project_id),"
            " domain_id = COALESCE(traces.domain_id, excluded.domain_id)",
        )
        self._insert(
            conn,
            "trace_keys",
            ("trace_id", "key"),
            ("bytea", "integer"),
            list(keys),
            "ON CONFLICT (trace_id, key) DO NOTHING",
        )
        if rids:
            self._insert(
                conn,
                "request_ids",
                ("rid", "trace_id", "kind"),
                ("bytea", "bytea", "smallint"),
                [(k, t, v) for (k, t), v in rids.items()],
                "ON CONFLICT (rid, trace_id) DO UPDATE SET kind = request_ids.kind | excluded.kind",
            )
        if attrs:
            self._insert(
                conn,
                "attr_index",
                ("h", "trace_id"),
                ("bigint", "bytea"),
                list(attrs),
                "ON CONFLICT (h, trace_id) DO NOTHING",
            )
        if parents:
            self._insert(
                conn,
                "span_parents",
                ("trace_id", "span_id", "service_id", "t"),
                ("bytea", "bytea", "integer", "bigint"),
                parents,
                "ON CONFLICT (trace_id, span_id) DO NOTHING",
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

    def _resolve_dependencies(
        self,
        conn: Any,
        group_ids: dict[bytes, dict[bytes, int]],
        orphans: list[tuple[bytes, bytes, int, int, int]],
        edges: dict[tuple[int, int, int], list[int]],
        now_s: int,
    ) -> None:
        """Count edges whose parent and child came in different writes."""

        def add(bucket: int, caller: int, callee: int, err: int) -> None:
            if caller != callee:
                e = edges.setdefault((bucket, caller, callee), [0, 0])
                e[0] += 1
                e[1] += err

        # Children stored earlier, waiting for a parent that is in this write.
        done: list[int] = []
        tids = list(group_ids)
        for part in _chunks(tids):
            for pid, tid, parent, svc, err, bucket in self._q(
                conn,
                "SELECT id, trace_id, parent_id, service_id, error, bucket FROM dep_pending"
                f" WHERE trace_id IN ({_marks(len(part))})",
                part,
            ):
                psvc = group_ids[bytes(tid)].get(bytes(parent))
                if psvc is not None:
                    add(bucket, psvc, svc, err)
                    done.append(pid)
        for part in _chunks(done):
            self._x(conn, f"DELETE FROM dep_pending WHERE id IN ({_marks(len(part))})", part)
        # Children in this write whose parent was stored earlier (or not yet).
        if not orphans:
            return
        found: dict[tuple[bytes, bytes], int] = {}
        for part in _chunks(orphans, 300):
            params: list[Any] = []
            for o in part:
                params.extend((o[0], o[1]))
            values = ", ".join(["(?, ?)"] * len(part))
            for tid, sid, svc in self._q(
                conn,
                "SELECT trace_id, span_id, service_id FROM span_parents"
                f" WHERE (trace_id, span_id) IN (VALUES {values})",
                params,
            ):
                found[bytes(tid), bytes(sid)] = svc
        waiting = []
        for tid, parent, svc, err, bucket in orphans:
            psvc = found.get((tid, parent))
            if psvc is not None:
                add(bucket, psvc, svc, err)
            else:
                waiting.append((tid, parent, svc, err, bucket, now_s))
        if waiting:
            self._insert(
                conn,
                "dep_pending",
                ("trace_id", "parent_id", "service_id", "error", "bucket", "t"),
                ("bytea", "bytea", "integer", "smallint", "bigint", "bigint"),
                waiting,
            )

    def _write_logs(self, conn: Any, logs: list[LogRecord]) -> int:
        rows = []
        for r in logs:
            extra = pack_blob((r.attributes, r.resource)) if r.attributes or r.resource else None
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
                )
            )
        return self._insert(
            conn,
            "logs",
            [c.strip() for c in _LOG_COLS.split(",")],
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
            ),
            rows,
            "ON CONFLICT (dedup_key) DO NOTHING",
        )
