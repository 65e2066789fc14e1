"""Versioned schema migrations for both stores.

Each dialect has a list of numbered steps; ``schema_version`` holds the version a
database is at. Opening a database applies the steps it lacks, each in its own
transaction (PostgreSQL: under an advisory lock, so several ``serve`` processes
starting at once do not race). A database written by a newer crosstrace (a
version above the last step known here) is refused with
:class:`SchemaVersionError` rather than being misread.

Tables (both dialects):

``names``
    interned service and operation names (id <-> text).
``operations``
    (service, operation name) pairs; ``-id`` is the operation's key in ``key_chunks``.
``traces``
    one summary row per trace, merged in SQL as batches arrive: start = min,
    end = max, counts add, root = the parentless span (else the earliest span
    whose parent is unknown), project and domain = those of the root span, set by
    the first batch that holds it and never changed after (the trace's owner).
``chunks``
    the spans: one compressed chunk per (trace, batch) with the digest of its span
    ids, see ``codec.py``; SQLite merges a trace's chunks of one commit into one,
    with their digests packed (``merge.py``). On PostgreSQL also the chunk's
    index entries (``keys``, ``attrs`` with a GIN index, ``rids``), in place of
    the three tables below.
``key_chunks`` (SQLite)
    service id -> chunks and -operation id -> chunks, for the service / operation
    search filters; each chunk carries its keys in ``keys`` (the services of a
    trace are read from there). A row is a *posting*: the chunks of one commit
    that have the key, as the first chunk id (``chunk_id``) and a bitmap of the
    chunks after it (``more``; NULL for one chunk; see ``codec.py``).
    Chunk ids only grow within and between commits, so the postings of a key
    cover ranges that do not overlap, and the one that may hold a chunk is the
    last that starts at or before it.
``request_ids`` (SQLite)
    request id key -> trace (kind bit 1 = local id, 2 = global id); the ids of a
    trace are read from its chunks' ``rids``.
``attr_chunks`` (SQLite)
    hash(key=value) -> chunk, for the attribute keys listed in
    ``spanbatch.INDEXED_ATTRIBUTES`` (and every ``openstack.*`` key); the chunk
    carries its hashes in ``attrs``. Postings like ``key_chunks``, keyed by the
    ever-growing chunk id: new entries land at the end of each key's range, so a
    commit touches few pages.
``span_parents`` / ``dep_pending``
    short-lived lookups, one packed row per trace and write (SQLite's
    ``span_parents``: per trace and second), that let a caller -> callee edge be
    counted when the parent and child spans arrive in different writes.
``dep_edges``
    caller -> callee call and error counts per hour.
``logs``
    log records with their ids, deduplicated on ``dedup_key``; ``host_id`` names the
    resource's ``host.name``; ``imported_ns`` is when ``crosstrace logs import``
    stored the record (retention ages an imported record from then).
``chunk_compaction`` (SQLite)
    one row: the chunk id up to which a trace's chunks of several commits have
    been merged, and the highest chunk id given (``compact.py``).
``zdicts``
    zstd dictionaries trained on the store's span chunks (see ``zdict.py``).
``error_causes`` / ``error_groups``
    the root cause of each analysed error trace and the signatures of the error
    groups (see ``errors.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from crosstrace.server.errors import Unavailable
from crosstrace.server.store.codec import (
    HASH_WIDTH,
    KEY_WIDTH,
    pack_ints,
    pack_rids,
    posting_from_bytes,
)

__all__ = ["LATEST_VERSION", "MIGRATIONS", "SchemaVersionError", "migrate", "schema_version"]


class SchemaVersionError(Unavailable, RuntimeError):
    """The database was written by a newer crosstrace than this one."""


_SQLITE_V1 = [
    "CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE operations (id INTEGER PRIMARY KEY, service_id INTEGER NOT NULL,"
    " name_id INTEGER NOT NULL, UNIQUE (service_id, name_id))",
    "CREATE TABLE traces (trace_id BLOB PRIMARY KEY, start_ns INTEGER NOT NULL,"
    " end_ns INTEGER NOT NULL, root_service INTEGER NOT NULL, root_op INTEGER NOT NULL,"
    " root_real INTEGER NOT NULL, root_start INTEGER NOT NULL,"
    " span_count INTEGER NOT NULL, error_count INTEGER NOT NULL,"
    " project_id TEXT, domain_id TEXT) WITHOUT ROWID",
    "CREATE INDEX traces_start ON traces (start_ns)",
    "CREATE INDEX traces_error_start ON traces (start_ns) WHERE error_count > 0",
    "CREATE INDEX traces_project_start ON traces (project_id, start_ns)",
    "CREATE TABLE chunks (id INTEGER PRIMARY KEY, trace_id BLOB NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX chunks_trace ON chunks (trace_id)",
    "CREATE TABLE trace_keys (trace_id BLOB NOT NULL, key INTEGER NOT NULL,"
    " PRIMARY KEY (trace_id, key)) WITHOUT ROWID",
    "CREATE TABLE request_ids (rid BLOB NOT NULL, trace_id BLOB NOT NULL,"
    " kind INTEGER NOT NULL, PRIMARY KEY (rid, trace_id)) WITHOUT ROWID",
    "CREATE INDEX request_ids_trace ON request_ids (trace_id)",
    "CREATE TABLE attr_index (h INTEGER NOT NULL, trace_id BLOB NOT NULL,"
    " PRIMARY KEY (h, trace_id)) WITHOUT ROWID",
    "CREATE TABLE span_parents (trace_id BLOB NOT NULL, span_id BLOB NOT NULL,"
    " service_id INTEGER NOT NULL, t INTEGER NOT NULL,"
    " PRIMARY KEY (trace_id, span_id)) WITHOUT ROWID",
    "CREATE TABLE dep_pending (id INTEGER PRIMARY KEY, trace_id BLOB NOT NULL,"
    " parent_id BLOB NOT NULL, service_id INTEGER NOT NULL, error INTEGER NOT NULL,"
    " bucket INTEGER NOT NULL, t INTEGER NOT NULL)",
    "CREATE INDEX dep_pending_trace ON dep_pending (trace_id)",
    "CREATE TABLE dep_edges (bucket INTEGER NOT NULL, caller INTEGER NOT NULL,"
    " callee INTEGER NOT NULL, calls INTEGER NOT NULL, errors INTEGER NOT NULL,"
    " PRIMARY KEY (bucket, caller, callee)) WITHOUT ROWID",
]

_SQLITE_V2 = [
    "CREATE TABLE logs (id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL,"
    " severity INTEGER NOT NULL, severity_text TEXT NOT NULL, service_id INTEGER NOT NULL,"
    " trace_id BLOB, span_id BLOB, request_id TEXT, global_request_id TEXT, user_id TEXT,"
    " project_id TEXT, domain_id TEXT, logger TEXT NOT NULL, body TEXT NOT NULL,"
    " extra BLOB, dedup_key BLOB UNIQUE)",
    "CREATE INDEX logs_time ON logs (time_ns)",
    "CREATE INDEX logs_request ON logs (request_id) WHERE request_id IS NOT NULL",
    "CREATE INDEX logs_global_request ON logs (global_request_id)"
    " WHERE global_request_id IS NOT NULL",
    "CREATE INDEX logs_trace ON logs (trace_id) WHERE trace_id IS NOT NULL",
    "CREATE INDEX logs_service_time ON logs (service_id, time_ns)",
]

_PG_V1 = [
    "CREATE TABLE names (id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE operations (id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " service_id INTEGER NOT NULL, name_id INTEGER NOT NULL, UNIQUE (service_id, name_id))",
    "CREATE TABLE traces (trace_id BYTEA PRIMARY KEY, start_ns BIGINT NOT NULL,"
    " end_ns BIGINT NOT NULL, root_service INTEGER NOT NULL, root_op INTEGER NOT NULL,"
    " root_real SMALLINT NOT NULL, root_start BIGINT NOT NULL,"
    " span_count INTEGER NOT NULL, error_count INTEGER NOT NULL,"
    " project_id TEXT, domain_id TEXT)",
    "CREATE INDEX traces_start ON traces (start_ns, trace_id)",
    "CREATE INDEX traces_error_start ON traces (start_ns, trace_id) WHERE error_count > 0",
    "CREATE INDEX traces_project_start ON traces (project_id, start_ns)",
    # Partitioned by day of the chunk's first span: retention drops whole days.
    "CREATE TABLE chunks (trace_id BYTEA NOT NULL, day INTEGER NOT NULL,"
    " data BYTEA NOT NULL) PARTITION BY RANGE (day)",
    # Chunks are already compressed: do not let TOAST try again.
    "ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL",
    "CREATE TABLE chunks_default PARTITION OF chunks DEFAULT",
    "CREATE INDEX chunks_trace ON chunks (trace_id)",
    "CREATE TABLE trace_keys (trace_id BYTEA NOT NULL, key INTEGER NOT NULL,"
    " PRIMARY KEY (trace_id, key))",
    "CREATE TABLE request_ids (rid BYTEA NOT NULL, trace_id BYTEA NOT NULL,"
    " kind SMALLINT NOT NULL, PRIMARY KEY (rid, trace_id))",
    "CREATE INDEX request_ids_trace ON request_ids (trace_id)",
    "CREATE TABLE attr_index (h BIGINT NOT NULL, trace_id BYTEA NOT NULL,"
    " PRIMARY KEY (h, trace_id))",
    "CREATE TABLE span_parents (trace_id BYTEA NOT NULL, span_id BYTEA NOT NULL,"
    " service_id INTEGER NOT NULL, t BIGINT NOT NULL, PRIMARY KEY (trace_id, span_id))",
    "CREATE TABLE dep_pending (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " trace_id BYTEA NOT NULL, parent_id BYTEA NOT NULL, service_id INTEGER NOT NULL,"
    " error SMALLINT NOT NULL, bucket BIGINT NOT NULL, t BIGINT NOT NULL)",
    "CREATE INDEX dep_pending_trace ON dep_pending (trace_id)",
    "CREATE TABLE dep_edges (bucket BIGINT NOT NULL, caller INTEGER NOT NULL,"
    " callee INTEGER NOT NULL, calls BIGINT NOT NULL, errors BIGINT NOT NULL,"
    " PRIMARY KEY (bucket, caller, callee))",
]

_PG_V2 = [
    "CREATE TABLE logs (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " time_ns BIGINT NOT NULL, severity INTEGER NOT NULL, severity_text TEXT NOT NULL,"
    " service_id INTEGER NOT NULL, trace_id BYTEA, span_id BYTEA, request_id TEXT,"
    " global_request_id TEXT, user_id TEXT, project_id TEXT, domain_id TEXT,"
    " logger TEXT NOT NULL, body TEXT NOT NULL, extra BYTEA, dedup_key BYTEA UNIQUE)",
    "CREATE INDEX logs_time ON logs (time_ns, id)",
    "CREATE INDEX logs_request ON logs (request_id) WHERE request_id IS NOT NULL",
    "CREATE INDEX logs_global_request ON logs (global_request_id)"
    " WHERE global_request_id IS NOT NULL",
    "CREATE INDEX logs_trace ON logs (trace_id) WHERE trace_id IS NOT NULL",
    "CREATE INDEX logs_service_time ON logs (service_id, time_ns)",
]

_SQLITE_V3 = [
    "CREATE TABLE zdicts (id INTEGER PRIMARY KEY, data BLOB NOT NULL, created_ns INTEGER NOT NULL)"
]
_PG_V3 = [
    "CREATE TABLE zdicts (id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " data BYTEA NOT NULL, created_ns BIGINT NOT NULL)"
]

# v4: spans stored as protobuf chunks with a digest (a redelivered batch is stored
# once); the cross-write dependency lookups packed into one row per trace and
# write (rows pending for less than an hour at the upgrade are dropped: at most
# some caller -> callee counts of that hour are lost).
_SQLITE_V4 = [
    "ALTER TABLE chunks ADD COLUMN digest INTEGER",
    "DROP INDEX chunks_trace",
    "CREATE INDEX chunks_trace ON chunks (trace_id, digest)",
    "DROP TABLE span_parents",
    "DROP TABLE dep_pending",
    "CREATE TABLE span_parents (id INTEGER PRIMARY KEY, trace_id BLOB NOT NULL,"
    " t INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX span_parents_trace ON span_parents (trace_id)",
    "CREATE TABLE dep_pending (id INTEGER PRIMARY KEY, trace_id BLOB NOT NULL,"
    " t INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX dep_pending_trace ON dep_pending (trace_id)",
]
# PostgreSQL v4 also moves the per-trace index rows (trace_keys, request_ids,
# attr_index: ~40 rows of ~100 bytes per trace with their B-trees) into arrays on
# the chunk rows, searched through one GIN index. Existing traces get one chunk
# row without spans that carries their keys, in the default partition (day -1:
# never a day partition's range; retention deletes these rows with their trace).
_PG_V4 = [
    "ALTER TABLE chunks ADD COLUMN digest BIGINT, ADD COLUMN keys INTEGER[],"
    " ADD COLUMN attrs BIGINT[], ADD COLUMN rids BYTEA",
    "INSERT INTO chunks (trace_id, day, keys, attrs, rids, data)"
    " SELECT t.trace_id, -1,"
    " ARRAY(SELECT k.key FROM trace_keys k WHERE k.trace_id = t.trace_id),"
    " ARRAY(SELECT a.h FROM attr_index a WHERE a.trace_id = t.trace_id)"
    " || ARRAY(SELECT ('x' || left(md5(r.rid), 16))::bit(64)::bigint FROM request_ids r"
    " WHERE r.trace_id = t.trace_id),"
    " (SELECT string_agg(set_byte(set_byte(set_byte(decode('000000', 'hex'), 0, r.kind),"
    " 1, length(r.rid) >> 8), 2, length(r.rid) & 255) || r.rid, ''::bytea)"
    " FROM request_ids r WHERE r.trace_id = t.trace_id),"
    " ''::bytea FROM traces t",
    "DROP TABLE trace_keys",
    "DROP TABLE request_ids",
    "DROP TABLE attr_index",
    "CREATE INDEX chunks_attrs ON chunks USING gin (attrs)",
    "DROP TABLE span_parents",
    "DROP TABLE dep_pending",
    "CREATE TABLE span_parents (trace_id BYTEA NOT NULL, t BIGINT NOT NULL, data BYTEA NOT NULL)",
    "CREATE INDEX span_parents_trace ON span_parents (trace_id)",
    "CREATE TABLE dep_pending (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " trace_id BYTEA NOT NULL, t BIGINT NOT NULL, data BYTEA NOT NULL)",
    "CREATE INDEX dep_pending_trace ON dep_pending (trace_id)",
    # Room on each page for the summary's updates to stay HOT.
    "ALTER TABLE traces SET (fillfactor = 80)",
]


class _Pack:
    """SQLite aggregate over one trace's index rows: their packed form, as new
    chunks carry it (``None`` for no rows)."""

    def __init__(self, pack: Callable[[list[tuple[Any, ...]]], bytes]) -> None:
        self.pack = pack
        self.rows: list[tuple[Any, ...]] = []

    def step(self, *row: Any) -> None:
        self.rows.append(row)

    def finalize(self) -> bytes | None:
        return self.pack(self.rows) if self.rows else None


def _sqlite_v5_move(conn: Any) -> None:
    """Give each trace's keys, attribute hashes and request ids to its first
    chunk, a trace at a time (nothing of the whole index is held in memory)."""
    packers: dict[str, Callable[[list[tuple[Any, ...]]], bytes]] = {
        "v5_pack_keys": lambda rows: pack_ints((r[0] for r in rows), KEY_WIDTH),
        "v5_pack_hashes": lambda rows: pack_ints((r[0] for r in rows), HASH_WIDTH),
        "v5_pack_rids": lambda rows: pack_rids({r[0]: r[1] for r in rows}),
    }
    for name, pack in packers.items():
        conn.create_aggregate(name, -1, lambda pack=pack: _Pack(pack))
    for sql in (
        "CREATE TEMP TABLE v5_first (trace_id BLOB PRIMARY KEY, cid INTEGER NOT NULL)"
        " WITHOUT ROWID",
        "INSERT INTO v5_first SELECT trace_id, min(id) FROM chunks GROUP BY trace_id",
        "CREATE INDEX attr_index_trace ON attr_index (trace_id)",  # dropped with the table
        "INSERT INTO key_chunks (key, chunk_id)"
        " SELECT k.key, f.cid FROM trace_keys k JOIN v5_first f ON f.trace_id = k.trace_id",
        "INSERT INTO attr_chunks (h, chunk_id)"
        " SELECT a.h, f.cid FROM attr_index a JOIN v5_first f ON f.trace_id = a.trace_id",
        "UPDATE chunks SET"
        " keys = (SELECT v5_pack_keys(k.key) FROM trace_keys k WHERE k.trace_id = chunks.trace_id),"
        " attrs = (SELECT v5_pack_hashes(a.h) FROM attr_index a"
        " WHERE a.trace_id = chunks.trace_id),"
        " rids = (SELECT v5_pack_rids(r.rid, r.kind) FROM request_ids r"
        " WHERE r.trace_id = chunks.trace_id)"
        " WHERE id IN (SELECT cid FROM v5_first)",
        "DROP TABLE v5_first",
    ):
        conn.execute(sql)


# v5: the service / operation and attribute indexes keyed by chunk id (which only
# grows) instead of trace id; request ids of a trace read from its chunks instead
# of a second index.
_SQLITE_V5: list[str | Callable[[Any], None]] = [
    "ALTER TABLE chunks ADD COLUMN keys BLOB",
    "ALTER TABLE chunks ADD COLUMN attrs BLOB",
    "ALTER TABLE chunks ADD COLUMN rids BLOB",
    "CREATE TABLE key_chunks (key INTEGER NOT NULL, chunk_id INTEGER NOT NULL,"
    " PRIMARY KEY (key, chunk_id)) WITHOUT ROWID",
    "CREATE TABLE attr_chunks (h INTEGER NOT NULL, chunk_id INTEGER NOT NULL,"
    " PRIMARY KEY (h, chunk_id)) WITHOUT ROWID",
    _sqlite_v5_move,
    "DROP TABLE trace_keys",
    "DROP TABLE attr_index",
    "DROP INDEX request_ids_trace",
]


# v6: the error-cause index (root causes of analysed error traces, grouped).
def _error_index(blob: str, bigint: str) -> list[str | Callable[[Any], None]]:
    return [
        f"CREATE TABLE error_causes (trace_id {blob} PRIMARY KEY, start_ns {bigint} NOT NULL,"
        " project_id TEXT, domain_id TEXT, span_count INTEGER NOT NULL,"
        " error_count INTEGER NOT NULL, group_id TEXT)",
        "CREATE INDEX error_causes_start ON error_causes (start_ns)",
        "CREATE INDEX error_causes_group ON error_causes (group_id, start_ns)",
        "CREATE TABLE error_groups (group_id TEXT PRIMARY KEY, service TEXT NOT NULL,"
        " operation TEXT NOT NULL, exception_type TEXT NOT NULL, message TEXT NOT NULL)",
    ]


def _imported_now(ph: str) -> Callable[[Any], None]:
    """A step: records imported before v7 (the only ones with a dedup key) age from
    the upgrade. *ph* is the dialect's placeholder."""

    def step(conn: Any) -> None:
        conn.execute(
            f"UPDATE logs SET imported_ns = {ph} WHERE dedup_key IS NOT NULL", (time.time_ns(),)
        )

    return step


