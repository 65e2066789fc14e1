"""What both SQL stores share below the write and read paths: connection hooks
that :mod:`~crosstrace.server.store.sqlite` and
:mod:`~crosstrace.server.store.postgres` fill in, statement helpers, and the
interned service and operation names."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from crosstrace.server.batch.values import is_indexed
from crosstrace.server.store.base import Store
from crosstrace.server.store.writer import Job

__all__ = ["IN_CHUNK", "LOG_COLUMNS", "ChunkRow", "SQLBase", "chunks", "marks"]

#: Values per ``IN (...)`` list.
IN_CHUNK = 500

LOG_COLUMNS = (
    "time_ns, severity, severity_text, service_id, trace_id, span_id, request_id,"
    " global_request_id, user_id, project_id, domain_id, logger, body, extra, dedup_key,"
    " host_id, imported_ns"
)


def chunks(seq: Sequence[Any], n: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def marks(n: int) -> str:
    return ", ".join("?" * n)


class ChunkRow(NamedTuple):
    """One chunk and what the indexes need from it."""

    trace_id: bytes
    start_ns: int
    digest: int | bytes  # several packed when chunks were merged (``merge.py``)
    data: bytes
    keys: set[int]  # service ids, and -operation ids
    attrs: set[int]  # attribute hashes
    rids: dict[bytes, int]  # request id key -> 1 local | 2 global


class SQLBase(Store):
    """Connection hooks and helpers of both SQL stores, and the names they intern."""

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

    def _prepare_group(self, jobs: list[Job]) -> None:
        """Work before the group's transaction begins (e.g. DDL on connections of
        its own, which must not wait for locks the transaction holds)."""

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

    def _insert_chunks(self, conn: Any, rows: list[ChunkRow]) -> None:
        """Store chunks and their index entries."""
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

    def _delete_in(self, conn: Any, table: str, column: str, values: Sequence[Any]) -> None:
        """Delete the rows of *table* whose *column* is one of *values* (a
        statement per :data:`IN_CHUNK` values, not one per row)."""
        for part in chunks(values):
            cond, params = self._in(column, part)
            self._x(conn, f"DELETE FROM {table} WHERE {cond}", params)

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

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """Condition "*column* is one of *values*" and its parameters (PostgreSQL
        passes one array, so that the statement's text, and plan, is reused)."""
        return f"{column} IN ({marks(len(values))})", list(values)

    def _is_indexed(self, key: str) -> bool:
        return is_indexed(key)
