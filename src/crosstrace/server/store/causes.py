"""The error-cause index of both SQL stores: one row per analysed error trace.

The analysis (``crosstrace.server.analysis``) finds a failed trace's root cause;
the query layer writes the result here, and error groups are read back with one
indexed range query over a time window. Tables (schema v6):

``error_causes``
    trace id -> start, project, domain, the trace's span and error counts when it
    was analysed (a trace whose counts changed since is analysed again) and the
    group id of its root cause (``NULL``: analysed, no root cause, e.g. a handled
    error inside a successful request).
``error_groups``
    group id -> signature: service, operation, exception type, normalised message.

Scope filters (a :class:`SqlScope`) are conditions of the SQL, like the trace
search's. Rows of traces that retention removed are dropped by
:meth:`ErrorIndexSQL.prune_error_causes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from crosstrace.server.model import ErrorCause

__all__ = ["MAX_CAUSE_ROWS", "ErrorIndexSQL", "PendingTrace", "ProjectScope", "SqlScope"]

#: Most cause rows one window query returns (newest first).
MAX_CAUSE_ROWS: Final = 200_000

_CAUSE_COLS: Final = (
    "c.trace_id, c.start_ns, c.project_id, c.domain_id, c.span_count, c.error_count,"
    " c.group_id, g.service, g.operation, g.exception_type, g.message"
)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlScope(Protocol):
    """What a caller may read, as a SQL condition on the owner columns
    (``None``: everything; ``?`` placeholders)."""

    def sql(self, project_col: str, domain_col: str) -> tuple[str | None, list[Any]]: ...


@dataclass(frozen=True, slots=True)
class ProjectScope:
    """A :class:`SqlScope` of a set of projects (``None``: every project)."""

    projects: frozenset[str] | None = None

    def sql(self, project_col: str, domain_col: str) -> tuple[str | None, list[Any]]:
        if self.projects is None:
            return None, []
        if not self.projects:
            return "1 = 0", []
        ordered = sorted(self.projects)
        return f"{project_col} IN ({_marks(len(ordered))})", ordered


class PendingTrace(NamedTuple):
    """An error trace the index has not analysed (or that changed since)."""

    trace_id: bytes
    start_ns: int
    span_count: int
    error_count: int
    project_id: str | None
    domain_id: str | None


class ErrorIndexSQL:
    """Mixed into the SQL stores; uses their ``_reader``, ``_q``, ``_sql`` and
    ``_call`` (writes run on the store's writer thread)."""

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def _reader(self) -> AbstractContextManager[Any]: ...
        def _q(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
        def _sql(self, sql: str) -> str: ...
        def _call(self, fn: Callable[[Any], Any]) -> Any: ...

    def error_traces_to_analyse(
        self, start_ns: int | None, end_ns: int | None, limit: int = 1000
    ) -> list[PendingTrace]:
        """Error traces in the window not analysed yet, or changed since (oldest
        first, at most *limit*)."""
        where = ["t.error_count > 0"]
        params: list[Any] = []
        if start_ns is not None:
            where.append("t.start_ns >= ?")
            params.append(start_ns)
        if end_ns is not None:
            where.append("t.start_ns <= ?")
            params.append(end_ns)
        params.append(int(limit))
        with self._reader() as conn:
            rows = self._q(
                conn,
                "SELECT t.trace_id, t.start_ns, t.span_count, t.error_count, t.project_id,"
                " t.domain_id FROM traces t LEFT JOIN error_causes c"
                " ON c.trace_id = t.trace_id WHERE "
                + " AND ".join(where)
                + " AND (c.trace_id IS NULL OR c.span_count <> t.span_count"
                " OR c.error_count <> t.error_count) ORDER BY t.start_ns LIMIT ?",
                params,
            )
        return [
            PendingTrace(bytes(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4], r[5]) for r in rows
        ]

    def put_error_causes(self, causes: Sequence[ErrorCause]) -> None:
        """Store (or replace) the analysed root causes of these traces."""
        if not causes:
            return
        cause_rows = [
            (
                c.trace_id,
                c.start_ns,
                c.project_id,
                c.domain_id,
                c.span_count,
                c.error_count,
                c.group_id,
            )
            for c in causes
        ]
        group_rows = sorted(
            {
                (c.group_id, c.service, c.operation, c.exception_type, c.message)
                for c in causes
                if c.group_id is not None
            }
        )

        def write(conn: Any) -> None:
            cur = conn.cursor()
            if group_rows:
                cur.executemany(
                    self._sql(
                        "INSERT INTO error_groups (group_id, service, operation,"
                        " exception_type, message) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (group_id) DO NOTHING"
                    ),
                    group_rows,
                )
            cur.executemany(
                self._sql(
                    "INSERT INTO error_causes (trace_id, start_ns, project_id, domain_id,"
                    " span_count, error_count, group_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (trace_id) DO UPDATE SET start_ns = excluded.start_ns,"
                    " project_id = excluded.project_id, domain_id = excluded.domain_id,"
                    " span_count = excluded.span_count, error_count = excluded.error_count,"
                    " group_id = excluded.group_id"
                ),
                cause_rows,
            )

        self._call(write)

    def error_causes(
        self,
        start_ns: int | None,
        end_ns: int | None,
        *,
        service: str | None = None,
        project_id: str | None = None,
        group_id: str | None = None,
        scope: SqlScope | None = None,
        limit: int = MAX_CAUSE_ROWS,
    ) -> list[ErrorCause]:
        """Root causes of failed traces that started in the window, newest first;
        *scope* (when set) is what the caller may read, applied in the SQL."""
        where = ["c.group_id IS NOT NULL"]
        params: list[Any] = []
        for value, cond in (
            (start_ns, "c.start_ns >= ?"),
            (end_ns, "c.start_ns <= ?"),
            (service, "g.service = ?"),
            (project_id, "c.project_id = ?"),
            (group_id, "c.group_id = ?"),
        ):
            if value is not None:
                where.append(cond)
                params.append(value)
        if scope is not None:
            scope_cond, scope_params = scope.sql("c.project_id", "c.domain_id")
            if scope_cond is not None:
                where.append(scope_cond)
                params.extend(scope_params)
        params.append(int(limit))
        with self._reader() as conn:
            rows = self._q(
                conn,
                f"SELECT {_CAUSE_COLS} FROM error_causes c JOIN error_groups g"
                " ON g.group_id = c.group_id WHERE "
                + " AND ".join(where)
                + " ORDER BY c.start_ns DESC LIMIT ?",
                params,
            )
        return [
            ErrorCause(
                trace_id=bytes(r[0]),
                start_ns=int(r[1]),
                project_id=r[2],
                domain_id=r[3],
                span_count=int(r[4]),
                error_count=int(r[5]),
                group_id=r[6],
                service=r[7],
                operation=r[8],
                exception_type=r[9],
                message=r[10],
            )
            for r in rows
        ]

    def prune_error_causes(self) -> int:
        """Drop cause rows whose trace is gone (retention); return how many."""

        def prune(conn: Any) -> int:
            cur = conn.execute(
                "DELETE FROM error_causes WHERE NOT EXISTS"
                " (SELECT 1 FROM traces t WHERE t.trace_id = error_causes.trace_id)"
            )
            return int(cur.rowcount or 0)

        return int(self._call(prune))