# v7: the host of a log record as a column (the host= filter), and when an imported
# record was imported (retention ages it from then).
_SQLITE_V7: list[str | Callable[[Any], None]] = [
    "ALTER TABLE logs ADD COLUMN host_id INTEGER",
    "ALTER TABLE logs ADD COLUMN imported_ns INTEGER",
    "CREATE INDEX logs_host_time ON logs (host_id, time_ns) WHERE host_id IS NOT NULL",
    _imported_now("?"),
]
_PG_V7: list[str | Callable[[Any], None]] = [
    "ALTER TABLE logs ADD COLUMN host_id INTEGER, ADD COLUMN imported_ns BIGINT",
    "CREATE INDEX logs_host_time ON logs (host_id, time_ns) WHERE host_id IS NOT NULL",
    _imported_now("%s"),
]

# v8: one index row per key and batch (a posting of the batch's chunks) instead of
# one per key and chunk. Existing rows are postings of one chunk (``more`` NULL).
_SQLITE_V8 = [
    "ALTER TABLE key_chunks ADD COLUMN more BLOB",
    "ALTER TABLE attr_chunks ADD COLUMN more BLOB",
]


def _sqlite_v9_bitmaps(conn: Any) -> None:
    """Rewrite the postings' ``more`` from a byte per chunk to a bit per chunk."""
    for table, col in (("key_chunks", "key"), ("attr_chunks", "h")):
        rows = conn.execute(
            f"SELECT {col}, chunk_id, more FROM {table} WHERE more IS NOT NULL"
        ).fetchall()
        conn.executemany(
            f"UPDATE {table} SET more = ? WHERE {col} = ? AND chunk_id = ?",
            [(posting_from_bytes(more) or None, key, cid) for key, cid, more in rows],
        )


