"""``crosstrace show`` against a real backend (the ``serve`` app under uvicorn over
SQLite): the terminal waterfall at 80 and 120 columns and piped, JSON, the
self-contained HTML file and the Graphviz graph."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crosstrace.cli import main
from crosstrace.demo.servers import serve_asgi
from crosstrace.ids import generate_request_id
from crosstrace.server.app import create_app
from crosstrace.server.model import LogRecord, SpanRecord
from crosstrace.server.store import open_store
from crosstrace.server.web.export import render_tree
from crosstrace.server.web.waterfall import Marks, build_waterfall

MS = 1_000_000
TID = os.urandom(16)
IDS = {k: os.urandom(8) for k in ("root", "rpc", "worker", "db")}
GID = generate_request_id()
LOGS_ONLY = generate_request_id()
LONG_NAME = "build_and_run_instance_with_a_rather_long_operation_name"
SQL_ERROR = "(sqlite3.IntegrityError) UNIQUE constraint failed: volumes.name\n[SQL: INSERT ...]"


def _spans() -> list[SpanRecord]:
    now = time.time_ns() - 30_000 * MS
    attrs = {"openstack.global_request_id": GID}

    def span(key: str, parent: str | None, service: str, name: str, at: int, ms: int) -> SpanRecord:
        return SpanRecord(
            trace_id=TID,
            span_id=IDS[key],
            parent_span_id=IDS[parent] if parent else None,
            name=name,
            kind=2 if parent is None else 1,
            start_ns=now + at * MS,
            end_ns=now + (at + ms) * MS,
            service=service,
            attributes=attrs,
            status_code=2,
            status_message="failed",
        )

    db = span("db", "worker", "volume", "volume.db.insert", 30, 5)
    db.events = [
        {
            "time_ns": db.end_ns,
            "name": "exception",
            "attributes": {
                "exception.type": "sqlalchemy.exc.IntegrityError",
                "exception.message": SQL_ERROR,
                "exception.stacktrace": "Traceback (most recent call last):\n  File x, line 1",
            },
        }
    ]
    return [
        span("root", None, "compute-api", "POST /v2.1/servers", 0, 100),
        span("rpc", "root", "compute-api", "rpc.call build", 10, 80),
        span("worker", "rpc", "compute", LONG_NAME, 12, 70),
        db,
    ]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = open_store("sqlite:///" + str(tmp_path_factory.mktemp("show") / "s.sqlite3"))
    store.write_spans(_spans())
    store.write_logs(
        [LogRecord(time.time_ns(), 17, "ERROR", "old", "legacy", request_id=LOGS_ONLY)]
    )
    server = serve_asgi(create_app(store), "show-backend", start_timeout=20)
    try:
        yield server.url
    finally:
        server.stop(20)
        store.close()


def _show(url: str, *args: str) -> Result:
    result = CliRunner().invoke(main, ["show", *args, "--url", url], catch_exceptions=False)
    return result


def _span_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "|" in line and not line.startswith("  span")]


def test_piped_tree_is_one_plain_line_per_span(backend: str) -> None:
    result = _show(backend, TID.hex())
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output
    lines = _span_lines(result.output)
    assert len(lines) == 4
    assert LONG_NAME in lines[2]  # piped: never shortened
    assert "IntegrityError: (sqlite3.IntegrityError) UNIQUE constraint failed" in lines[3]
    assert "[SQL: INSERT" not in result.output  # only the first line of the error
    assert "compute-api" in lines[0]
    assert re.search(r"\| +100\.0 ms", lines[0])


@pytest.mark.parametrize("width", [80, 120])
def test_tree_fits_the_terminal_width(backend: str, width: int) -> None:
    result = _show(backend, TID.hex(), "--width", str(width))
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= width
    lines = _span_lines(result.output)
    assert len(lines) == 4
    assert "POST /v2.1/servers" in lines[0]
    assert "volume.db.insert" in lines[3]
    assert "IntegrityError" in lines[3]  # the exception's type survives shortening


def test_full_adds_the_whole_error_stack_and_span_ids(backend: str) -> None:
    result = _show(backend, TID.hex(), "--full")
    assert result.exit_code == 0, result.output
    assert "[SQL: INSERT ...]" in result.output
    assert "Traceback (most recent call last):" in result.output
    assert f"span {IDS['db'].hex()}  parent {IDS['worker'].hex()}" in result.output


def test_tree_marks_the_root_cause_the_server_names(backend: str) -> None:
    result = _show(backend, TID.hex())
    assert "root cause (error): volume · volume.db.insert · IntegrityError" in result.output
    lines = _span_lines(result.output)
    assert lines[3].startswith("●")
    assert "ROOT CAUSE: IntegrityError" in lines[3]
    assert all(line.startswith("↑") for line in lines[:3])  # its callers passed it on


def test_tree_marks_the_root_cause_it_is_given() -> None:
    spans = [
        {"span_id": "a", "parent_span_id": None, "service": "api", "name": "root",
         "start_ns": 0, "end_ns": 10, "status": "error", "status_message": "HTTP 500"},
        {"span_id": "b", "parent_span_id": "a", "service": "db", "name": "insert",
         "start_ns": 2, "end_ns": 4, "status": "error", "status_message": "duplicate"},
    ]  # fmt: skip
    wf = build_waterfall(spans, Marks(root_cause="b", consequences=frozenset({"a"})))
    lines = render_tree(wf, width=None)
    assert lines[1].startswith("↑ root")
    assert lines[2].startswith("●  insert")
    assert lines[2].endswith("ROOT CAUSE: duplicate")


def test_json_carries_the_trace_and_its_analysis(backend: str) -> None:
    result = _show(backend, TID.hex(), "--format", "json")
    doc = json.loads(result.output)
    assert doc["trace"]["trace_id"] == TID.hex()
    assert len(doc["trace"]["spans"]) == 4
    assert "analysis" in doc


def test_html_is_one_self_contained_file(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "trace.html"
    result = _show(backend, TID.hex(), "--format", "html", "-o", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert "<style>" in page
    assert LONG_NAME in page
    assert not re.search(r"<script|<link|src=|href=\"?https?:", page)


def test_dot_is_a_graph_of_parent_edges(backend: str) -> None:
    result = _show(backend, TID.hex(), "--format", "dot")
    assert result.output.startswith("digraph ")
    assert result.output.count(" -> ") == 3
    assert f'"{IDS["db"].hex()}" [' in result.output
    assert 'color="#b3261e"' in result.output


def test_a_request_id_shows_its_traces(backend: str) -> None:
    result = _show(backend, GID)
    assert result.exit_code == 0, result.output
    assert f"request {GID}: 1 trace(s)" in result.output
    assert len(_span_lines(result.output)) == 4
    logs_only = _show(backend, LOGS_ONLY)
    assert logs_only.exit_code == 0, logs_only.output
    assert "no traces carry this request id" in logs_only.output


def test_a_bad_or_unknown_id_is_refused(backend: str) -> None:
    bad = _show(backend, "not-an-id")
    assert bad.exit_code == 2
    assert "trace id" in bad.output
    unknown = _show(backend, "ab" * 16)
    assert unknown.exit_code == 2
    assert "not found" in unknown.output
