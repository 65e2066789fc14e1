"""Fixtures of the log import tests: the real stores, and a collected multi-host
tree (see logtree.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from logtree import Tree, write_tree

from crosstrace.server.store import Store, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The real SQLite store in a temporary file, or the real PostgreSQL one."""
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path / "x.sqlite3")
    else:
        url = request.getfixturevalue("postgres_schema_url")
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """The migration's logs, dated an hour ago."""
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=1)
    return write_tree(tmp_path / "collected", start)
