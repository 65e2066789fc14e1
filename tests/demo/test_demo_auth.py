"""``crosstrace demo --auth``: the backend takes only the tokens the demo prints,
and a domain reader's token reads that domain's traces only."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from click.testing import CliRunner

from crosstrace.cli import main
from crosstrace.demo.backend import start_backend
from crosstrace.demo.identity import IDENTITIES


def test_demo_with_auth_scopes_each_token(tmp_path: Path) -> None:
    args = ["demo", "--auth", "--once", "--fast", "--requests", "12", "--port", "0"]
    result = CliRunner().invoke(
        main,
        [*args, "--data-dir", str(tmp_path)],
        env={"COLUMNS": "160"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    tokens = dict(re.findall(r"^\s+([a-z-]+): (ctk_\S+)$", result.output, re.MULTILINE))
    assert {"demo-ingest", "demo-admin", "retail-reader", "research-reader"} <= set(tokens)
    backend = start_backend(tmp_path, port=0, auth_file=tmp_path / "auth.toml")
    try:

        def traces(token: str | None) -> tuple[int, list[dict[str, object]]]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = requests.get(f"{backend.url}/api/v1/traces?limit=1000", headers=headers, timeout=30)
            return r.status_code, (r.json()["traces"] if r.status_code == 200 else [])

        status, everything = traces(tokens["demo-admin"])
        assert status == 200
        retail = {i.domain_id for i in IDENTITIES if i.domain_name == "retail"}
        status, mine = traces(tokens["retail-reader"])
        assert status == 200
        assert mine
        assert {t["domain_id"] for t in mine} == retail
        assert {t["trace_id"] for t in mine} == {
            t["trace_id"] for t in everything if t["domain_id"] in retail
        }
        assert traces(None)[0] == 401
        assert traces(tokens["demo-ingest"])[0] == 403
    finally:
        backend.stop()
