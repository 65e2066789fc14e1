"""A collected multi-host tree: host and service of every record come from its path."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from logtree import GLOBAL, NEUTRON_REQ, REQ, Tree

from crosstrace.cli import main
from crosstrace.server.logs.importer import import_file
from crosstrace.server.model import LogQuery
from crosstrace.server.store import Store, open_store

ALL = 1_000


def sites(store: Store, request_id: str) -> Counter[tuple[str, str | None]]:
    records = store.search_logs(LogQuery(request_id=request_id, limit=ALL))
    return Counter((r.service, r.resource.get("host.name")) for r in records)


def test_tree_names_host_and_service(store: Store, tree: Tree) -> None:
    """Each record's host is its `<host>/var/log` directory, its service the project
    directory and file: neutron's server.log is neutron-server, both computes'
    nova-compute.log are nova-compute on two hosts."""
    results = [import_file(store, path) for path in tree.files]
    assert [(r.service, r.host) for r in results] == [
        ("nova-api", "ctl1"),
        ("nova-conductor", "ctl1"),
        ("neutron-server", "ctl1"),
        ("nova-compute", "cmp1"),
        ("nova-compute", "cmp2"),
    ]
    assert sites(store, REQ) == {
        ("nova-api", "ctl1"): 3,
        ("nova-conductor", "ctl1"): 1,
        ("nova-compute", "cmp1"): 3,
        ("nova-compute", "cmp2"): 3,
    }
    assert sites(store, NEUTRON_REQ) == {("neutron-server", "ctl1"): 1}
    assert sum(sites(store, GLOBAL).values()) == 11


def test_same_file_on_two_hosts_is_two_sets_of_records(store: Store, tmp_path: Path) -> None:
    """Two hosts' identical copies of a file are both stored (the host is part of each
    record's identity); importing them again adds nothing."""
    text = "2024-07-01 12:00:00.000 1 INFO nova.compute.manager [-] Compute service started\n"
    paths = []
    for host in ("cmp1", "cmp2"):
        path = tmp_path / host / "var" / "log" / "nova" / "nova-compute.log"
        path.parent.mkdir(parents=True)
        path.write_text(text)
        paths.append(path)
    assert [import_file(store, p).stored for p in paths] == [1, 1]
    assert [import_file(store, p).stored for p in paths] == [0, 0]
    records = store.search_logs(LogQuery(service="nova-compute", limit=ALL))
    assert sorted(r.resource["host.name"] for r in records) == ["cmp1", "cmp2"]


def test_host_and_service_flags_override_the_path(tmp_path: Path, tree: Tree) -> None:
    """--host and --service name every record of the files given."""
    db = "sqlite:///" + str(tmp_path / "cli.sqlite3")
    path = tree.files[4]  # cmp2's nova-compute.log
    res = CliRunner().invoke(
        main,
        ["logs", "import", "--db", db, "--json", "--host", "cmp2.example.org", str(path)],
    )
    assert res.exit_code == 0, res.output
    [summary] = json.loads(res.stdout)
    assert (summary["service"], summary["host"]) == ("nova-compute", "cmp2.example.org")
    s = open_store(db)
    try:
        records = s.search_logs(LogQuery(limit=ALL))
    finally:
        s.close()
    assert {r.resource["host.name"] for r in records} == {"cmp2.example.org"}


def test_journald_json_export_names_its_host(tmp_path: Path) -> None:
    """`journalctl -o json`: _HOSTNAME is the host, SYSLOG_IDENTIFIER/_PID the process,
    MESSAGE an oslo.log payload with the request id."""
    entries = [
        {
            "__REALTIME_TIMESTAMP": "1719835200123456",
            "_HOSTNAME": "cmp1",
            "SYSLOG_IDENTIFIER": "nova-compute",
            "_PID": "5404",
            "MESSAGE": f"INFO nova.compute.manager [{GLOBAL} {REQ} admin demo] Started",
        },
        {
            "__REALTIME_TIMESTAMP": "1719835200223456",
            "_HOSTNAME": "cmp1",
            "SYSLOG_IDENTIFIER": "sudo",
            "_PID": "5405",
            "MESSAGE": [104, 105],  # journald exports non-UTF-8-safe text as bytes
        },
    ]
    path = tmp_path / "journal.json"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    s = open_store("sqlite:///" + str(tmp_path / "j.sqlite3"))
    try:
        result = import_file(s, path, service="nova-compute")
        records = s.search_logs(LogQuery(limit=ALL))
    finally:
        s.close()
    assert result.stats.formats == {"journal-json": 2}
    first, second = records
    assert first.time_ns == 1719835200123456000
    assert (first.request_id, first.global_request_id) == (REQ, GLOBAL)
    assert first.resource["host.name"] == "cmp1"
    assert first.resource["process.pid"] == 5404
    assert first.body == "Started"
    assert second.body == "hi"
    assert second.resource["process.executable.name"] == "sudo"
