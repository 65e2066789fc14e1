"""The web UI in a real browser, against a server the demo filled.

Each test opens pages as an operator would (clicks, keys, forms), saves a
screenshot of each page, and the ``ui`` fixture fails it on any console error or
any request that leaves the server's origin.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from ui_support import AXE, DemoServer

from crosstrace.demo.faults import CATALOGUE, FaultKind

pytestmark = pytest.mark.browser

#: Fault kinds that fail the request with an exception at a known place. (The slow
#: scheduler is left out: on a loaded machine other spans are slow too, and which
#: one the analysis blames is the analysis's own tests' business.)
FAILING_KINDS = [k for k, spec in CATALOGUE.items() if spec.is_failure and spec.root_cause]


def _rows(page: Any) -> Any:
    return page.locator("#wf-canvas .wf-row")


# ------------------------------------------------------------------ errors now


def test_errors_page_lists_the_newest_failed_requests(
    ui: Any, demo_server: DemoServer, shot: Any
) -> None:
    """``/`` lists failed traces; one click on a row opens that trace."""
    ui.goto(demo_server.url + "/")
    shot(ui, "errors-now")
    failed = ui.locator("section[aria-labelledby=failed-h] tbody tr")
    n_failed = sum(1 for b in demo_server.ground_truth["faults"] if b["is_failure"])
    assert failed.count() == min(n_failed, 25)
    first = failed.first.locator("a.op")
    href = first.get_attribute("href")
    first.click()
    ui.wait_for_url(re.compile(r"/traces/[0-9a-f]{32}$"))
    assert urlsplit(ui.url).path == href
    assert ui.locator("#wf-canvas .wf-row.err").count() >= 1


def test_top_error_group_opens_a_trace_with_its_root_cause(
    ui: Any, demo_server: DemoServer, shot: Any
) -> None:
    """Click the top error group: the sample trace names and highlights its root
    cause and shows the request's log lines."""
    ui.goto(demo_server.url + "/")
    group = ui.locator("table.groups tbody tr").first
    service = group.locator(".cause .svc").inner_text().strip()
    exception = group.locator(".cause strong").inner_text().strip()
    group.locator("a.group-link").click()
    ui.wait_for_url(re.compile(r"/traces/[0-9a-f]{32}"))
    shot(ui, "trace-from-top-group")
    assert ui.get_by_test_id("rc-service").inner_text().strip() == service
    assert ui.get_by_test_id("rc-exception").inner_text().strip() == exception
    highlighted = ui.locator("#wf-canvas .wf-row.root-cause")
    assert highlighted.count() == 1
    assert service in highlighted.inner_text()
    assert ui.locator("table.loglist tbody tr").count() >= 1


# ----------------------------------------------------------------------- trace


@pytest.mark.parametrize("kind", FAILING_KINDS, ids=str)
def test_trace_page_names_the_true_root_cause(
    ui: Any, demo_server: DemoServer, shot: Any, kind: FaultKind
) -> None:
    """For each demo fault kind, the trace page names the root-cause service and
    exception type the demo injected, and highlights that span."""
    boot = demo_server.faulty(str(kind))
    truth = boot["root_cause"]
    ui.goto(f"{demo_server.url}/traces/{boot['trace_ids'][0]}")
    shot(ui, f"trace-{kind}")
    assert ui.get_by_test_id("rc-service").inner_text().strip() == truth["service"]
    assert ui.get_by_test_id("rc-exception").inner_text().strip() == truth["error_type"]
    ui.get_by_role("button", name="Jump to root cause").click()
    selected = ui.locator("#wf-canvas .wf-row[aria-selected=true]")
    assert "root-cause" in (selected.get_attribute("class") or "")
    assert truth["service"] in selected.inner_text()


