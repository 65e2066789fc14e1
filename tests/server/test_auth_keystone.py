"""Keystone tokens on the query API, against a real Keystone (PyPI, SQLite).

A domain with two projects; a reader on one, an admin on the other, a reader
scoped to the whole domain, and the cloud admin (admin project). Each reads
through ``X-Auth-Token`` exactly what its token's scope owns; a revoked token is
refused once the validation cache has expired (a clock the test moves).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_samples import BASE_NS, PB, AppClient, opened, span_request

from crosstrace.server.app import create_app
from crosstrace.server.auth.access import Access
from crosstrace.server.auth.keystone import DEFAULT_CACHE_TTL_S, KeystoneValidator
from crosstrace.server.auth.policy import Policy
from crosstrace.server.scope import Scope
from keystone_support import ADMIN_PASSWORD, ADMIN_USER, Keystone

SECRET_SQL = "SELECT secret FROM vault"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cloud(keystone: Keystone, tmp_path: Path) -> Iterator[dict[str, Any]]:
    domain = keystone.create_domain()
    pa, pb = keystone.create_project(domain), keystone.create_project(domain)
    other_domain = keystone.create_domain()
    pc = keystone.create_project(other_domain)
    reader = keystone.make_user(domain, pa, roles=("reader",))
    admin_b = keystone.make_user(domain, pb, roles=("admin",))
    # A reader of the whole domain: a role on the domain, a domain-scoped token.
    name, password = "dom-" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    dom_user = keystone.create_user(domain, name, password)
    keystone._admin("PUT", f"/domains/{domain}/users/{dom_user}/roles/{keystone.role_id('reader')}")
    auth = {
        "identity": {
            "methods": ["password"],
            "password": {"user": {"name": name, "domain": {"id": domain}, "password": password}},
        },
        "scope": {"domain": {"id": domain}},
    }
    resp = keystone.http.post(f"{keystone.url}/v3/auth/tokens", json={"auth": auth}, timeout=30)
    resp.raise_for_status()
    domain_token = resp.headers["X-Subject-Token"]
    clock = Clock()
    validator = KeystoneValidator(
        keystone.url,
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
        system_scope="all",
        clock=clock,
    )
    with opened(f"sqlite:///{tmp_path / 'store.sqlite3'}") as store:
        owners = {pa: domain, pb: domain, pc: other_domain}
        traces = {}
        for project, dom in owners.items():
            tid = os.urandom(16)
            traces[project] = tid.hex()
            attrs = {
                "openstack.project_id": project,
                "openstack.project_domain_id": dom,
                "db.statement": SECRET_SQL,
            }
            body = span_request(
                [
                    {
                        "trace_id": tid,
                        "span_id": os.urandom(8),
                        "start_ns": BASE_NS,
                        "attributes": attrs,
                    }
                ]
            )
            loader = AppClient(create_app(store))  # ingest open while loading
            assert loader.post("/v1/traces", content=body, headers=PB).status_code == 200
            loader.close()
        access = Access(policy=Policy(), keystone=validator)
        client = AppClient(create_app(store, access=access))
        try:
            yield {
                "client": client,
                "keystone": keystone,
                "validator": validator,
                "clock": clock,
                "traces": traces,
                "projects": (pa, pb, pc),
                "tokens": {
                    "reader": reader.token,
                    "admin_b": admin_b.token,
                    "domain": domain_token,
                    # The cloud admin: the bootstrap admin, scoped to the system.
                    "cloud": keystone.password_token(ADMIN_USER, ADMIN_PASSWORD, system=True),
                },
            }
        finally:
            client.close()


def _ids(client: AppClient, token: str) -> tuple[int, set[str]]:
    r = client.get("/api/v1/traces", headers={"x-auth-token": token})
    return r.status_code, (
        {t["trace_id"] for t in r.json()["traces"]} if r.status_code == 200 else set()
    )


def test_keystone_scopes_decide_what_each_token_reads(cloud: dict[str, Any]) -> None:
    client, traces, tokens = cloud["client"], cloud["traces"], cloud["tokens"]
    pa, pb, _ = cloud["projects"]
    assert _ids(client, tokens["reader"]) == (200, {traces[pa]})
    assert _ids(client, tokens["admin_b"]) == (200, {traces[pb]})
    assert _ids(client, tokens["domain"]) == (200, {traces[pa], traces[pb]})
    assert _ids(client, tokens["cloud"]) == (200, set(traces.values()))
    # By id: out of scope is 404.
    r = client.get(f"/api/v1/traces/{traces[pb]}", headers={"x-auth-token": tokens["reader"]})
    assert r.status_code == 404
    # A project admin sees sensitive values of its project; a reader does not.
    r = client.get(f"/api/v1/traces/{traces[pb]}", headers={"x-auth-token": tokens["admin_b"]})
    assert r.json()["spans"][0]["attributes"]["db.statement"] == SECRET_SQL
    r = client.get(f"/api/v1/traces/{traces[pa]}", headers={"x-auth-token": tokens["reader"]})
    assert r.json()["spans"][0]["attributes"]["db.statement"] != SECRET_SQL
    # Only the cloud admin reads the audit log; a project admin is no cloud admin.
    assert (
        client.get("/api/v1/audit", headers={"x-auth-token": tokens["admin_b"]}).status_code == 403
    )
    assert client.get("/api/v1/audit", headers={"x-auth-token": tokens["cloud"]}).status_code == 200
    # Garbage and a changed character are refused. (A middle one: the last
    # base64 character of a Fernet token may carry only padding bits.)
    good = tokens["reader"]
    mid = len(good) // 2
    bad = good[:mid] + ("A" if good[mid] != "A" else "B") + good[mid + 1 :]
    assert client.get("/api/v1/traces", headers={"x-auth-token": bad}).status_code == 401


def test_revoked_token_is_refused_once_the_cache_expires(cloud: dict[str, Any]) -> None:
    client, keystone, clock = cloud["client"], cloud["keystone"], cloud["clock"]
    validator: KeystoneValidator = cloud["validator"]
    token = cloud["tokens"]["reader"]
    assert _ids(client, token)[0] == 200
    calls = validator.calls
    assert _ids(client, token)[0] == 200
    assert validator.calls == calls  # answered from the cache
    resp = keystone.http.delete(
        f"{keystone.url}/v3/auth/tokens",
        headers={"X-Auth-Token": keystone.admin_token(), "X-Subject-Token": token},
        timeout=30,
    )
    assert resp.status_code == 204
    clock.now += DEFAULT_CACHE_TTL_S + 0.001
    assert _ids(client, token)[0] == 401
    assert validator.calls == calls + 1


def test_identity_mapping_of_token_bodies() -> None:
    from crosstrace.server.auth.keystone import identity_from_token

    reader = identity_from_token(
        {"roles": [{"name": "reader"}], "project": {"id": "p1"}, "user": {"id": "u"}}
    )
    assert reader is not None
    assert reader.roles == {"reader"}
    assert reader.scope == Scope(projects=frozenset({"p1"}))
    admin = identity_from_token(
        {"roles": [{"name": "admin"}], "project": {"id": "a"}, "is_admin_project": True}
    )
    assert admin is not None
    assert admin.scope.everything
    assert "admin" in admin.roles
    # Without is_admin_project (Keystone's admin project not configured), an
    # admin of a project is an admin of that project only.
    local = identity_from_token({"roles": [{"name": "admin"}], "project": {"id": "a"}})
    assert local is not None
    assert local.scope == Scope(projects=frozenset({"a"}))
    assert "admin" not in local.roles
    assert identity_from_token({"roles": [{"name": "reader"}]}) is None  # unscoped
    assert identity_from_token({"roles": [{"name": "other"}], "project": {"id": "p"}}) is None
