"""Shared fixtures: the real services this machine runs, found from environment
variables. A test that needs one skips with a reason when it is absent, unless
``CROSSTRACE_REQUIRE_SERVICES`` is set (CI), where the skip becomes a failure."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from crosstrace.tracing import tracer as tr
from keystone_support import Keystone, keystone_importable, start_keystone
from tracing_support import Sink

REQUIRE_SERVICES = os.environ.get("CROSSTRACE_REQUIRE_SERVICES", "") not in ("", "0")


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CROSSTRACE_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a real PostgreSQL database (CROSSTRACE_TEST_POSTGRES_URL)."""
    url = os.environ.get("CROSSTRACE_TEST_POSTGRES_URL", "")
    if not url:
        _unavailable("CROSSTRACE_TEST_POSTGRES_URL is not set")
    if not _reachable(url, 5432):
        _unavailable(f"PostgreSQL at {urlsplit(url).netloc} is not reachable")
    return url


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards.

    The URL selects the schema with ``options=-csearch_path=...``.
    """
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a real RabbitMQ broker (CROSSTRACE_TEST_AMQP_URL)."""
    url = os.environ.get("CROSSTRACE_TEST_AMQP_URL", "")
    if not url:
        _unavailable("CROSSTRACE_TEST_AMQP_URL is not set")
    if not _reachable(url, 5672):
        _unavailable(f"RabbitMQ at {urlsplit(url).hostname} is not reachable")
    return url


@pytest.fixture
def amqp_queue_name() -> str:
    """A queue name unique to one test, so parallel runs do not share messages."""
    return "crosstrace-test-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    """A real Keystone (PyPI, SQLite) on loopback for the whole session, bootstrapped
    with an admin; see ``tests/keystone_support.py`` for its helpers."""
    reason = keystone_importable()
    if reason is not None:
        _unavailable(reason)
    process = start_keystone(tmp_path_factory.mktemp("keystone"))
    try:
        client = Keystone(process.url, process)
        client.register_identity_endpoint()
        yield client
    finally:
        process.stop()


@pytest.fixture
def no_tracer() -> Iterator[None]:
    """No process-wide tracer during the test; the previous one is put back after.
    Modules that want it for every test use ``pytest.mark.usefixtures("no_tracer")``."""
    previous = tr.get_tracer()
    tr._set_tracer(None)
    yield
    tr._set_tracer(previous)


@pytest.fixture
def sink() -> Sink:
    """An empty in-memory sink for a tracer under test."""
    return Sink()
