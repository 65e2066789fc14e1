"""The post-mortem of docs/log-import.md, end to end with a real ``serve``: logs
collected from three hosts a month ago are imported, ``serve`` starts with its
default retention, and the failing request is followed across both computes."""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from crosstrace.cli import main
from crosstrace.server.model import LogRecord
from crosstrace.server.store import open_store

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "server" / "logs"))
from logtree import GLOBAL, REQ, write_tree  # noqa: E402
from test_serve_process import ServeProcess, _wait_for  # noqa: E402

pytestmark = pytest.mark.slow

DAY_NS = 86_400 * 10**9
RECORDS = 14  # in the tree (19 lines: one traceback is joined to its record)


def _metric(base: str, name: str) -> int:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} (\d+)$", text, re.MULTILINE)
    return int(m[1]) if m else -1


def test_month_old_logs_survive_default_retention_and_follow_across_hosts(
    tmp_path: Path,
) -> None:
    """Import logs dated 30 days back, start serve with the default retention (7d):
    every imported record is still there after its first retention pass (a record
    sent live with the same age is deleted, and said so), and the failing request
    shows both computes' lines in time order."""
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=30)
    tree = write_tree(tmp_path / "collected", start)
    db = "sqlite:///" + str(tmp_path / "pm.sqlite3")
    live = open_store(db)
    live.write_logs(
        [
            LogRecord(
                time_ns=time.time_ns() - 30 * DAY_NS,
                severity_number=9,
                severity_text="INFO",
                body="sent live a month ago",
                service="live",
            )
        ]
    )
    live.close()

    imported = CliRunner().invoke(main, ["logs", "import", "--db", db, *map(str, tree.files)])
    assert imported.exit_code == 0, imported.output
    assert f"imported {RECORDS} records ({RECORDS} new) from 5 file(s)" in imported.output
    assert "host(s) cmp1, cmp2, ctl1" in imported.output
    assert f"crosstrace request {GLOBAL}   a failing request" in imported.output
    assert "Imported records age from when they were imported" in imported.output

    serve = ServeProcess("--db", db, "--port", "0")  # the default retention: 7 days
    try:
        base = serve.wait_listening()
        _wait_for(lambda: _metric(base, "crosstrace_retention_runs_total") >= 1, 30, "retention")
        assert "retention: 7d (imported log records age from their import)" in serve.lines
        serve.wait_line("retention: deleted 0 traces, 1 log records")
        assert _metric(base, 'crosstrace_retention_deleted_total{signal="logs"}') == 1

        logs = httpx.get(f"{base}/api/v1/logs", params={"limit": 1000}, timeout=10).json()["logs"]
        assert len(logs) == RECORDS
        assert all(r["imported_ns"] for r in logs)
        cmp2 = httpx.get(f"{base}/api/v1/logs", params={"host": "cmp2"}, timeout=10).json()
        assert {(r["service"], r["host"]) for r in cmp2["logs"]} == {("nova-compute", "cmp2")}

        doc = httpx.get(f"{base}/api/v1/requests/{REQ}", timeout=10).json()
        times = [r["time_ns"] for r in doc["logs"]]
        assert times == sorted(times)
        assert {r["host"] for r in doc["logs"]} == {"ctl1", "cmp1", "cmp2"}
        assert [(h["caller_host"], h["callee_host"], h["kind"]) for h in doc["hops"]] == [
            ("ctl1", "ctl1", "rpc"),
            ("ctl1", "cmp1", "request_id"),
            ("cmp1", "cmp2", "rpc"),
            ("cmp2", "ctl1", "used_request_id"),
        ]

        shown = CliRunner().invoke(main, ["request", REQ, "--url", base])
        assert shown.exit_code == 0, shown.output
        rows = [line for line in shown.output.splitlines() if " nova-compute " in line]
        hosts = [("cmp1" if " cmp1 " in row else "cmp2") for row in rows]
        assert hosts == ["cmp1", "cmp1", "cmp2", "cmp2", "cmp2", "cmp2", "cmp1"]
        assert "nova-compute@cmp1 -> nova-compute@cmp2  rpc" in shown.output
    finally:
        assert serve.terminate() == 0
