"""The web UI's pages over a real SQLite store, without a browser: status codes,
what each page says, the token cookie, and the waterfall model."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serve_samples import AppClient, DelegatingStore, sqlite_url

from crosstrace.ids import generate_request_id
from crosstrace.server.auth import TokenSet
from crosstrace.server.metrics import Metrics
from crosstrace.server.model import LogRecord, SpanRecord, TraceQuery
from crosstrace.server.query.api import create_api
from crosstrace.server.store import Store, open_store
from crosstrace.server.web import STATIC_DIR, mount_web
from crosstrace.server.web.session import COOKIE_NAME, safe_next
from crosstrace.server.web.waterfall import Marks, build_waterfall, span_dict

MS = 1_000_000


@dataclass
class Sample:
    trace_id: bytes
    ids: dict[str, bytes]
    global_id: str
    logs_only_id: str


def _span(
    trace_id: bytes,
    span_id: bytes,
    parent: bytes | None,
    service: str,
    name: str,
    start: int,
    ms: int,
    **extra: Any,
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=extra.pop("kind", 1),
        start_ns=start,
        end_ns=start + ms * MS,
        service=service,
        **extra,
    )


def _fill(store: Store) -> Sample:
    """One failed boot: api -> image (fails, with a stack) and api -> scheduler."""
    now = time.time_ns() - 60_000 * MS
    tid = os.urandom(16)
    ids = {k: os.urandom(8) for k in ("root", "image", "image_db", "sched", "push")}
    gid = generate_request_id()
    rid = {"openstack.global_request_id": gid, "openstack.project_id": "p1"}
    spans = [
        _span(tid, ids["root"], None, "compute-api", "POST /servers", now, 100, kind=2,
              status_code=2, attributes={**rid, "http.response.status_code": 500}),
        _span(tid, ids["image"], ids["root"], "image", "image.get", now + 5 * MS, 20,
              status_code=2, status_message="store down",
              events=[{"time_ns": now + 20 * MS, "name": "exception", "attributes": {
                  "exception.type": "StoreUnavailable",
                  "exception.message": "Image store backend is unavailable.\nsecond line",
                  "exception.stacktrace": "Traceback (most recent call last):\n  boom"}}]),
        _span(tid, ids["image_db"], ids["image"], "image", "SELECT images", now + 6 * MS, 2),
        _span(tid, ids["sched"], ids["root"], "scheduler", "select <hosts>", now + 30 * MS, 60),
        _span(tid, ids["push"], ids["root"], "compute-api", "metrics.push", now + 31 * MS, 4),
    ]  # fmt: skip
    store.write_spans(spans)
    logs_only = generate_request_id()
    store.write_logs(
        [
            LogRecord(now + 21 * MS, 17, "ERROR", "image fetch failed", "image", trace_id=tid,
                      span_id=ids["image"], global_request_id=gid),
            LogRecord(now + 90 * MS, 17, "ERROR", "boot failed", "compute-api", trace_id=tid,
                      span_id=ids["root"], global_request_id=gid),
            LogRecord(now, 17, "ERROR", "old service broke", "legacy", global_request_id=logs_only),
        ]
    )  # fmt: skip
    return Sample(tid, ids, gid, logs_only)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(sqlite_url(tmp_path))
    yield s
    s.close()


@pytest.fixture
def sample(store: Store) -> Sample:
    return _fill(store)


@contextmanager
def web_client(store: Store, tokens: TokenSet | None = None) -> Iterator[AppClient]:
    client = AppClient(mount_web(create_api(store, Metrics(), tokens=tokens), store, tokens=tokens))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client(store: Store, sample: Sample) -> Iterator[AppClient]:
    with web_client(store) as c:
        yield c


# ---------------------------------------------------------------------- pages


@pytest.mark.parametrize("path", ["/", "/traces", "/map", "/services", "/traces?status=error"])
def test_list_pages_answer_html_with_a_strict_policy(client: AppClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self';" in policy


def test_errors_page_lists_the_failed_trace(client: AppClient, sample: Sample) -> None:
    page = client.get("/").text
    assert f"/traces/{sample.trace_id.hex()}" in page
    assert f"/requests/{sample.global_id}" in page


def test_errors_page_groups_failures_by_root_cause(client: AppClient, sample: Sample) -> None:
    page = client.get("/").text
    group = re.search(r'<table class="list groups">.*?</table>', page, re.S)
    assert group is not None
    assert "StoreUnavailable" in group.group(0)
    assert f"/traces/{sample.trace_id.hex()}" in group.group(0)
    assert "image · StoreUnavailable" in page  # the failed request's root-cause column


def test_trace_page_names_the_root_cause(client: AppClient, sample: Sample) -> None:
    page = client.get(f"/traces/{sample.trace_id.hex()}").text
    assert re.search(r'data-testid="rc-service">image<', page)
    assert re.search(r'data-testid="rc-exception"[^>]*>StoreUnavailable<', page)
    assert '"root_cause":"' + sample.ids["image"].hex() + '"' in page
    assert re.search(r'class="wf-row err[^"]*root-cause', page)


def test_request_page_has_the_verdict(client: AppClient, sample: Sample) -> None:
    page = client.get(f"/requests/{sample.global_id}").text
    assert re.search(r'data-testid="rc-service">image<', page)
    logs_only = client.get(f"/requests/{sample.logs_only_id}").text
    assert re.search(r'data-testid="rc-service">legacy<', logs_only)


def test_search_filters_reach_the_store_query(client: AppClient, sample: Sample) -> None:
    hit = client.get("/traces", params={"service": "image", "status": "error", "start": "1h"})
    assert sample.trace_id.hex() in hit.text
    miss = client.get("/traces", params={"service": "image", "min_duration": "5s"})
    assert sample.trace_id.hex() not in miss.text
    assert "No traces match" in miss.text
    by_attr = client.get("/traces", params=[("attr", "openstack.project_id=p1")])
    assert sample.trace_id.hex() in by_attr.text
    by_other = client.get("/traces", params=[("attr.openstack.project_id", "p2")])
    assert sample.trace_id.hex() not in by_other.text


def test_trace_page_draws_rows_error_and_critical_path(client: AppClient, sample: Sample) -> None:
    page = client.get(f"/traces/{sample.trace_id.hex()}").text
    rows = re.findall(r'<div class="wf-row([^"]*)"\s+role="row"', page)
    assert len(rows) == 6  # the header row and five spans
    assert "StoreUnavailable" in page
    assert 'id="trace-data"' in page
    # The root waits on image.get, then on the scheduler; metrics.push runs beside
    # the scheduler call and ends first, so it is off the critical path.
    assert ["crit" in c for c in rows[1:]] == [True, True, True, True, False]


def test_span_panel_shows_exception_stack_and_logs(client: AppClient, sample: Sample) -> None:
    url = f"/traces/{sample.trace_id.hex()}/spans/{sample.ids['image'].hex()}"
    panel = client.get(url)
    assert panel.status_code == 200
    assert "Traceback (most recent call last)" in panel.text
    assert "image fetch failed" in panel.text
    deep = client.get(
        f"/traces/{sample.trace_id.hex()}", params={"span": sample.ids["image"].hex()}
    )
    assert 'data-span="' + sample.ids["image"].hex() + '"' in deep.text


def test_request_page_and_a_logs_only_request(client: AppClient, sample: Sample) -> None:
    page = client.get(f"/requests/{sample.global_id}").text
    assert sample.trace_id.hex() in page
    assert "boot failed" in page
    logs_only = client.get(f"/requests/{sample.logs_only_id}")
    assert logs_only.status_code == 200
    assert "known from log lines only" in logs_only.text
    assert "old service broke" in logs_only.text


def test_services_page_counts_operations(client: AppClient) -> None:
    page = client.get("/services", params={"window": "6h"}).text
    assert "image.get" in page
    assert "scheduler" in page


def test_map_page_carries_the_graph(client: AppClient) -> None:
    page = client.get("/map").text
    assert '"caller":"compute-api","callee":"image","calls":1,"errors":1' in page


@pytest.mark.parametrize(
    ("path", "status", "text"),
    [
        ("/traces/nothex", 400, "32 hex digits"),
        ("/traces/" + "ab" * 16, 404, "not found"),
        ("/requests/req-nope", 400, "request id"),
        ("/requests/" + generate_request_id(), 404, "nothing is stored"),
        ("/traces?min_duration=soon", 400, "min_duration"),
        ("/traces?start=yesterday-ish", 400, "start"),
        ("/traces?attr=novalue", 400, "key=value"),
        ("/?window=0s", 400, "window"),
        ("/map?window=" + "9" * 300, 400, "window"),
        ("/go?q=hello", 400, "paste a trace id"),
    ],
)
def test_bad_input_is_a_4xx_page(client: AppClient, path: str, status: int, text: str) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert text in response.text
    assert response.headers["content-type"].startswith("text/html")


def test_go_jumps_to_a_trace_or_a_request(client: AppClient, sample: Sample) -> None:
    to_trace = client.get("/go", params={"q": sample.trace_id.hex().upper()})
    assert to_trace.headers["location"] == f"/traces/{sample.trace_id.hex()}"
    to_request = client.get("/go", params={"q": sample.global_id})
    assert to_request.headers["location"] == f"/requests/{sample.global_id}"


def test_a_failing_store_is_a_503_page(store: Store, sample: Sample) -> None:
    class Broken(DelegatingStore):
        def search_traces(self, query: TraceQuery) -> Any:
            raise OSError("disk gone")

    with web_client(Broken(store)) as broken:
        response = broken.get("/traces")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


def test_static_files_and_vendored_layout_are_served(client: AppClient) -> None:
    assert client.get("/static/trace.js").status_code == 200
    dagre = client.get("/static/vendor/dagre.esm.js")
    assert dagre.status_code == 200
    assert "export{" in dagre.text
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    assert "@dagrejs/dagre" in readme
    assert "3.1.3" in readme


# ---------------------------------------------------------------------- tokens


def test_pages_ask_for_the_token_once_and_keep_it_in_a_strict_cookie(
    store: Store, sample: Sample
) -> None:
    with web_client(store, TokenSet(["s3cret-token"])) as client:
        _token_flow(client, sample)


def _token_flow(client: AppClient, sample: Sample) -> None:
    first = client.get("/traces?status=error")
    assert first.status_code == 303
    assert first.headers["location"] == "/login?next=/traces%3Fstatus%3Derror"
    wrong = client.post("/login", data={"token": "guess", "next": "/traces"})
    assert wrong.status_code == 401
    assert COOKIE_NAME not in wrong.headers.get("set-cookie", "")
    right = client.post("/login", data={"token": "s3cret-token", "next": "/traces?status=error"})
    assert right.status_code == 303
    assert right.headers["location"] == "/traces?status=error"
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "max-age" not in cookie
    assert "expires" not in cookie
    page = client.get("/traces?status=error")
    assert page.status_code == 200
    assert sample.trace_id.hex() in page.text
    # The API itself still wants its Bearer token: the cookie opens the pages only.
    assert client.get("/api/v1/services").status_code == 401
    out = client.post("/logout")
    assert out.status_code == 303
    client._client.cookies.clear()
    assert client.get("/").status_code == 303


def test_a_bearer_token_opens_the_pages_too(store: Store, sample: Sample) -> None:
    with web_client(store, TokenSet(["s3cret-token"])) as client:
        page = client.get("/", headers={"Authorization": "Bearer s3cret-token"})
    assert page.status_code == 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/traces?x=1", "/traces?x=1"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("traces", "/"),
        (None, "/"),
    ],
)
def test_login_only_returns_to_local_pages(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


# ------------------------------------------------------------------- waterfall


def _records(store: Store, sample: Sample) -> list[dict[str, Any]]:
    return [span_dict(s) for s in store.get_trace(sample.trace_id)]


def test_waterfall_orders_rows_depth_first_with_marks(store: Store, sample: Sample) -> None:
    marks = Marks(
        root_cause=sample.ids["image"].hex(), consequences=frozenset({sample.ids["root"].hex()})
    )
    wf = build_waterfall(_records(store, sample), marks)
    names = [r.name for r in wf.rows]
    assert names == [
        "POST /servers",
        "image.get",
        "SELECT images",
        "select <hosts>",
        "metrics.push",
    ]
    assert [r.depth for r in wf.rows] == [0, 1, 2, 1, 1]
    assert [r.role for r in wf.rows] == ["consequence", "root-cause", "", "", ""]
    assert wf.rows[1].error_line == "StoreUnavailable: Image store backend is unavailable."
    assert wf.rows[0].descendants == 4
    flags = [row[7] for row in wf.compact()["rows"]]
    assert flags[1] & 4
    assert flags[0] & 8


def test_waterfall_keeps_orphans_and_cycles_once() -> None:
    def span(sid: str, parent: str | None, start: int) -> dict[str, Any]:
        return {"span_id": sid, "parent_span_id": parent, "service": "s", "name": sid,
                "start_ns": start, "end_ns": start + 10, "status": "ok"}  # fmt: skip

    spans = [span("a", None, 0), span("b", "missing", 1), span("c", "d", 2), span("d", "c", 3)]
    wf = build_waterfall(spans)
    assert sorted(r.span_id for r in wf.rows) == ["a", "b", "c", "d"]
    assert all(r.parent < r.index for r in wf.rows)
