"""A collected multi-host log tree: one live migration across two compute hosts.

``ctl1/var/log/{nova,neutron}/...`` and ``cmp1``/``cmp2/var/log/nova/nova-compute.log``,
as sosreport or a ``/var/log`` copy per node leaves them. The request ``REQ`` (local
id, with the global id ``GLOBAL``) is logged by nova-api and nova-conductor on ctl1
and by nova-compute on both computes; cmp1 calls cmp2 over RPC (``MSG_ID`` logged on
both sides) and cmp2 calls neutron-server, whose own request id ``NEUTRON_REQ`` it
logs in a "used request id" line.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

GLOBAL = "req-0aa0f0c3-7a5e-4d5e-9a51-3e6f2b1c0001"
REQ = "req-5d1c7f2e-8b0a-4c3e-a1f4-9c2b7e6d0002"
NEUTRON_REQ = "req-e3b9a6c1-2f4d-4e8a-b7c5-1d0f9a8e0003"
OTHER_REQ = "req-7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a0004"
MSG_ID = "4f1e8c2a9b7d4e6f8a0b1c2d3e4f5a6b"
INSTANCE = "8a3f1c52-7d3e-4a8b-9c1d-2e3f4a5b6c7d"


@dataclass(frozen=True)
class Tree:
    root: Path
    start: dt.datetime
    files: list[Path]
    lines: int


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def write_tree(root: Path, start: dt.datetime) -> Tree:
    """Write the tree under *root*, its first line at *start* (UTC)."""
    ctx = f"[{GLOBAL} {REQ} admin demo - default default]"
    nctx = f"[{GLOBAL} {NEUTRON_REQ} nova service - default default]"
    other = f"[None {OTHER_REQ} admin demo - default default]"

    def at(ms: int) -> str:
        return _stamp(start + dt.timedelta(milliseconds=ms))

    files = {
        "ctl1/var/log/nova/nova-api.log": [
            f"{at(0)} 2101 INFO nova.api.openstack.compute.migrate_server {ctx}"
            f" [instance: {INSTANCE}] Live migrating to host cmp2",
            f"{at(40)} 2101 DEBUG oslo_messaging._drivers.amqpdriver {ctx}"
            " CAST unique_id: 1a2b3c4d5e6f40718293a4b5c6d7e8f9 exchange 'nova' topic 'conductor'",
            f"{at(60)} 2101 INFO nova.api.openstack.requestlog {ctx} 10.0.0.5"
            f' "POST /v2.1/servers/{INSTANCE}/action" status: 202 len: 0 time: 0.0612',
            f"{at(500)} 2101 INFO nova.api.openstack.requestlog {other} 10.0.0.5"
            ' "GET /v2.1/servers" status: 200 len: 15 time: 0.0100',
        ],
        "ctl1/var/log/nova/nova-conductor.log": [
            f"{at(70)} 3202 DEBUG oslo_messaging._drivers.amqpdriver [-] received message"
            " with unique_id: 1a2b3c4d5e6f40718293a4b5c6d7e8f9",
            f"{at(90)} 3202 INFO nova.conductor.tasks.live_migrate {ctx}"
            f" [instance: {INSTANCE}] Checking destination host cmp2",
        ],
        "ctl1/var/log/neutron/server.log": [
            f"{at(700)} 4303 INFO neutron.wsgi {nctx} 10.0.0.12"
            ' "PUT /v2.0/ports/0c1d HTTP/1.1" status: 200  len: 1234 time: 0.0420',
        ],
        "cmp1/var/log/nova/nova-compute.log": [
            f"{at(200)} 5404 INFO nova.compute.manager {ctx} [instance: {INSTANCE}]"
            " Starting live migration to cmp2",
            f"{at(210)} 5404 DEBUG oslo_messaging._drivers.amqpdriver {ctx}"
            f" CALL msg_id: {MSG_ID} exchange 'nova' topic 'compute.cmp2'",
            f"{at(1500)} 5404 ERROR nova.compute.manager {ctx} [instance: {INSTANCE}]"
            " Live migration failed.: nova.exception.MigrationError: Migration error",
            f"{at(1500)} 5404 ERROR nova.compute.manager {ctx} Traceback (most recent call last):",
            f'{at(1500)} 5404 ERROR nova.compute.manager {ctx}   File "manager.py", line 1,'
            " in _do_live_migration",
            f"{at(1500)} 5404 ERROR nova.compute.manager {ctx}"
            " nova.exception.MigrationError: Migration error",
        ],
        "cmp2/var/log/nova/nova-compute.log": [
            f"{at(250)} 6505 DEBUG oslo_messaging._drivers.amqpdriver [-] received message"
            f" msg_id: {MSG_ID} reply to reply_9f8e7d6c",
            f"{at(300)} 6505 INFO nova.compute.manager {ctx} [instance: {INSTANCE}]"
            " Preparing to receive the instance",
            f"{at(760)} 6505 INFO keystoneauth.session {ctx} PUT call to network for"
            f" http://ctl1:9696/v2.0/ports/0c1d used request id {NEUTRON_REQ}",
            f"{at(1400)} 6505 WARNING nova.compute.manager {ctx} [instance: {INSTANCE}]"
            " Destination refused the migration",
        ],
    }
    paths = []
    count = 0
    for rel, lines in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
        count += len(lines)
    return Tree(root, start, paths, count)