def _sqlite_v9_parents(conn: Any) -> None:
    """Copy the callers of ``span_parents`` into the new table, one row per trace
    and second."""
    merged: dict[tuple[bytes, int], bytes] = {}
    for tid, t, data in conn.execute("SELECT trace_id, t, data FROM span_parents ORDER BY id"):
        merged[tid, t] = merged.get((tid, t), b"") + data
    conn.executemany(
        "INSERT INTO span_parents_v9 (trace_id, t, data) VALUES (?, ?, ?)",
        [(tid, t, data) for (tid, t), data in merged.items()],
    )


# v9: postings' chunks after the first as a bitmap instead of a byte each; a
# chunk may hold a trace's spans of several writes of one commit, with their
# digests packed in ``digest`` (``merge.py``), which earlier versions cannot read;
# ``span_parents`` keyed by trace and second (the callers of a trace written in
# the same second share a row), without a rowid and a second index.
_SQLITE_V9: list[str | Callable[[Any], None]] = [
    _sqlite_v9_bitmaps,
    "CREATE TABLE span_parents_v9 (trace_id BLOB NOT NULL, t INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (trace_id, t)) WITHOUT ROWID",
    _sqlite_v9_parents,
    "DROP TABLE span_parents",
    "ALTER TABLE span_parents_v9 RENAME TO span_parents",
]

