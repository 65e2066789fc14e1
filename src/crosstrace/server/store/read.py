"""What the SQLite and PostgreSQL stores share on the read side: the SQL of every
query, the records they return, retention and stats (the write path is in
``sqlwrite``).

The two dialects differ only in small places (placeholders, ``MIN``/``LEAST``,
``LIKE``/``ILIKE``, how rows are bulk-inserted, how chunks are partitioned), which
the subclasses fill in.

Search notes:

- Service and operation filters test ``key_chunks`` (postings: the chunks of one
  batch that have a key) with a primary-key lookup per chunk of a candidate
  trace while the trace summaries are walked newest first
  on the ``(start_ns, trace_id)`` index (the error filter has a partial index of
  its own).
- Attribute equality (``attr.KEY=VALUE``) uses the ``attr_chunks`` table for the
  keys in :data:`INDEXED_ATTRIBUTES` and every ``openstack.*`` key, the same way,
  or, for a value on fewer than :data:`RARE_ATTR_CHUNKS` chunks, by collecting
  its traces first (PostgreSQL: a GIN index on the chunk rows); any other key
  is matched by decoding the spans of candidate traces, newest first, at most
  :data:`ATTR_SCAN_BUDGET` traces per page (the page then ends with a cursor).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from crosstrace.server.batch.spanbatch import RID_GLOBAL, RID_LOCAL
from crosstrace.server.batch.values import INDEXED_ATTRIBUTES
from crosstrace.server.model import (
    LogQuery,
    LogRecord,
    SpanRecord,
    TracePage,
    TraceQuery,
    TraceSummary,
)
from crosstrace.server.scope import Scope
from crosstrace.server.store.base import RetentionPass
from crosstrace.server.store.causes import ErrorIndexSQL
from crosstrace.server.store.codec import (
    attr_hash,
    attr_needles,
    attr_text,
    chunk_payload,
    decode_chunk,
    decode_cursor,
    decode_rid,
    encode_cursor,
    encode_rid,
    posting_ids,
    unpack_blob,
    unpack_keys,
    unpack_rids,
)
from crosstrace.server.store.columns import decode_columns
from crosstrace.server.store.prepare import BUCKET_NS
from crosstrace.server.store.sql import LOG_COLUMNS, marks
from crosstrace.server.store.sqlscope import SQLSummaries
from crosstrace.server.store.write import PARENT_LOOKUP_TTL_S

__all__ = ["ATTR_SCAN_BUDGET", "INDEXED_ATTRIBUTES", "SQLStore"]

log = logging.getLogger(__name__)

#: Most candidate traces decoded per search page for a non-indexed attribute.
ATTR_SCAN_BUDGET = 2_000
#: Below this many chunks with an attribute value, a search collects them first.
RARE_ATTR_CHUNKS = 2_000
#: Traces removed per retention transaction.
RETENTION_BATCH = 2_000

#: The 256 byte values in order: ``instr`` of a one-byte blob in it is the
#: byte's value plus one (SQLite has no function that reads a byte as a number).
_BYTE_VALUES = "x'" + bytes(range(256)).hex() + "'"
#: SQLite: whether the posting of index row {0} holds chunk ``c``: its first
#: chunk, or bit ``d % 8`` of byte ``d // 8`` of its bitmap, d = c - first - 1
#: (see ``codec.pack_posting``).
_HOLDS = (
    "({0}.chunk_id = c.id OR ((instr(" + _BYTE_VALUES + ","
    " substr({0}.more, (c.id - {0}.chunk_id - 1) / 8 + 1, 1)) - 1)"
    " >> ((c.id - {0}.chunk_id - 1) % 8)) & 1)"
)
_TRACE_COLS = (
    "t.trace_id, t.start_ns, t.end_ns, t.root_service, t.root_op, t.span_count,"
    " t.error_count, t.project_id, t.domain_id"
)


class SQLStore(ErrorIndexSQL, SQLSummaries):
    """The dialect-independent half of both stores (see the module docstring)."""

    # ---------------------------------------------------------- index hooks
    def _has_keys_sql(self, n: int) -> str:
        """Condition: trace ``t`` has one of *n* keys (service / -operation ids):
        for each chunk of the trace, the key's posting that would hold it (the
        last one that starts at or before it) is asked."""
        probe = (
            f"(SELECT {_HOLDS.format('k')} FROM key_chunks k"
            " WHERE k.key = ? AND k.chunk_id <= c.id ORDER BY k.chunk_id DESC LIMIT 1)"
        )
        return (
            "EXISTS (SELECT 1 FROM chunks c WHERE c.trace_id = t.trace_id"
            f" AND ({' OR '.join([probe] * n)}))"
        )

    def _has_attr_sql(self, conn: Any, h: int) -> tuple[str, list[Any]]:
        """Condition: trace ``t`` has the attribute hash *h*, and its parameters.
        A rare value's postings are read first: their first chunks are joined by
        id, the chunks their bitmaps hold are passed as one JSON list (one
        statement whatever the count, so SQLite prepares it once); a common value
        is tested trace by trace while the newest traces are walked."""
        rows = self._q(
            conn,
            "SELECT chunk_id, more FROM attr_chunks WHERE h = ? LIMIT ?",
            (h, RARE_ATTR_CHUNKS),
        )
        if len(rows) < RARE_ATTR_CHUNKS:
            more = [c for first, bits in rows if bits for c in posting_ids(first, bits)[1:]]
            if len(rows) + len(more) < RARE_ATTR_CHUNKS:
                return (
                    "t.trace_id IN (SELECT c.trace_id FROM attr_chunks a JOIN chunks c"
                    " ON c.id = a.chunk_id WHERE a.h = ? UNION ALL SELECT trace_id FROM chunks"
                    " WHERE id IN (SELECT value FROM json_each(?)))",
                    [h, json.dumps(more)],
                )
        return (
            "EXISTS (SELECT 1 FROM chunks c WHERE c.trace_id = t.trace_id"
            f" AND (SELECT {_HOLDS.format('a')} FROM attr_chunks a"
            " WHERE a.h = ? AND a.chunk_id <= c.id ORDER BY a.chunk_id DESC LIMIT 1))"
        ), [h]

    def _rid_sql(self, key: bytes) -> tuple[str, Any]:
        """Subquery of the trace ids carrying request id *key*, and its parameter."""
        return "SELECT trace_id FROM request_ids WHERE rid = ?", key

    def _unpack_keys(self, keys: Any) -> list[int]:
        """The keys column of a chunk as service ids and -operation ids."""
        return unpack_keys(bytes(keys)) if keys else []

    def _trace_sets(
        self, conn: Any, tids: list[bytes]
    ) -> tuple[dict[bytes, set[int]], dict[bytes, dict[bytes, int]]]:
        """Service ids and request ids (key -> kind bits) of each trace, from the
        entries its chunks carry."""
        services: dict[bytes, set[int]] = {t: set() for t in tids}
        rids: dict[bytes, dict[bytes, int]] = {t: {} for t in tids}
        cond, params = self._in("trace_id", tids)
        for tid_, keys, packed in self._q(
            conn, f"SELECT trace_id, keys, rids FROM chunks WHERE {cond}", params
        ):
            tid = bytes(tid_)
            services[tid].update(k for k in self._unpack_keys(keys) if k > 0)
            if packed:
                mine = rids[tid]
                for key, kind in unpack_rids(bytes(packed)):
                    mine[key] = mine.get(key, 0) | kind
        return services, rids

    # ------------------------------------------------------------------- read
    def get_trace(self, trace_id: bytes, scope: Scope = Scope.ALL) -> list[SpanRecord]:
        with self._reader() as conn:
            if scope.everything:
                rows = self._q(conn, "SELECT data FROM chunks WHERE trace_id = ?", (trace_id,))
            else:
                cond, params = self._owned(scope)
                rows = self._q(
                    conn,
                    "SELECT data FROM chunks WHERE trace_id = ? AND EXISTS"
                    f" (SELECT 1 FROM traces t WHERE t.trace_id = ? AND {cond})",
                    (trace_id, trace_id, *params),
                )
            spans: list[SpanRecord] = []
            seen: set[bytes] = set()
            for (data,) in rows:
                for s in decode_chunk(
                    trace_id,
                    bytes(data),
                    lambda n: self._name(conn, n),
                    lambda d: self._dictionary(conn, d),
                ):
                    # A batch delivered twice (e.g. redelivered by the broker) is
                    # shown once.
                    if s.span_id not in seen:
                        seen.add(s.span_id)
                        spans.append(s)
        spans.sort(key=lambda s: s.start_ns)
        return spans

    def get_trace_summary(self, trace_id: bytes, scope: Scope = Scope.ALL) -> TraceSummary | None:
        cond, params = self._owned(scope)
        with self._reader() as conn:
            rows = self._q(
                conn,
                f"SELECT {_TRACE_COLS} FROM traces t WHERE t.trace_id = ? AND {cond}",
                (trace_id, *params),
            )
            out = self._summaries(conn, rows)
        return out[0] if out else None

    def traces_for_request(
        self, request_id: str, limit: int = 100, scope: Scope = Scope.ALL
    ) -> list[TraceSummary]:
        key = encode_rid(request_id)
        if key is None:
            return []
        sub, param = self._rid_sql(key)
        cond, params = self._owned(scope)
        with self._reader() as conn:
            rows = self._q(
                conn,
                f"SELECT {_TRACE_COLS} FROM traces t WHERE t.trace_id IN ({sub}) AND {cond}"
                " ORDER BY t.start_ns DESC, t.trace_id DESC LIMIT ?",
                (param, *params, int(limit)),
            )
            return self._summaries(conn, rows)

    def _summaries(self, conn: Any, rows: list[Any]) -> list[TraceSummary]:
        if not rows:
            return []
        tids = [bytes(r[0]) for r in rows]
        service_ids, rid_kinds = self._trace_sets(conn, tids)
        services = {t: [self._name(conn, k) for k in ks] for t, ks in service_ids.items()}
        locals_: dict[bytes, list[str]] = {t: [] for t in tids}
        globals_: dict[bytes, list[str]] = {t: [] for t in tids}
        for tid, kinds in rid_kinds.items():
            for rid, kind in kinds.items():
                text = decode_rid(rid)
                if kind & RID_LOCAL:
                    locals_[tid].append(text)
                if kind & RID_GLOBAL:
                    globals_[tid].append(text)
        out = []
        for tid_, start, end, rsvc, rop, count, errors, project, domain in rows:
            tid = bytes(tid_)
            out.append(
                TraceSummary(
                    trace_id=tid,
                    start_ns=start,
                    end_ns=end,
                    root_service=self._name(conn, rsvc),
                    root_operation=self._name(conn, rop),
                    span_count=count,
                    error_count=errors,
                    services=sorted(services[tid]),
                    request_ids=sorted(locals_[tid]),
                    global_request_ids=sorted(globals_[tid]),
                    project_id=project,
                    domain_id=domain,
                )
            )
        return out

    def search_traces(self, query: TraceQuery) -> TracePage:
        """Traces matching every filter of *query*, newest first.

        ``ValueError`` for an invalid cursor or limit.
        """
        limit = int(query.limit)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = decode_cursor(query.cursor) if query.cursor else None
        with self._reader() as conn:
            where, params, scan = self._trace_filters(conn, query)
            if where is None:
                return TracePage([], None)
            if not scan:
                rows = self._trace_page(conn, where, params, after, limit + 1)
                more = len(rows) > limit
                rows = rows[:limit]
                nxt = encode_cursor(rows[-1][1], bytes(rows[-1][0])) if more and rows else None
                return TracePage(self._summaries(conn, rows), nxt)
            return self._scan_page(conn, where, params, after, limit, scan)

    def _trace_page(
        self,
        conn: Any,
        where: list[str],
        params: list[Any],
        after: tuple[int, bytes] | None,
        limit: int,
    ) -> list[Any]:
        clauses = list(where)
        args = list(params)
        if after is not None:
            clauses.append("(t.start_ns, t.trace_id) < (?, ?)")
            args.extend(after)
        sql = f"SELECT {_TRACE_COLS} FROM traces t"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY t.start_ns DESC, t.trace_id DESC LIMIT ?"
        args.append(limit)
        return self._q(conn, sql, args)

    def _scan_page(
        self,
        conn: Any,
        where: list[str],
        params: list[Any],
        after: tuple[int, bytes] | None,
        limit: int,
        scan: dict[str, str],
    ) -> TracePage:
        """Match non-indexed attributes by decoding candidate traces."""
        hits: list[Any] = []
        scanned = 0
        last: tuple[int, bytes] | None = after
        while scanned < ATTR_SCAN_BUDGET:
            rows = self._trace_page(conn, where, params, last, 200)
            if not rows:
                return TracePage(self._summaries(conn, hits), None)
            for row in rows:
                scanned += 1
                last = (row[1], bytes(row[0]))
                if self._trace_has_attrs(conn, bytes(row[0]), scan):
                    hits.append(row)
                    if len(hits) == limit:
                        return TracePage(self._summaries(conn, hits), encode_cursor(*last))
        nxt = encode_cursor(*last) if last is not None else None
        return TracePage(self._summaries(conn, hits), nxt)

    def _trace_has_attrs(self, conn: Any, trace_id: bytes, want: dict[str, str]) -> bool:
        found: set[str] = set()
        # A chunk whose payload holds none of the wanted texts is not decoded.
        needles = [attr_needles(text) for text in want.values()]
        skip = None if not needles or None in needles else [n for ns in needles for n in ns or ()]
        zdict = lambda d: self._dictionary(conn, d)  # noqa: E731
        for (row,) in self._q(conn, "SELECT data FROM chunks WHERE trace_id = ?", (trace_id,)):
            data = bytes(row)
            payload = chunk_payload(data, zdict) if skip is not None else None
            if payload is None:
                spans = decode_chunk(trace_id, data, lambda n: self._name(conn, n), zdict)
            elif any(n in payload for n in skip or ()):
                spans = decode_columns(trace_id, payload, skip)
            else:
                continue
            for s in spans:
                for key, text in want.items():
                    if key in s.attributes and attr_text(s.attributes[key]) == text:
                        found.add(key)
                if len(found) == len(want):
                    return True
        return False

    def _trace_filters(
        self, conn: Any, q: TraceQuery
    ) -> tuple[list[str] | None, list[Any], dict[str, str]]:
        """SQL conditions for *q*; ``None`` when nothing can match."""
        where: list[str] = []
        params: list[Any] = []
        if q.error is True:
            where.append("t.error_count > 0")
        elif q.error is False:
            where.append("t.error_count = 0")
        _add_conditions(
            where,
            params,
            (q.start_ns, "t.start_ns >= ?"),
            (q.end_ns, "t.start_ns <= ?"),
            (q.min_duration_ns, "t.end_ns - t.start_ns >= ?"),
            (q.max_duration_ns, "t.end_ns - t.start_ns <= ?"),
            (q.project_id, "t.project_id = ?"),
            (q.domain_id, "t.domain_id = ?"),
        )
        if q.scope.is_empty:
            return None, [], {}
        cond, scope_params = q.scope.sql("t.project_id", "t.domain_id")
        if cond is not None:
            where.append(cond)
            params.extend(scope_params)
        if q.allowed_projects is not None:
            allowed = sorted(q.allowed_projects)
            if not allowed:
                return None, [], {}
            where.append(f"t.project_id IN ({marks(len(allowed))})")
            params.extend(allowed)
        svc: int | None = None
        if q.service is not None:
            svc = self._lookup_name(conn, q.service)
            if svc is None:
                return None, [], {}
            where.append(self._has_keys_sql(1))
            params.append(svc)
        if q.operation is not None:
            op_name = self._lookup_name(conn, q.operation)
            if op_name is None:
                return None, [], {}
            if svc is not None:
                rows = self._q(
                    conn,
                    "SELECT id FROM operations WHERE service_id = ? AND name_id = ?",
                    (svc, op_name),
                )
            else:
                rows = self._q(conn, "SELECT id FROM operations WHERE name_id = ?", (op_name,))
            if not rows:
                return None, [], {}
            where.append(self._has_keys_sql(len(rows)))
            params.extend(-int(r[0]) for r in rows)
        if q.request_id is not None:
            key = encode_rid(q.request_id)
            if key is None:
                return None, [], {}
            sub, param = self._rid_sql(key)
            where.append(f"t.trace_id IN ({sub})")
            params.append(param)
        scan: dict[str, str] = {}
        for akey, value in sorted(q.attributes.items()):
            if self._is_indexed(akey):
                h = attr_hash(akey, value)
                cond, args = self._has_attr_sql(conn, h)
                where.append(cond)
                params.extend(args)
            else:
                scan[akey] = value
        return where, params, scan

    def search_logs(self, query: LogQuery) -> list[LogRecord]:
        where: list[str] = []
        params: list[Any] = []
        if query.request_id is not None:
            where.append("(request_id = ? OR global_request_id = ?)")
            params.extend((query.request_id, query.request_id))
        _add_conditions(
            where,
            params,
            (query.trace_id, "trace_id = ?"),
            (query.min_severity, "severity >= ?"),
            (query.start_ns, "time_ns >= ?"),
            (query.end_ns, "time_ns <= ?"),
        )
        if query.text:
            escaped = query.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(f"body {self._like} ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if query.scope.is_empty:
            return []
        cond, scope_params = query.scope.sql("project_id", "domain_id")
        if cond is not None:
            where.append(cond)
            params.extend(scope_params)
        if query.allowed_projects is not None:
            allowed = sorted(query.allowed_projects)
            if not allowed:
                return []
            where.append(f"project_id IN ({marks(len(allowed))})")
            params.extend(allowed)
        with self._reader() as conn:
            for name, column in ((query.service, "service_id"), (query.host, "host_id")):
                if name is not None:
                    name_id = self._lookup_name(conn, name)
                    if name_id is None:
                        return []
                    where.append(f"{column} = ?")
                    params.append(name_id)
            sql = f"SELECT {LOG_COLUMNS} FROM logs"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY time_ns, id LIMIT ?"
            params.append(int(query.limit))
            out = []
            for row in self._q(conn, sql, params):
                attributes, resource = unpack_blob(bytes(row[13])) if row[13] else ({}, {})
                out.append(
                    LogRecord(
                        time_ns=row[0],
                        severity_number=row[1],
                        severity_text=row[2],
                        service=self._name(conn, row[3]),
                        trace_id=bytes(row[4]) if row[4] is not None else None,
                        span_id=bytes(row[5]) if row[5] is not None else None,
                        request_id=row[6],
                        global_request_id=row[7],
                        user_id=row[8],
                        project_id=row[9],
                        domain_id=row[10],
                        logger=row[11],
                        body=row[12],
                        attributes=attributes,
                        resource=resource,
                        dedup_key=bytes(row[14]) if row[14] is not None else None,
                        imported_ns=row[16],
                    )
                )
            return out

    # -------------------------------------------------------------- retention
    #: Log records deleted by retention since the store was opened.
    logs_deleted = 0

    def retention_pass(self, max_age_ns: int | None, max_bytes: int | None = None) -> RetentionPass:
        before = self.logs_deleted
        traces = self.apply_retention(max_age_ns, max_bytes)
        return RetentionPass(traces=traces, logs=self.logs_deleted - before)

    def apply_retention(self, max_age_ns: int | None, max_bytes: int | None = None) -> int:
        """Delete traces that started more than *max_age_ns* ago (and logs, edges
        older than that: an imported log record when both its own time and its
        import are older); *max_bytes* is handled by stores that support it."""
        removed = 0
        if max_age_ns is not None:
            cutoff = time.time_ns() - max_age_ns
            removed += self._delete_before(cutoff)
        self._call(self._prune_lookups)
        return removed

    def _delete_before(self, cutoff_ns: int) -> int:
        """Delete everything older than *cutoff_ns*, a batch per transaction."""
        removed = 0
        while True:
            n = int(self._call(lambda conn: self._delete_batch(conn, cutoff_ns)))
            removed += n
            if n < RETENTION_BATCH:
                break
        self._call(lambda conn: self._delete_old_rows(conn, cutoff_ns))
        return removed

    def _delete_batch(self, conn: Any, cutoff_ns: int) -> int:
        tids = [
            bytes(r[0])
            for r in self._q(
                conn,
                "SELECT trace_id FROM traces WHERE start_ns < ? LIMIT ?",
                (cutoff_ns, RETENTION_BATCH),
            )
        ]
        if not tids:
            return 0
        self._written.clear()  # a later batch of a deleted trace writes its keys again
        self._delete_chunks(conn, tids, cutoff_ns)
        for table in ("span_parents", "dep_pending", "traces"):
            self._delete_in(conn, table, "trace_id", tids)
        return len(tids)

    def _delete_old_rows(self, conn: Any, cutoff_ns: int) -> None:
        self.logs_deleted += self._x(
            conn,
            "DELETE FROM logs WHERE time_ns < ? AND (imported_ns IS NULL OR imported_ns < ?)",
            (cutoff_ns, cutoff_ns),
        )
        self._x(conn, "DELETE FROM dep_edges WHERE bucket < ?", (cutoff_ns // BUCKET_NS,))

    def _prune_lookups(self, conn: Any) -> None:
        old = int(time.time()) - PARENT_LOOKUP_TTL_S
        self._x(conn, "DELETE FROM span_parents WHERE t < ?", (old,))
        self._x(conn, "DELETE FROM dep_pending WHERE t < ?", (old,))

    def start_retention(
        self, max_age_ns: int | None, max_bytes: int | None = None, interval_s: float = 300.0
    ) -> None:
        """Apply retention every *interval_s* seconds in a background thread until
        :meth:`close`."""
        from crosstrace.server.store.retention import RetentionThread

        if self._retention is not None:
            self._retention.stop()
        self._retention = RetentionThread(self, max_age_ns, max_bytes, interval_s)
        self._retention.start()

    # ------------------------------------------------------------------ admin
    def stats(self) -> dict[str, int]:
        w = self._writer
        with self._reader() as conn:
            traces = int(self._q(conn, "SELECT COUNT(*) FROM traces")[0][0])
            db_bytes = self._db_bytes(conn)
        return {
            "spans_written": self.spans_written,
            "logs_written": self.logs_written,
            "traces": traces,
            "db_bytes": db_bytes,
            "writes_pending": w.pending,
            "write_groups_committed": w.committed_groups,
            "write_failures": w.failed_jobs,
            "last_write_latency_us": int(w.last_latency_s * 1e6),
            "last_commit_us": int(w.last_commit_s * 1e6),
        }

    def close(self) -> None:
        """Stop retention, commit every queued write, close the connections."""
        if self._retention is not None:
            self._retention.stop()
            self._retention = None
        self._writer.close()
        self._close_connections()


def _add_conditions(where: list[str], params: list[Any], *pairs: tuple[Any, str]) -> None:
    """Append each ``(value, condition)`` whose value is set to the WHERE clause."""
    for value, condition in pairs:
        if value is not None:
            where.append(condition)
            params.append(value)
