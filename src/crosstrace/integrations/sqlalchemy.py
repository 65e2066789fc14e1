"""SQLAlchemy integration: one CLIENT span per SQL statement.

::

    from crosstrace.integrations.sqlalchemy import instrument_engine

    engine = sqlalchemy.create_engine(url)
    instrument_engine(engine)            # or instrument_engine(engine, tracer=...)

Engine event listeners (``before_cursor_execute``, ``after_cursor_execute``,
``handle_error``) open a CLIENT span around each statement the driver runs (see
:mod:`crosstrace.integrations` for which tracer), named
``"<OPERATION> <table>"`` (``"SELECT volumes"``), with

* ``db.system`` from the dialect (``sqlite``, ``postgresql``, ``mysql``,
  ``mariadb`` ...), and ``server.address`` / ``server.port`` / ``db.namespace``
  for networked databases;
* ``db.query.text``: the statement as SQLAlchemy sends it (bound values are
  already placeholders) with any literal left in it (``'text'``, ``42``)
  replaced by ``?``; parameter values are never recorded;
* ``db.operation.name`` (``SELECT``, ``INSERT`` ...) and ``db.collection.name``
  when a table is named;
* ``db.response.returned_rows`` for statements that return rows, when the
  driver reports a row count (PostgreSQL does, SQLite does not);
* error status, an ``exception`` event and ``error.type`` when the DBAPI
  raises.

Works with async engines too (pass the ``AsyncEngine``). The span is not made
current: nothing runs inside a statement that could open a child.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from crosstrace.integrations import start_client_span, tracing_active
from crosstrace.tracing import NonRecordingSpan, Span, SpanKind, Tracer, record_failure

__all__ = [
    "ATTR_COLLECTION",
    "ATTR_NAMESPACE",
    "ATTR_OPERATION",
    "ATTR_QUERY_TEXT",
    "ATTR_RETURNED_ROWS",
    "ATTR_SYSTEM",
    "instrument_engine",
    "sanitize_statement",
    "uninstrument_engine",
]

ATTR_SYSTEM = "db.system"
ATTR_QUERY_TEXT = "db.query.text"
ATTR_OPERATION = "db.operation.name"
ATTR_COLLECTION = "db.collection.name"
ATTR_NAMESPACE = "db.namespace"
ATTR_RETURNED_ROWS = "db.response.returned_rows"

#: Longest statement text kept (characters).
MAX_QUERY_TEXT = 4096
_CACHE_SIZE = 1024
# Where the span of a running statement is kept on the execution context.
_CONTEXT_ATTR = "_crosstrace_span"

# String literals ('it''s'), hex/bit literals (X'0F'), and numbers that are not
# part of a name, a placeholder ($1, :p1, %(p_1)s, ?) or a quoted identifier.
_LITERAL = re.compile(
    r"""[xXbB]?'(?:[^']|'')*'"""
    r"""|(?<![\w$:%."@])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w"])""",
    re.ASCII,
)
_VERB = re.compile(r"\s*\(?\s*([A-Za-z]+)", re.ASCII)
_TABLE = re.compile(r"""\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+("?[\w.]+"?)""", re.ASCII | re.I)

_cache: dict[str, tuple[str, str, str | None]] = {}
_listeners: weakref.WeakKeyDictionary[Engine, list[tuple[str, Callable[..., Any]]]] = (
    weakref.WeakKeyDictionary()
)


def sanitize_statement(statement: str) -> str:
    """*statement* with literals replaced by ``?`` (and cut at 4,096 characters)."""
    return _LITERAL.sub("?", statement[:MAX_QUERY_TEXT])


def _describe(statement: str) -> tuple[str, str, str | None]:
    """(sanitised text, operation, table) for *statement*, cached."""
    hit = _cache.get(statement)
    if hit is None:
        verb = _VERB.match(statement)
        table = _TABLE.search(statement)
        hit = (
            sanitize_statement(statement),
            verb.group(1).upper() if verb else "SQL",
            table.group(1).strip('"') if table else None,
        )
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()  # statements repeat; a full cache means they do not
        _cache[statement] = hit
    return hit


def _system(engine: Engine) -> str:
    dialect = engine.dialect
    if dialect.name == "mysql" and getattr(dialect, "is_mariadb", False):
        return "mariadb"
    return str(dialect.name)


def instrument_engine(engine: Any, tracer: Tracer | None = None) -> None:
    """Add a CLIENT span per statement to *engine* (``Engine`` or ``AsyncEngine``).

    Calling it again for the same engine does nothing.
    """
    sync: Engine = getattr(engine, "sync_engine", engine)
    if sync in _listeners:
        return
    system = _system(sync)
    base: dict[str, Any] = {ATTR_SYSTEM: system}
    url = sync.url
    if url.host:
        base["server.address"] = url.host
        if url.port:
            base["server.port"] = url.port
        if url.database:
            base[ATTR_NAMESPACE] = url.database

    def before(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if not tracing_active(tracer):
            return
        try:
            text, operation, table = _describe(statement)
            attrs = dict(base)
            attrs[ATTR_QUERY_TEXT] = text
            attrs[ATTR_OPERATION] = operation
            if table:
                attrs[ATTR_COLLECTION] = table
            span = start_client_span(
                f"{operation} {table or system}", SpanKind.CLIENT, attrs, tracer
            )
            if span._recording and context is not None:
                setattr(context, _CONTEXT_ATTR, span)
        except Exception:  # tracing must never break a query
            return

    def after(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        span = _pop(context)
        if span is None:
            return
        try:
            rowcount = getattr(cursor, "rowcount", -1)
            if (
                getattr(cursor, "description", None) is not None
                and isinstance(rowcount, int)
                and rowcount >= 0
            ):
                span.set_attribute(ATTR_RETURNED_ROWS, rowcount)
        finally:
            span.end()

    def on_error(exception_context: Any) -> None:
        span = _pop(getattr(exception_context, "execution_context", None))
        if span is None:
            return
        exc = exception_context.original_exception
        if isinstance(exc, BaseException):
            record_failure(span, exc)
            span.set_attribute("error.type", type(exc).__qualname__)
        span.end()

    registered: list[tuple[str, Callable[..., Any]]] = [
        ("before_cursor_execute", before),
        ("after_cursor_execute", after),
        ("handle_error", on_error),
    ]
    for name, fn in registered:
        event.listen(sync, name, fn)
    _listeners[sync] = registered


def _pop(context: Any) -> Span | NonRecordingSpan | None:
    if context is None:
        return None
    span = context.__dict__.pop(_CONTEXT_ATTR, None) if hasattr(context, "__dict__") else None
    return span if isinstance(span, (Span, NonRecordingSpan)) else None


def uninstrument_engine(engine: Any) -> None:
    """Remove what :func:`instrument_engine` added to *engine*."""
    sync: Engine = getattr(engine, "sync_engine", engine)
    registered = _listeners.pop(sync, None)
    for name, fn in registered or ():
        event.remove(sync, name, fn)