# v10: where merging a trace's chunks of several commits has got to (see
# ``compact.py``; chunks stored before are merged too) and the highest chunk id
# given (none is given twice).
_SQLITE_V10 = [
    "CREATE TABLE chunk_compaction (upto INTEGER NOT NULL, id_floor INTEGER NOT NULL)",
    "INSERT INTO chunk_compaction SELECT 0, coalesce(max(id), 0) FROM chunks",
]

#: dialect -> [(version, description, steps)], in order; a step is a statement
#: or a function of the connection.
MIGRATIONS: dict[str, list[tuple[int, str, list[Any]]]] = {
    "sqlite": [
        (1, "traces, span chunks, search indexes, dependencies", _SQLITE_V1),
        (2, "logs", _SQLITE_V2),
        (3, "zstd dictionaries for span chunks", _SQLITE_V3),
        (4, "protobuf span chunks with digests, packed dependency lookups", _SQLITE_V4),
        (5, "service, operation and attribute indexes by chunk; ids on chunks", _SQLITE_V5),
        (6, "error causes and error groups", _error_index("BLOB", "INTEGER")),
        (7, "log records' host and import time", _SQLITE_V7),
        (8, "service, operation and attribute index rows as postings per batch", _SQLITE_V8),
        (
            9,
            "postings as bitmaps; a trace's chunks of one commit merged; parents by second",
            _SQLITE_V9,
        ),
        (10, "a trace's chunks of several commits merged once it is quiet", _SQLITE_V10),
    ],
    "postgresql": [
        (1, "traces, span chunks, search indexes, dependencies", _PG_V1),
        (2, "logs", _PG_V2),
        (3, "zstd dictionaries for span chunks", _PG_V3),
        (4, "protobuf span chunks with digests and index arrays, packed lookups", _PG_V4),
        (5, "none (SQLite's index entries moved to the chunks; here they already were)", []),
        (6, "error causes and error groups", _error_index("BYTEA", "BIGINT")),
        (7, "log records' host and import time", _PG_V7),
        (8, "none (SQLite's index rows became postings; here they are arrays on chunks)", []),
        (9, "none (SQLite's postings and merged chunks)", []),
        (10, "none (SQLite's merging of quiet traces)", []),
    ],
}
LATEST_VERSION = 10

