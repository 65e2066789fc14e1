"""The services page's tracing table: each service's overhead budget against the
overhead its tracer reports, shown to the identities that may list it (admins,
as ``GET /api/v1/overhead``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_samples import AppClient, opened, sqlite_url

from crosstrace.server.app import create_app
from crosstrace.server.auth.access import Access
from crosstrace.server.auth.audit import Auditor
from crosstrace.server.auth.identities import IdentityFile, add_identity
from crosstrace.server.auth.policy import Policy
from crosstrace.server.web.present import tracing_rows


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AppClient, dict[str, dict[str, str]]]]:
    auth = tmp_path / "auth.toml"
    tokens = {
        role: {"authorization": "Bearer " + add_identity(auth, role, [role])}
        for role in ("admin", "reader", "ingest")
    }
    with opened(sqlite_url(tmp_path)) as store:
        access = Access(identities=IdentityFile(auth), policy=Policy(), auditor=Auditor(store))
        client = AppClient(create_app(store, access=access))
        try:
            yield client, tokens
        finally:
            client.close()


def _row(page: str, service: str) -> str:
    match = re.search(
        rf'<tr class="tracing-row [a-z]+">\s*<th scope="row">{service}</th>.*?</tr>', page, re.S
    )
    assert match, f"no tracing row for {service}"
    return match.group(0)


def test_admins_see_budget_against_reported_overhead(
    served: tuple[AppClient, dict[str, dict[str, str]]],
) -> None:
    client, tokens = served
    for service, budget in (("nova-api", 0.02), ("keystone", 0.01)):
        r = client.request(
            "PUT", f"/api/v1/sampling/{service}", json={"budget": budget}, headers=tokens["admin"]
        )
        assert r.status_code == 200
    for body in (
        {
            "service": "nova-api",
            "budget": 0.02,
            "overhead": 0.031,
            "trace_fraction": 0.25,
            "effective_ratio": 0.5,
            "spans_dropped": 7,
        },
        {"service": "glance-api", "overhead": 0.004, "trace_fraction": 1.0},
        {"service": "keystone", "budget": 0.01, "overhead": 0.03, "floor": 0.025},
    ):
        assert (
            client.post("/api/v1/overhead", json=body, headers=tokens["ingest"]).status_code == 204
        )

    page = client.get("/services", headers=tokens["admin"]).text
    assert "Tracing cost" in page
    nova = _row(page, "nova-api")
    assert "over budget" in nova  # 3.1 % against 2 %
    for text in ("2 %", "3.1 %", "25 %", "50 %", ">7<"):
        assert text in nova
    assert "budget below its floor" not in nova  # its floor is not reported
    keystone = _row(page, "keystone")
    assert "budget below its floor" in keystone  # over budget with nothing traced
    assert "2.5 %" in keystone
    glance = _row(page, "glance-api")
    assert "over budget" not in glance  # no budget set
    assert "0.4 %" in glance

    reader_page = client.get("/services", headers=tokens["reader"])
    assert reader_page.status_code == 200
    assert "Tracing cost" not in reader_page.text
    assert "nova-api" not in reader_page.text  # no traces, and no tracing table


def test_tracing_rows_mark_stale_reports_and_services_never_reported() -> None:
    rows = tracing_rows(
        [
            {"service": "a", "budget": 0.02, "reported": {"reported_at": 0.0, "overhead": 0.5}},
            {"service": "b", "budget": 0.02, "reported": {}},
            {"service": "c", "budget": 0.1, "reported": {"reported_at": 990.0, "overhead": 0.105}},
            {"service": "d", "budget": 0.5, "reported": {"reported_at": 990.0, "overhead": 1}},
            {"service": "e", "budget": 0.01, "reported": {"reported_at": 990.0, "overhead": 0.03}},
            {
                "service": "f",
                "budget": 0.01,
                "reported": {"reported_at": 990.0, "overhead": 0.03, "floor": 0.02},
            },
            {
                "service": "g",
                "budget": 0.02,
                "reported": {"reported_at": 990.0, "overhead": 0.03, "floor": 0.01},
            },
        ],
        now_s=1000.0,
    )
    assert [(r["service"], r["state"], r["age"]) for r in rows] == [
        ("a", "stale", "1000 s ago"),
        ("b", "none", "never"),
        ("c", "ok", "10 s ago"),  # within 10 % of its budget
        ("d", "over", "10 s ago"),  # a whole number reported (JSON 1, not 1.0)
        ("e", "over", "10 s ago"),
        ("f", "floor", "10 s ago"),  # over even with nothing traced
        ("g", "over", "10 s ago"),  # its floor is under the budget
    ]
