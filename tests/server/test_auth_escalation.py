"""Escalation attempts on a server with --auth-file identities, and secrets that
must never reach the database or a response."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_samples import BASE_NS, PB, AppClient, log_request, opened, span_request

from crosstrace.server.app import create_app
from crosstrace.server.auth.access import Access
from crosstrace.server.auth.audit import Auditor
from crosstrace.server.auth.identities import IdentityFile, add_identity, revoke_identity
from crosstrace.server.auth.policy import Policy
from crosstrace.server.model import LogRecord
from crosstrace.server.store import Store

SECRET = "Zq8-hunter2-SECRET-9f"


class Server:
    def __init__(
        self, store: Store, client: AppClient, auth: Path, tokens: dict[str, str], access: Access
    ) -> None:
        self.access = access
        self.store = store
        self.client = client
        self.auth = auth
        self.tokens = tokens

    def get(self, url: str, who: str | None, **headers: str) -> int:
        if who is not None:
            headers["authorization"] = f"Bearer {self.tokens.get(who, who)}"
        return self.client.get(url, headers=headers).status_code

    def post(self, path: str, body: bytes, who: str) -> int:
        headers = {**PB, "authorization": f"Bearer {self.tokens[who]}"}
        return self.client.post(path, content=body, headers=headers).status_code


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    auth = tmp_path / "auth.toml"
    tokens = {
        "admin": add_identity(auth, "admin", ["admin"]),
        "reader": add_identity(auth, "reader", ["reader"], projects=["p1"]),
        "ingest": add_identity(auth, "ingest", ["ingest"]),
    }
    with opened(f"sqlite:///{tmp_path / 'store.sqlite3'}") as store:
        access = Access(identities=IdentityFile(auth), policy=Policy(), auditor=Auditor(store))
        client = AppClient(create_app(store, access=access))
        try:
            yield Server(store, client, auth, tokens, access)
        finally:
            client.close()


def _trace(project: str, tid: bytes | None = None, root: bool = True, **attrs: str) -> bytes:
    span = {
        "trace_id": tid or os.urandom(16),
        "span_id": os.urandom(8),
        "kind": 2,
        "attributes": {"openstack.project_id": project, **attrs},
    }
    if not root:
        span["parent_span_id"] = os.urandom(8)
    return span_request([span])


def test_spoofed_identity_headers_do_not_raise_privileges(server: Server) -> None:
    """X-Roles: admin (and friends) from the client mean nothing to the API."""
    spoof = {"x-roles": "admin", "x-is-admin-project": "True", "x-project-id": "p2"}
    assert server.get("/api/v1/audit", "reader", **spoof) == 403
    assert server.get("/metrics", "reader", **spoof) == 403
    assert server.get("/api/v1/traces", None, **spoof) == 401


def test_ingest_token_cannot_read_and_reader_cannot_ingest(server: Server) -> None:
    assert server.get("/api/v1/traces", "ingest") == 403
    assert server.get("/api/v1/logs", "ingest") == 403
    assert server.post("/v1/traces", _trace("p1"), "reader") == 403
    assert server.post("/v1/traces", _trace("p1"), "ingest") == 200


def test_revoked_expired_and_altered_tokens_are_refused(server: Server) -> None:
    reader = server.tokens["reader"]
    assert server.get("/api/v1/traces", "reader") == 200
    for i in (0, len(reader) // 2, len(reader) - 1):
        altered = reader[:i] + ("x" if reader[i] != "x" else "y") + reader[i + 1 :]
        assert server.get("/api/v1/traces", altered) == 401
    assert revoke_identity(server.auth, "reader")
    assert server.access.identities is not None
    server.access.identities.refresh(force=True)  # what the next second's lookup does
    assert server.get("/api/v1/traces", "reader") == 401
    expired = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    server.tokens["old"] = add_identity(server.auth, "old", ["reader"], expires=expired)
    server.access.identities.refresh(force=True)
    assert server.get("/api/v1/traces", "old") == 401


def test_forged_later_batch_does_not_take_a_trace(server: Server) -> None:
    tid = os.urandom(16)
    assert server.post("/v1/traces", _trace("p1", tid), "ingest") == 200
    assert server.post("/v1/traces", _trace("p2", tid), "ingest") == 200  # a second root
    assert server.post("/v1/traces", _trace("p2", tid, root=False), "ingest") == 200
    summary = server.store.get_trace_summary(tid)
    assert summary is not None
    assert summary.project_id == "p1"


def test_a_child_batch_first_claims_nothing(server: Server) -> None:
    """Spans without the root name no owner; the root's batch, when it comes, does."""
    tid = os.urandom(16)
    assert server.post("/v1/traces", _trace("p2", tid, root=False), "ingest") == 200
    summary = server.store.get_trace_summary(tid)
    assert summary is not None
    assert summary.project_id is None
    assert server.post("/v1/traces", _trace("p1", tid), "ingest") == 200
    summary = server.store.get_trace_summary(tid)
    assert summary is not None
    assert summary.project_id == "p1"