#: Arbitrary key of the PostgreSQL advisory lock held while migrating.
_PG_LOCK_KEY = 0x63727374  # "crst"


def schema_version(conn: Any) -> int:
    """The version a database is at (0 when it has no schema yet)."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except Exception:  # the table does not exist yet
        if hasattr(conn, "rollback"):
            conn.rollback()
        return 0
    return int(row[0] or 0)


def migrate(conn: Any, dialect: str, target: int | None = None) -> int:
    """Bring the database on *conn* to *target* (default: the latest) version.

    *conn* is a ``sqlite3`` connection in autocommit mode (``isolation_level=None``)
    or a psycopg connection in autocommit mode. Returns the version reached.
    """
    steps = MIGRATIONS[dialect]
    latest = steps[-1][0]
    target = latest if target is None else target
    if dialect == "postgresql":
        conn.execute("SELECT pg_advisory_lock(%s)", (_PG_LOCK_KEY,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL,"
            " description TEXT NOT NULL, applied_ns BIGINT NOT NULL)"
        )
        current = schema_version(conn)
        if current > latest:
            raise SchemaVersionError(
                f"the database schema is at version {current}, newer than the newest this "
                f"crosstrace knows ({latest}); upgrade crosstrace to open it"
            )
        ph = "%s" if dialect == "postgresql" else "?"
        for version, description, statements in steps:
            if version <= current or version > target:
                continue
            _run_step(conn, dialect, statements, version, description, ph)
            current = version
        return current
    finally:
        if dialect == "postgresql":
            conn.execute("SELECT pg_advisory_unlock(%s)", (_PG_LOCK_KEY,))


def _run_step(
    conn: Any, dialect: str, statements: list[Any], version: int, description: str, ph: str
) -> None:
    record = f"INSERT INTO schema_version VALUES ({ph}, {ph}, {ph})"
    params = (version, description, time.time_ns())
    if dialect == "postgresql":
        with conn.transaction():
            for sql in statements:
                sql(conn) if callable(sql) else conn.execute(sql)
            conn.execute(record, params)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in statements:
            sql(conn) if callable(sql) else conn.execute(sql)
        conn.execute(record, params)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