def test_trace_waterfall_is_keyboard_usable(ui: Any, demo_server: DemoServer, shot: Any) -> None:
    """Arrow keys move between rows, Enter shows the span, Left collapses a subtree,
    Right expands it again; the selected span has a deep link."""
    boot = demo_server.faulty("volume_duplicate")
    ui.goto(f"{demo_server.url}/traces/{boot['trace_ids'][0]}")
    total = _rows(ui).count()
    first = _rows(ui).first
    first.focus()
    ui.keyboard.press("ArrowDown")
    focused = ui.locator("#wf-canvas .wf-row:focus")
    assert focused.get_attribute("data-i") == "1"
    name = focused.locator(".nm").inner_text()
    ui.keyboard.press("Enter")
    ui.wait_for_function(
        "name => document.querySelector('#span-panel h2')?.textContent.trim() === name", arg=name
    )
    assert "span=" in ui.url
    ui.keyboard.press("Home")
    ui.keyboard.press("ArrowLeft")  # collapse the root: only it stays
    assert _rows(ui).count() == 1
    assert _rows(ui).first.get_attribute("aria-expanded") == "false"
    ui.keyboard.press("ArrowRight")
    assert _rows(ui).count() == total
    shot(ui, "trace-keyboard")


def test_show_only_errors_keeps_error_spans_and_their_ancestors(
    ui: Any, demo_server: DemoServer
) -> None:
    boot = demo_server.faulty("network_quota")
    ui.goto(f"{demo_server.url}/traces/{boot['trace_ids'][0]}")
    total = _rows(ui).count()
    errors = ui.locator("#wf-canvas .wf-row.err").count()
    ui.get_by_label("Show only errors").check()
    shown = _rows(ui).count()
    assert errors <= shown < total
    assert ui.locator("#wf-canvas .wf-row.err").count() == errors


def test_trace_page_shows_log_lines_linked_to_spans(ui: Any, demo_server: DemoServer) -> None:
    """The trace's log lines are listed in time order; a line's span link selects
    that span in the waterfall."""
    boot = demo_server.faulty("volume_duplicate")
    ui.goto(f"{demo_server.url}/traces/{boot['trace_ids'][0]}")
    lines = ui.locator("table.loglist tbody tr")
    assert lines.count() >= 3
    offsets = [_offset_ms(t) for t in lines.locator("td:first-child").all_inner_texts()]
    assert offsets == sorted(offsets)
    link = ui.locator("table.loglist a[data-span]").last
    span_id = link.get_attribute("data-span")
    link.click()
    ui.wait_for_function(
        "sid => document.querySelector('#span-panel [data-span]')?.dataset.span === sid",
        arg=span_id,
    )
    assert ui.locator("#wf-canvas .wf-row.sel").count() == 1


def _offset_ms(text: str) -> float:
    value, unit = text.strip().lstrip("+").split()
    return float(value) * {"µs": 1e-3, "ms": 1.0, "s": 1e3}[unit]


# --------------------------------------------------------------------- request


def test_request_page_gathers_services_traces_and_logs(
    ui: Any, demo_server: DemoServer, shot: Any
) -> None:
    boot = demo_server.faulty("volume_duplicate")
    ui.goto(f"{demo_server.url}/requests/{boot['global_request_id']}")
    shot(ui, "request")
    touched = set(ui.locator(".chips .chip").all_inner_texts())
    assert set(boot["local_request_ids"]) <= touched
    traces = ui.locator("section[aria-labelledby=rt-h] tbody tr")
    assert traces.count() == len(boot["trace_ids"])
    assert ui.locator("table.loglist tbody tr").count() >= 3
    assert ui.locator(".timeline .lane").count() == len(touched)


def test_request_known_only_from_logs(ui: Any, demo_server: DemoServer, shot: Any) -> None:
    """A request id that only log lines carry still has a page: its lines, no traces."""
    rid = f"req-{uuid.uuid4()}"
    now = time.time_ns()
    body = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "legacy"}}]
                },
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": str(now + i * 1_000_000),
                                "severityNumber": 17 if i else 9,
                                "severityText": "ERROR" if i else "INFO",
                                "body": {"stringValue": f"step {i} of the old service"},
                                "attributes": [
                                    {
                                        "key": "openstack.global_request_id",
                                        "value": {"stringValue": rid},
                                    }
                                ],
                            }
                            for i in range(2)
                        ]
                    }
                ],
            }
        ]
    }
    response = requests.post(demo_server.url + "/v1/logs", json=body, timeout=10)
    assert response.status_code == 200, response.text
    ui.goto(f"{demo_server.url}/requests/{rid}")
    shot(ui, "request-logs-only")
    assert "known from log lines only" in ui.locator("section[aria-labelledby=rt-h]").inner_text()
    bodies = ui.locator("table.loglist td.body").all_inner_texts()
    assert bodies == ["step 0 of the old service", "step 1 of the old service"]