def test_audit_log_records_reads_with_who_and_outcome(server: Server) -> None:
    assert server.get("/api/v1/traces?service=x", "reader") == 200
    assert server.get("/api/v1/audit", "reader") == 403
    server.store.append_audit([]).result()  # the writer has committed what came before
    r = server.client.get(
        "/api/v1/audit?user=reader", headers={"authorization": f"Bearer {server.tokens['admin']}"}
    )
    assert r.status_code == 200
    events = r.json()["events"]
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("GET /api/v1/audit", 403),
        ("GET /api/v1/traces", 200),
    ]
    assert events[1]["target"] == "/api/v1/traces?service=x"
    assert events[1]["scope"] == "project:p1"


def test_secrets_are_in_neither_the_database_nor_a_response(server: Server, tmp_path: Path) -> None:
    """A secret in an attribute, a log body, an exception message and an imported
    log line: masked before storage, so no byte of it is on disk."""
    tid = os.urandom(16)
    span = {
        "trace_id": tid,
        "span_id": os.urandom(8),
        "kind": 2,
        "status_message": f"auth failed for X-Auth-Token: {SECRET}",
        "attributes": {
            "openstack.project_id": "p1",
            "http.request.header.x-auth-token": SECRET,
            "url.full": f"http://swift/v1/o?temp_url_sig={SECRET}&temp_url_expires=1",
        },
        "events": [
            {
                "time_ns": BASE_NS,
                "name": "exception",
                "attributes": {"exception.message": f"login failed: password={SECRET}"},
            }
        ],
    }
    assert server.post("/v1/traces", span_request([span]), "ingest") == 200
    log = {
        "time_ns": BASE_NS,
        "body": f"REQ: curl -H 'X-Auth-Token: {SECRET}' http://nova/v2.1/servers",
        "attributes": {"openstack.project_id": "p1", "db.password": SECRET},
    }
    assert server.post("/v1/logs", log_request([log]), "ingest") == 200
    imported = LogRecord(
        time_ns=BASE_NS + 1,
        severity_number=9,
        severity_text="INFO",
        body=f'keystone {{"auth": {{"password": "{SECRET}"}}}} Authorization: Bearer {SECRET}',
        service="keystone",
        project_id="p1",
    )
    server.store.write_logs([imported])
    server.store.append_audit([]).result()
    admin = {"authorization": f"Bearer {server.tokens['admin']}"}
    bodies = [
        server.client.get(f"/api/v1/traces/{tid.hex()}", headers=admin).text,
        server.client.get("/api/v1/logs", headers=admin).text,
        server.client.get("/api/v1/traces", headers=admin).text,
        server.client.get("/api/v1/audit", headers=admin).text,
    ]
    assert all(SECRET not in b for b in bodies)
    assert "***" in bodies[0]
    assert "***" in bodies[1]
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("store.sqlite3*"))
    assert SECRET.encode() not in on_disk
    # The chunks are compressed: look in the decoded spans too.
    assert SECRET not in repr(server.store.get_trace(tid))


def test_open_server_ignores_tokens_and_closed_one_needs_them(tmp_path: Path) -> None:
    """Auth off (nothing configured): any token, or none, reads as before."""
    open_access = Access()
    assert open_access.identify("Bearer whatever", None) is not None
    assert open_access.identify(None, None) is not None
    auth = tmp_path / "auth.toml"
    add_identity(auth, "r", ["reader"])
    closed = Access(identities=IdentityFile(auth))
    assert closed.identify(None, None) is None
    assert closed.identify("Bearer whatever", None) is None
