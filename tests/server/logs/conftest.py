"""Fixtures of the log import tests: a collected multi-host tree (see logtree.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from logtree import Tree, write_tree


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """The migration's logs, dated an hour ago."""
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=1)
    return write_tree(tmp_path / "collected", start)