# ---------------------------------------------------------------------- search


def test_search_with_filters(ui: Any, demo_server: DemoServer, shot: Any) -> None:
    """The search form narrows by service and status, and the result is a deep link."""
    ui.goto(demo_server.url + "/traces")
    ui.get_by_label("Service").select_option("volume")
    ui.get_by_label("Status").select_option("error")
    ui.get_by_label("Min duration").fill("1ms")
    ui.get_by_role("button", name="Search").click()
    ui.wait_for_url(re.compile(r"/traces\?"))
    shot(ui, "search")
    query = parse_qs(urlsplit(ui.url).query)
    assert query["service"] == ["volume"]
    assert query["status"] == ["error"]
    rows = ui.locator("table.list tbody tr")
    expected = {
        b["trace_ids"][0]
        for b in demo_server.ground_truth["faults"]
        if b["fault"] in ("volume_duplicate", "volume_db_timeout")
    }
    found = {
        (a.get_attribute("href") or "").rsplit("/", 1)[-1]
        for a in rows.locator("a.op").element_handles()
    }
    assert expected <= found
    for text in rows.locator("td.svcs").all_inner_texts():
        assert "volume" in text
    assert ui.locator("table.list tbody tr:not(.err)").count() == 0
    # The same URL, pasted, gives the same page.
    again = ui.context.new_page()
    again.goto(ui.url)
    assert again.locator("table.list tbody tr").count() == rows.count()
    again.close()


def test_search_rejects_a_bad_filter_with_a_message(
    ui: Any, demo_server: DemoServer, page_watch: Any
) -> None:
    response = ui.goto(demo_server.url + "/traces?min_duration=soon")
    assert response is not None
    assert response.status == 400
    assert "min_duration" in ui.get_by_role("alert").inner_text()
    # The browser reports the 400 itself; that one is expected.
    assert page_watch.console_errors == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
    page_watch.console_errors.clear()


# ------------------------------------------------------------ map and services


def test_service_map_draws_the_graph_and_links_to_failures(
    ui: Any, demo_server: DemoServer, shot: Any
) -> None:
    ui.goto(demo_server.url + "/map")
    ui.wait_for_selector("svg#map[data-ready='1']")
    shot(ui, "map")
    nodes = ui.locator("svg#map a.node")
    names = set(nodes.locator(".node-name").all_text_contents())
    assert {"compute-api", "compute", "image", "network", "scheduler", "volume"} <= names
    labels = ui.locator("svg#map .edge text").all_text_contents()
    assert labels
    assert all(re.fullmatch(r"\d+ calls, \d+\.\d% err", t) for t in labels)
    assert ui.locator("svg#map a.node.bad").count() >= 1
    ui.locator("svg#map a.node", has_text="volume").click()
    ui.wait_for_url(re.compile(r"/traces\?service=volume&status=error"))
    assert ui.locator("table.list tbody tr.err").count() >= 1


def test_services_page_has_figures_per_service_and_operation(
    ui: Any, demo_server: DemoServer, shot: Any
) -> None:
    ui.goto(demo_server.url + "/services")
    shot(ui, "services")
    services = ui.locator("tr.svc-row th").all_inner_texts()
    assert {"compute-api", "compute", "image", "network", "scheduler", "volume"} <= set(services)
    image_get = ui.locator("tr.op-row", has_text="image.get")
    cells = image_get.locator("td").all_inner_texts()
    assert int(cells[0]) >= 1  # calls
    assert int(cells[2]) >= 1  # errors: image_not_found and image_500 fail there


