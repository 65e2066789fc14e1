"""SQLAlchemy DB spans on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from crosstrace.integrations.sqlalchemy import (
    instrument_engine,
    sanitize_statement,
    uninstrument_engine,
)
from crosstrace.tracing import SpanKind, StatusCode, Tracer, span
from tracing_support import Sink, sink_tracer

pytestmark = pytest.mark.usefixtures("no_tracer")


@pytest.fixture
def tracer(sink: Sink) -> Tracer:
    return sink_tracer(sink, "volume")


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'volume.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE volumes (id INTEGER PRIMARY KEY, name TEXT, size INT)"))
    instrument_engine(engine)
    yield engine
    uninstrument_engine(engine)
    engine.dispose()


def test_select_span_has_db_attributes_and_no_parameter_values(
    sink: Sink, tracer: Tracer, sqlite_engine: sa.Engine
) -> None:
    with span("GET /volumes", SpanKind.SERVER, tracer=tracer) as root, sqlite_engine.connect() as c:
        c.execute(sa.text("SELECT id, name FROM volumes WHERE name = :n"), {"n": "secret-name"})
    (db,) = sink.db()
    assert db.kind == SpanKind.CLIENT
    assert db.parent_id == root.span_id
    assert db.name == "SELECT volumes"
    assert db.attributes["db.system"] == "sqlite"
    assert db.attributes["db.operation.name"] == "SELECT"
    assert db.attributes["db.collection.name"] == "volumes"
    assert db.attributes["db.query.text"] == "SELECT id, name FROM volumes WHERE name = ?"
    assert "secret-name" not in repr(db.attributes)
    assert "db.response.returned_rows" not in db.attributes  # SQLite reports no count
    assert db.status_code == StatusCode.UNSET


def test_literals_in_the_statement_are_removed(
    sink: Sink, tracer: Tracer, sqlite_engine: sa.Engine
) -> None:
    with span("job", tracer=tracer), sqlite_engine.begin() as c:
        c.execute(sa.text("INSERT INTO volumes (name, size) VALUES ('bob''s disk', 42)"))
    (db,) = sink.db()
    assert db.attributes["db.query.text"] == "INSERT INTO volumes (name, size) VALUES (?, ?)"
    assert db.name == "INSERT volumes"


def test_dbapi_error_sets_error_status(
    sink: Sink, tracer: Tracer, sqlite_engine: sa.Engine
) -> None:
    with (
        span("job", tracer=tracer),
        sqlite_engine.connect() as c,
        pytest.raises(sa.exc.OperationalError),
    ):
        c.execute(sa.text("SELECT * FROM no_such_table"))
    (db,) = sink.db()
    assert db.status_code == StatusCode.ERROR
    assert db.attributes["error.type"] == "OperationalError"
    assert db.events is not None
    assert "no_such_table" in db.events[0][2]["exception.message"]
    # The escaping exception failed the job span too, so the segment was kept.
    assert sink.spans[-1].name == "job"


def test_no_span_without_tracing(sink: Sink, sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.connect() as c:
        c.execute(sa.text("SELECT 1"))
    assert sink.spans == []


def test_uninstrument_removes_the_listeners(
    sink: Sink, tracer: Tracer, sqlite_engine: sa.Engine
) -> None:
    uninstrument_engine(sqlite_engine)
    with span("job", tracer=tracer), sqlite_engine.connect() as c:
        c.execute(sa.text("SELECT 1"))
    assert sink.db() == []


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM t WHERE a = 1 AND b = 2.5e3", "SELECT * FROM t WHERE a = ? AND b = ?"),
        (
            "SELECT * FROM t WHERE a = $1 AND b = %(p_1)s",
            "SELECT * FROM t WHERE a = $1 AND b = %(p_1)s",
        ),
        ("SELECT t1.c2 FROM t1 WHERE x = :param_1", "SELECT t1.c2 FROM t1 WHERE x = :param_1"),
        ("UPDATE t SET n = 'it''s' WHERE id = 7", "UPDATE t SET n = ? WHERE id = ?"),
        ('SELECT "col1" FROM "t2" LIMIT 10', 'SELECT "col1" FROM "t2" LIMIT ?'),
        ("SELECT X'0F', 'a'", "SELECT ?, ?"),
    ],
)
def test_sanitize_statement(statement: str, expected: str) -> None:
    assert sanitize_statement(statement) == expected


@pytest.mark.postgres
def test_postgresql_spans_count_returned_rows(
    sink: Sink, tracer: Tracer, postgres_schema_url: str
) -> None:
    engine = sa.create_engine(postgres_schema_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        instrument_engine(engine, tracer=tracer)
        with engine.begin() as c:
            c.execute(sa.text("CREATE TABLE volumes (id serial PRIMARY KEY, size int)"))
            c.execute(sa.text("INSERT INTO volumes (size) VALUES (1), (2), (3)"))
        sink.spans.clear()
        with engine.connect() as c:  # no span current: a local root of the engine's tracer
            rows = c.execute(sa.text("SELECT id FROM volumes WHERE size > :s"), {"s": 1}).all()
        assert len(rows) == 2
        (db,) = sink.db()
        assert db.parent_id == 0
        assert db.attributes["db.system"] == "postgresql"
        assert db.attributes["db.response.returned_rows"] == 2
        assert db.attributes["server.address"] == "127.0.0.1"
        assert db.attributes["db.namespace"] == "test"
        assert db.attributes["db.query.text"] == "SELECT id FROM volumes WHERE size > %(s)s"
    finally:
        engine.dispose()
