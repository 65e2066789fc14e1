"""Reads that summarise over traces, and the audit log, for both stores.

Services, operations and dependencies come from their own tables for a
cloud-wide scope. For a narrower scope they come from the traces in scope only,
so a name or an edge seen only in another project's traces is never shown: the
services and operations from the keys of those traces' chunks, the dependencies
from their spans (the newest :data:`SCOPED_DEPENDENCY_BUDGET` traces that
started in the window).

The audit log is a table of its own (``audit_log``), created on first use and
written through the store's writer without the caller waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from crosstrace.server.model import AuditEvent, DependencyEdge
from crosstrace.server.scope import Scope
from crosstrace.server.store.prepare import BUCKET_NS
from crosstrace.server.store.write import SQLWriter

__all__ = ["MAX_AUDIT_PAGE", "SCOPED_DEPENDENCY_BUDGET", "SQLSummaries"]

#: Most traces decoded for the dependencies of a scope narrower than the cloud.
SCOPED_DEPENDENCY_BUDGET = 5_000
#: Longest audit page.
MAX_AUDIT_PAGE = 10_000
_AUDIT_COLS = "time_ns, who, source, action, target, scope, outcome"


class SQLSummaries(SQLWriter):
    """Services, operations, dependencies (per scope) and the audit log."""

    _audit_ready = False

    def _unpack_keys(self, keys: Any) -> list[int]:
        """The keys column of a chunk as service ids and -operation ids."""
        raise NotImplementedError

    def _owned(self, scope: Scope) -> tuple[str, list[Any]]:
        """Condition "trace ``t`` is in *scope*" (``1 = 1`` for the cloud)."""
        cond, params = scope.sql("t.project_id", "t.domain_id")
        return (cond or "1 = 1"), params

    def _scoped_keys(self, conn: Any, scope: Scope) -> set[int]:
        """Service ids and -operation ids of the chunks of the traces in *scope*."""
        cond, params = self._owned(scope)
        keys: set[int] = set()
        for (packed,) in self._q(
            conn,
            f"SELECT c.keys FROM traces t JOIN chunks c ON c.trace_id = t.trace_id WHERE {cond}",
            params,
        ):
            keys.update(self._unpack_keys(packed))
        return keys

    def services(self, scope: Scope = Scope.ALL) -> list[str]:
        with self._reader() as conn:
            if scope.everything:
                rows = self._q(
                    conn,
                    "SELECT name FROM names WHERE id IN (SELECT service_id FROM operations)"
                    " ORDER BY name",
                )
                return [str(r[0]) for r in rows]
            if scope.is_empty:
                return []
            ids = {k for k in self._scoped_keys(conn, scope) if k > 0}
            return sorted({self._name(conn, k) for k in ids})

    def operations(self, service: str, scope: Scope = Scope.ALL) -> list[str]:
        with self._reader() as conn:
            rows = self._q(
                conn,
                "SELECT n.name, o.id FROM operations o JOIN names n ON n.id = o.name_id"
                " JOIN names s ON s.id = o.service_id WHERE s.name = ? ORDER BY n.name",
                (service,),
            )
            if scope.everything:
                return [str(r[0]) for r in rows]
            if scope.is_empty or not rows:
                return []
            ops = {-k for k in self._scoped_keys(conn, scope) if k < 0}
            return [str(name) for name, oid in rows if int(oid) in ops]

    def dependencies(
        self, start_ns: int | None, end_ns: int | None, scope: Scope = Scope.ALL
    ) -> list[DependencyEdge]:
        """Edges counted in the hours that overlap [start_ns, end_ns]; for a scope
        narrower than the cloud, counted from the spans of the (newest
        :data:`SCOPED_DEPENDENCY_BUDGET`) traces in scope that started then."""
        if not scope.everything:
            return self._scoped_dependencies(start_ns, end_ns, scope)
        where = []
        params: list[Any] = []
        if start_ns is not None:
            where.append("bucket >= ?")
            params.append(start_ns // BUCKET_NS)
        if end_ns is not None:
            where.append("bucket <= ?")
            params.append(end_ns // BUCKET_NS)
        sql = "SELECT caller, callee, SUM(calls), SUM(errors) FROM dep_edges"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY caller, callee"
        with self._reader() as conn:
            edges = [
                DependencyEdge(self._name(conn, a), self._name(conn, b), int(n), int(e))
                for a, b, n, e in self._q(conn, sql, params)
            ]
        edges.sort(key=lambda d: (d.caller, d.callee))
        return edges

    def _scoped_dependencies(
        self, start_ns: int | None, end_ns: int | None, scope: Scope
    ) -> list[DependencyEdge]:
        if scope.is_empty:
            return []
        cond, params = self._owned(scope)
        where = [cond]
        _add_conditions(
            where,
            params,
            (None if start_ns is None else start_ns // BUCKET_NS * BUCKET_NS, "t.end_ns >= ?"),
            (None if end_ns is None else (end_ns // BUCKET_NS + 1) * BUCKET_NS, "t.start_ns < ?"),
        )
        counts: dict[tuple[str, str], list[int]] = {}
        with self._reader() as conn:
            tids = [
                bytes(r[0])
                for r in self._q(
                    conn,
                    f"SELECT t.trace_id FROM traces t WHERE {' AND '.join(where)}"
                    " ORDER BY t.start_ns DESC LIMIT ?",
                    (*params, SCOPED_DEPENDENCY_BUDGET),
                )
            ]
        for tid in tids:
            spans = self.get_trace(tid)
            service_of = {s.span_id: s.service for s in spans}
            for s in spans:
                caller = service_of.get(s.parent_span_id) if s.parent_span_id else None
                if caller is not None and caller != s.service:
                    c = counts.setdefault((caller, s.service), [0, 0])
                    c[0] += 1
                    c[1] += int(s.is_error)
        return [DependencyEdge(a, b, n, e) for (a, b), (n, e) in sorted(counts.items())]

    # ------------------------------------------------------------------ audit
    def _audit_table(self, conn: Any) -> None:
        """Create the audit table on first use (its own, outside the trace schema)."""
        self._x(
            conn,
            "CREATE TABLE IF NOT EXISTS audit_log (time_ns BIGINT NOT NULL, who TEXT NOT NULL,"
            " source TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,"
            " scope TEXT NOT NULL, outcome INTEGER NOT NULL)",
        )
        self._x(conn, "CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time_ns)")

    def append_audit(self, events: Sequence[AuditEvent]) -> Future[None]:
        rows = [
            (e.time_ns, e.who, e.source, e.action, e.target, e.scope, e.outcome) for e in events
        ]

        def write(conn: Any) -> None:
            if not self._audit_ready:
                self._audit_table(conn)
            self._insert(
                conn,
                "audit_log",
                [c.strip() for c in _AUDIT_COLS.split(",")],
                ("bigint", "text", "text", "text", "text", "text", "integer"),
                rows,
            )

        future = self._writer.submit("call", write, len(rows))
        future.add_done_callback(self._audit_written)
        return future

    def _audit_written(self, future: Future[Any]) -> None:
        if future.exception() is None:
            self._audit_ready = True

    def read_audit(
        self, start_ns: int | None = None, who: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        if not self._audit_ready:
            self._call(self._audit_table)
            self._audit_ready = True
        where: list[str] = []
        params: list[Any] = []
        _add_conditions(where, params, (start_ns, "time_ns >= ?"), (who, "who = ?"))
        sql = f"SELECT {_AUDIT_COLS} FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time_ns DESC LIMIT ?"
        params.append(max(1, min(int(limit), MAX_AUDIT_PAGE)))
        with self._reader() as conn:
            return [
                AuditEvent(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]))
                for r in self._q(conn, sql, params)
            ]


def _add_conditions(where: list[str], params: list[Any], *pairs: tuple[Any, str]) -> None:
    for value, condition in pairs:
        if value is not None:
            where.append(condition)
            params.append(value)