# --------------------------------------------------------------- accessibility


_PAGES = ["/", "/traces", "/map", "/services", "/login", "/traces/" + "0" * 32]


def _axe_serious(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_axe_finds_no_serious_violations(axe_page: Any, demo_server: DemoServer) -> None:
    """axe-core (vendored) on every view: no serious or critical violation."""
    boot = demo_server.faulty("volume_duplicate")
    paths = [*_PAGES, f"/traces/{boot['trace_ids'][0]}", f"/requests/{boot['global_request_id']}"]
    found = {}
    for path in paths:
        axe_page.goto(demo_server.url + path)
        axe_page.wait_for_load_state("networkidle")
        problems = _axe_serious(axe_page)
        if problems:
            found[path] = problems
    assert found == {}, json.dumps(found, indent=1)


def test_tables_and_controls_are_reachable_with_tab(ui: Any, demo_server: DemoServer) -> None:
    """Tab from the top of the trace page reaches the waterfall's row and the log links."""
    boot = demo_server.faulty("volume_duplicate")
    ui.goto(f"{demo_server.url}/traces/{boot['trace_ids'][0]}")
    seen = []
    for _ in range(60):
        ui.keyboard.press("Tab")
        seen.append(
            ui.evaluate("() => document.activeElement.className || document.activeElement.tagName")
        )
        if any("wf-row" in s for s in seen) and "A" in seen[-1:]:
            break
    assert any("wf-row" in s for s in seen)


# ---------------------------------------------------------------------- tokens

TOKEN = "browser-s3cret-token"


@pytest.fixture
def token_server(demo_server: DemoServer) -> Iterator[str]:
    """The demo's store behind a second server that requires an API token."""
    from crosstrace.demo.servers import serve_asgi
    from crosstrace.server.app import create_app
    from crosstrace.server.auth import TokenSet
    from crosstrace.server.store import open_store

    store = open_store(f"sqlite:///{demo_server.data_dir / 'crosstrace.sqlite3'}")
    server = serve_asgi(create_app(store, api_tokens=TokenSet([TOKEN])), "ui-token", 20)
    try:
        yield server.url
    finally:
        server.stop(20)
        store.close()


def test_the_token_is_asked_once_and_kept_in_a_strict_httponly_cookie(
    playwright_browser: Any, token_server: str, shot: Any
) -> None:
    context = playwright_browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    foreign: list[str] = []
    page.on(
        "request", lambda r: foreign.append(r.url) if not r.url.startswith(token_server) else None
    )
    try:
        page.goto(token_server + "/traces?status=error")
        assert urlsplit(page.url).path == "/login"
        shot(page, "login")
        page.get_by_label("Token").fill("a wrong guess")
        page.get_by_role("button", name="Continue").click()
        assert "not accepted" in page.get_by_role("alert").inner_text()
        page.get_by_label("Token").fill(TOKEN)
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url(token_server + "/traces?status=error")
        assert page.locator("table.list tbody tr.err").count() >= 1
        (cookie,) = [c for c in context.cookies() if c["name"] == "crosstrace_token"]
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["expires"] == -1  # a session cookie
        assert "crosstrace_token" not in page.evaluate("document.cookie")  # not readable by scripts
        page.goto(token_server + "/map")  # asked once: the next page opens directly
        assert urlsplit(page.url).path == "/map"
        page.wait_for_selector("svg#map[data-ready='1']")
    finally:
        context.close()
    assert foreign == []


def test_the_demo_prints_the_web_ui_first(demo_server: DemoServer) -> None:
    """A new user's first line is the error page, not JSON."""
    first = demo_server.output.strip().splitlines()[0]
    assert re.fullmatch(r"web UI +http://127\.0\.0\.1:\d+/ +\(errors now: open this first\)", first)


def test_screenshots_were_saved(artifacts: Path) -> None:
    """Runs last in this module: the pages above left their screenshots."""
    assert any(artifacts.glob("*.png"))
