"""Fixtures for the OpenStack integration tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from oslo_support import OsloLog


@pytest.fixture
def oslo_log() -> Iterator[OsloLog]:
    """oslo.log's handler first on the root logger (INFO), removed afterwards."""
    log = OsloLog()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(log.handler)
    root.setLevel(logging.INFO)
    try:
        yield log
    finally:
        root.removeHandler(log.handler)
        root.setLevel(old_level)


@pytest.fixture(autouse=True)
def _no_oslo_context_left() -> Iterator[None]:
    """oslo.context keeps a thread-local current context; no test leaves one behind."""
    from oslo_context import context as oslo_context

    yield
    oslo_context._request_store.__dict__.pop("context", None)
