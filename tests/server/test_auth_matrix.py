"""The authorization matrix: every identity kind x every read path, on both stores.

Two domains with two projects each, two traces and a log line per project, one
trace without an owner, and a forged batch that names another project in a
project's trace. For each identity the expected answer of every read path is
computed from that data alone (who owns what), and the API's answer must equal
it: nothing more (a leak), nothing less (a wrongful denial), counts, pages and
cursors included.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from serve_samples import BASE_NS, PB, AppClient, log_request, opened, span_request

from crosstrace.server.app import create_app
from crosstrace.server.auth.access import Access
from crosstrace.server.auth.audit import Auditor
from crosstrace.server.auth.identities import IdentityFile, add_identity
from crosstrace.server.auth.policy import Policy
from crosstrace.server.store import Store

DOMAINS = {"d1": ("p1", "p2"), "d2": ("p3", "p4")}
PROJECTS = {p: d for d, ps in DOMAINS.items() for p in ps}
SECRET_SQL = "SELECT card_number FROM wallet"
MASKED_KEYS = ("db.statement",)


@dataclass
class Trace:
    trace_id: bytes
    owner: str | None  # project
    domain: str | None
    request_id: str | None
    # (span_id, parent_id, service, name)
    spans: list[tuple[bytes, bytes | None, str, str]] = field(default_factory=list)


@dataclass
class Data:
    traces: list[Trace] = field(default_factory=list)
    # (body, project, domain, request id, trace id)
    logs: list[tuple[str, str | None, str | None, str | None, bytes | None]] = field(
        default_factory=list
    )


def _rid() -> str:
    return f"req-{uuid.uuid4()}"


def _load(client: AppClient, ingest: str) -> Data:
    data = Data()
    headers = {**PB, "authorization": f"Bearer {ingest}"}
    n = 0
    for project, domain in PROJECTS.items():
        for kind in ("a", "b"):
            n += 1
            tid = os.urandom(16)
            rid = _rid()
            root, client_span, db = os.urandom(8), os.urandom(8), os.urandom(8)
            start = BASE_NS + n * 10_000_000
            failed = 2 if kind == "b" else 0  # the 'b' traces fail in their database
            owner = {"openstack.project_id": project, "openstack.project_domain_id": domain}
            t = Trace(tid, project, domain, rid)
            api = f"api-{project}"
            spans = [
                {
                    "trace_id": tid,
                    "span_id": root,
                    "name": f"GET /{kind}-{project}",
                    "kind": 2,
                    "start_ns": start,
                    "attributes": {**owner, "openstack.global_request_id": rid},
                    "status_code": failed,
                },
                {
                    "trace_id": tid,
                    "span_id": client_span,
                    "parent_span_id": root,
                    "name": "db call",
                    "kind": 3,
                    "start_ns": start + 1000,
                    "status_code": failed,
                },
            ]
            body = span_request(spans, service=api)
            assert client.post("/v1/traces", content=body, headers=headers).status_code == 200
            t.spans += [
                (root, None, api, f"GET /{kind}-{project}"),
                (client_span, root, api, "db call"),
            ]
            # The database service's spans come in a batch of their own.
            db_span = {
                "trace_id": tid,
                "span_id": db,
                "parent_span_id": client_span,
                "name": f"query-{project}",
                "kind": 2,
                "start_ns": start + 2000,
                "status_code": failed,
                "attributes": {"db.statement": SECRET_SQL, **owner},
                "events": [
                    {
                        "time_ns": start + 2500,
                        "name": "exception",
                        "attributes": {
                            "exception.type": f"DBError{project}",
                            "exception.message": f"disk full on {project}",
                        },
                    }
                ]
                if failed
                else [],
            }
            body = span_request([db_span], service=f"db-{project}")
            assert client.post("/v1/traces", content=body, headers=headers).status_code == 200
            t.spans.append((db, client_span, f"db-{project}", f"query-{project}"))
            data.traces.append(t)
            log = {
                "time_ns": start + 500,
                "body": f"log-{kind}-{project}",
                "trace_id": tid,
                "attributes": {**owner, "openstack.global_request_id": rid},
            }
            body = log_request([log], service=api)
            assert client.post("/v1/logs", content=body, headers=headers).status_code == 200
            data.logs.append((f"log-{kind}-{project}", project, domain, rid, tid))
    # A trace without an owner (a periodic task) and its log line.
    tid, root = os.urandom(16), os.urandom(8)
    rid = _rid()
    body = span_request(
        [
            {
                "trace_id": tid,
                "span_id": root,
                "name": "periodic",
                "kind": 1,
                "start_ns": BASE_NS + 99 * 10_000_000,
                "attributes": {"openstack.global_request_id": rid},
            }
        ],
        service="cron",
    )
    assert client.post("/v1/traces", content=body, headers=headers).status_code == 200
    data.traces.append(Trace(tid, None, None, rid, [(root, None, "cron", "periodic")]))
    body = log_request([{"time_ns": BASE_NS, "body": "log-cron"}], service="cron")
    assert client.post("/v1/logs", content=body, headers=headers).status_code == 200
    data.logs.append(("log-cron", None, None, None, None))
    # Forged: a later batch claims p1's first trace for p3, with a root of its
    # own and a child of p1's client span.
    victim = data.traces[0]
    forged_root, forged_child = os.urandom(8), os.urandom(8)
    claim = {"openstack.project_id": "p3", "openstack.project_domain_id": "d2"}
    body = span_request(
        [
            {
                "trace_id": victim.trace_id,
                "span_id": forged_root,
                "name": "forged root",
                "kind": 2,
                "attributes": claim,
            },
            {
                "trace_id": victim.trace_id,
                "span_id": forged_child,
                "parent_span_id": victim.spans[1][0],
                "name": "forged child",
                "kind": 2,
                "attributes": claim,
            },
        ],
        service="evil",
    )
    assert client.post("/v1/traces", content=body, headers=headers).status_code == 200
    victim.spans += [
        (forged_root, None, "evil", "forged root"),
        (forged_child, victim.spans[1][0], "evil", "forged child"),
    ]
    return data


@dataclass(frozen=True)
class Who:
    kind: str
    token: str | None
    projects: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    cloud: bool = False
    reads: bool = False  # passes the read rule
    sensitive: bool = False
    metrics: bool = False
    audit: bool = False

    @property
    def authenticated(self) -> bool:
        return self.kind not in ("no token", "wrong token")

    def sees(self, project: str | None, domain: str | None) -> bool:
        if self.cloud:
            return True
        return (project is not None and project in self.projects) or (
            domain is not None and domain in self.domains
        )


def _identities(path: Path) -> tuple[list[Who], str]:
    def make(
        name: str, roles: list[str], domains: Sequence[str] = (), projects: Sequence[str] = ()
    ) -> str:
        return add_identity(path, name, roles, domains, projects)

    admin = make("cloud-admin", ["admin"])
    domain = make("domain-reader", ["reader"], domains=["d1"])
    project = make("project-reader", ["reader"], projects=["p3"])
    sensitive = make("sensitive-reader", ["reader", "sensitive"], projects=["p2"])
    ingest = make("ingest", ["ingest"])
    metrics = make("metrics", ["metrics"])
    wrong = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    whos = [
        Who("cloud admin", admin, cloud=True, reads=True, sensitive=True, metrics=True, audit=True),
        Who("domain reader", domain, domains=frozenset({"d1"}), reads=True),
        Who("project reader", project, projects=frozenset({"p3"}), reads=True),
        Who("reader+sensitive", sensitive, projects=frozenset({"p2"}), reads=True, sensitive=True),
        Who("ingest", ingest),
        Who("metrics", metrics, metrics=True),
        Who("no token", None),
        Who("wrong token", wrong),
    ]
    return whos, ingest


@pytest.fixture(params=["sqlite", "postgresql"])
def matrix(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[AppClient, Data, list[Who], Store]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'matrix.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    auth = tmp_path / "auth.toml"
    whos, ingest = _identities(auth)
    with opened(url) as store:
        access = Access(identities=IdentityFile(auth), policy=Policy(), auditor=Auditor(store))
        client = AppClient(create_app(store, access=access))
        try:
            data = _load(client, ingest)
            yield client, data, whos, store
        finally:
            client.close()


class Checker:
    """Runs requests as one identity and records every mismatch."""

    def __init__(self, client: AppClient, who: Who) -> None:
        self.client = client
        self.who = who
        self.checks = 0
        self.problems: list[str] = []

    def get(self, url: str) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {self.who.token}"} if self.who.token else {}
        r = self.client.get(url, headers=headers)
        return r.status_code, (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        )

    def expect(self, url: str, allowed: bool, check: Any = None) -> Any:
        """GET *url*: refused (401 unauthenticated, 403 rule) unless *allowed*, else
        200 and ``check(body)`` is true."""
        self.checks += 1
        status, body = self.get(url)
        want = 200 if allowed else (403 if self.who.authenticated else 401)
        if status != want:
            self.problems.append(f"{self.who.kind}: {url} -> {status}, expected {want}")
            return None
        if allowed and check is not None:
            problem = check(body)
            if problem:
                self.problems.append(f"{self.who.kind}: {url}: {problem}")
        return body if allowed else None

    def expect_by_id(self, url: str, visible: bool, check: Any = None) -> None:
        """A by-id path: 200 when visible, 404 when out of scope (not 403: the
        caller must not learn that it exists)."""
        if not self.who.reads:
            self.expect(url, False)
            return
        self.checks += 1
        status, body = self.get(url)
        want = 200 if visible else 404
        if status != want:
            self.problems.append(f"{self.who.kind}: {url} -> {status}, expected {want}")
        elif visible and check is not None:
            problem = check(body)
            if problem:
                self.problems.append(f"{self.who.kind}: {url}: {problem}")


def _ui(c: Checker, url: str, visible: bool, check: Any = None) -> None:
    """A page of the web UI: readers get it (200) or 404 out of scope; anyone else
    is sent to the login page (303)."""
    c.checks += 1
    status, body = c.get(url)
    want = (200 if visible else 404) if c.who.reads else 303
    if status != want:
        c.problems.append(f"{c.who.kind}: UI {url} -> {status}, expected {want}")
    elif want == 200 and check is not None:
        problem = check(body)
        if problem:
            c.problems.append(f"{c.who.kind}: UI {url}: {problem}")


_TRACE_LINK = re.compile(r"/traces/([0-9a-f]{32})")


def _same(got: Any, want: Any) -> str | None:
    return None if got == want else f"got {got!r}, expected {want!r}"


def _edges(traces: list[Trace]) -> dict[tuple[str, str], list[int]]:
    """Caller -> callee (calls, errors) of *traces*: a parent and child in different
    services; the db spans of the 'b' traces are errors."""
    edges: dict[tuple[str, str], list[int]] = {}
    for t in traces:
        service_of = {s[0]: s[2] for s in t.spans}
        for _span_id, parent, service, name in t.spans:
            caller = service_of.get(parent) if parent else None
            if caller is not None and caller != service:
                e = edges.setdefault((caller, service), [0, 0])
                e[0] += 1
                e[1] += int(name.startswith("query-") and t.spans[0][3].startswith("GET /b-"))
    return edges


def _run(
    client: AppClient, data: Data, who: Who, group_owners: dict[str, tuple[str, str]]
) -> Checker:
    """Every read path as *who*; the checker holds the mismatches."""
    c = Checker(client, who)
    visible = [t for t in data.traces if who.sees(t.owner, t.domain)]
    ids = {t.trace_id.hex() for t in visible}
    services = sorted({s[2] for t in visible for s in t.spans})
    r = who.reads

    # Search: everything visible, exactly; the same walking the pages.
    c.expect(
        "/api/v1/traces?limit=1000",
        r,
        lambda b: _same({t["trace_id"] for t in b["traces"]}, ids),
    )
    if r:
        seen: list[str] = []
        url = "/api/v1/traces?limit=1"
        while url:
            body = c.expect(url, True)
            if body is None:
                break
            seen += [t["trace_id"] for t in body["traces"]]
            url = (
                f"/api/v1/traces?limit=1&cursor={body['next_cursor']}"
                if body["next_cursor"]
                else ""
            )
        if sorted(seen) != sorted(ids):
            c.problems.append(f"{who.kind}: paging gave {len(seen)} traces, expected {len(ids)}")
    else:
        c.expect("/api/v1/traces?limit=1", False)
    for project in PROJECTS:
        want = {t.trace_id.hex() for t in visible if t.owner == project}
        c.expect(
            f"/api/v1/traces?project={project}",
            r,
            lambda b, w=want: _same({t["trace_id"] for t in b["traces"]}, w),
        )
        want = {t.trace_id.hex() for t in visible if any(s[2] == f"db-{project}" for s in t.spans)}
        c.expect(
            f"/api/v1/traces?service=db-{project}",
            r,
            lambda b, w=want: _same({t["trace_id"] for t in b["traces"]}, w),
        )
    c.expect(
        "/api/v1/traces?service=evil",
        r,
        lambda b: _same(
            {t["trace_id"] for t in b["traces"]},
            {t.trace_id.hex() for t in visible if any(s[2] == "evil" for s in t.spans)},
        ),
    )
    # By id: every trace, with its span count.
    for t in data.traces:
        c.expect_by_id(
            f"/api/v1/traces/{t.trace_id.hex()}",
            t.trace_id.hex() in ids,
            lambda b, t=t: _same(
                (b["summary"]["span_count"], len(b["spans"])), (len(t.spans), len(t.spans))
            ),
        )
    # Request views: traces and logs of each request.
    for t in data.traces:
        want_logs = sorted(
            lg[0] for lg in data.logs if lg[3] == t.request_id and who.sees(lg[1], lg[2])
        )
        want_traces = {t.trace_id.hex()} if t.trace_id.hex() in ids else set()
        c.expect(
            f"/api/v1/requests/{t.request_id}",
            r,
            lambda b, wt=want_traces, wl=want_logs: _same(
                ({x["trace_id"] for x in b["traces"]}, sorted(x["body"] for x in b["logs"])),
                (wt, wl),
            ),
        )
    # Logs: all, by trace, by text.
    want_logs = sorted(lg[0] for lg in data.logs if who.sees(lg[1], lg[2]))
    c.expect(
        "/api/v1/logs?limit=1000",
        r,
        lambda b: _same(sorted(x["body"] for x in b["logs"]), want_logs),
    )
    c.expect(
        "/api/v1/logs?q=log-a",
        r,
        lambda b: _same(
            sorted(x["body"] for x in b["logs"]),
            [w for w in want_logs if w.startswith("log-a")],
        ),
    )
    for t in data.traces[:4]:
        want = sorted(lg[0] for lg in data.logs if lg[4] == t.trace_id and who.sees(lg[1], lg[2]))
        c.expect(
            f"/api/v1/logs?trace_id={t.trace_id.hex()}",
            r,
            lambda b, w=want: _same(sorted(x["body"] for x in b["logs"]), w),
        )
    # Names and dependencies.
    c.expect("/api/v1/services", r, lambda b: _same(b["services"], services))
    for service in sorted({s[2] for t in data.traces for s in t.spans}):
        want_ops = sorted({s[3] for t in visible for s in t.spans if s[2] == service})
        c.expect(
            f"/api/v1/services/{service}/operations",
            r,
            lambda b, w=want_ops: _same(sorted(b["operations"]), w),
        )
    want_edges = dict(sorted(_edges(visible).items()))
    c.expect(
        "/api/v1/dependencies",
        r,
        lambda b: _same(
            {(e["caller"], e["callee"]): [e["calls"], e["errors"]] for e in b["dependencies"]},
            want_edges,
        ),
    )
    # Sensitive values: masked unless the identity has the sensitive rule.
    for t in visible[:1] if r else data.traces[:1]:

        def masked(b: dict[str, Any]) -> str | None:
            values = [
                s["attributes"].get("db.statement")
                for s in b["spans"]
                if "db.statement" in s["attributes"]
            ]
            want = SECRET_SQL if who.sensitive else "******"
            return _same(set(values), {want})

        c.expect_by_id(f"/api/v1/traces/{t.trace_id.hex()}", r, masked)
    # A filter on a masked value would tell it: refused without the rule.
    c.expect(f"/api/v1/traces?attr.db.statement={SECRET_SQL}", r and who.sensitive)
    # Root cause and error groups: by id like the traces; groups count only
    # the failures in scope.
    for t in data.traces:
        c.expect_by_id(f"/api/v1/traces/{t.trace_id.hex()}/analysis", t.trace_id.hex() in ids)
        c.expect_by_id(f"/api/v1/requests/{t.request_id}/analysis", t.trace_id.hex() in ids)
    failed = [t for t in visible if t.spans[0][3].startswith("GET /b-")]
    window = "start=2025-11-22T00:00:00Z&end=2025-11-23T00:00:00Z"

    def groups(b: dict[str, Any]) -> str | None:
        got = (
            sum(g["count"] for g in b["groups"]),
            sorted({p for g in b["groups"] for p in g["projects"]}),
            sorted({t for g in b["groups"] for t in g["sample_trace_ids"]}),
        )
        want = (
            len(failed),
            sorted({t.owner for t in failed if t.owner}),
            sorted(t.trace_id.hex() for t in failed),
        )
        return _same(got, want)

    c.expect(f"/api/v1/errors?{window}", r, groups)
    for group_id, (project, domain) in group_owners.items():
        c.expect_by_id(f"/api/v1/errors/{group_id}?{window}", who.sees(project, domain))
    # The web UI: the same scope and masking as the API.
    for t in data.traces:
        _ui(c, f"/traces/{t.trace_id.hex()}", t.trace_id.hex() in ids)
        _ui(c, f"/requests/{t.request_id}", t.trace_id.hex() in ids)
    _ui(
        c,
        f"/traces?{window}",
        True,
        lambda b: _same(set(_TRACE_LINK.findall(b)), ids),
    )
    if visible and r:
        t = visible[0]
        db_span = t.spans[2][0].hex()  # its attributes hold the SQL text
        _ui(
            c,
            f"/traces/{t.trace_id.hex()}/spans/{db_span}",
            True,
            lambda b: None if (SECRET_SQL in b) == who.sensitive else "masking is wrong",
        )
    # Metrics and the audit log.
    c.expect("/metrics", who.metrics)
    c.expect("/api/v1/audit?limit=5", who.audit, lambda b: None if b["events"] else "no events")
    return c


def _group_owners(client: AppClient, data: Data, admin: Who) -> dict[str, tuple[str, str]]:
    """Error group id -> the project and domain of its failures (asked as admin)."""
    r = client.get(
        "/api/v1/errors?start=2025-11-22T00:00:00Z&end=2025-11-23T00:00:00Z",
        headers={"authorization": f"Bearer {admin.token}"},
    )
    assert r.status_code == 200
    owner_of = {t.trace_id.hex(): (t.owner, t.domain) for t in data.traces}
    out = {}
    for g in r.json()["groups"]:
        (owner,) = {owner_of[t] for t in g["sample_trace_ids"]}
        out[g["group_id"]] = owner
    return out


def test_every_identity_on_every_read_path(
    matrix: tuple[AppClient, Data, list[Who], Store],
) -> None:
    """Zero leaks and zero wrongful denials, counts and cursors included."""
    client, data, whos, _ = matrix
    total = 0
    problems: list[str] = []
    group_owners = _group_owners(client, data, whos[0])
    assert len(group_owners) == len(PROJECTS)  # one failure signature per project
    for who in whos:
        c = _run(client, data, who, group_owners)
        total += c.checks
        problems += c.problems
    assert not problems, f"{len(problems)} of {total} checks failed:\n" + "\n".join(problems)
    print(f"authorization matrix: {len(whos)} identities, {total} checks, 0 leaks, 0 denials")
    assert total >= 400
