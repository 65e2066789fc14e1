"""Browser tests of the web UI: Playwright driving Debian's chromium against one
``crosstrace serve`` that the demo filled (one per test session).

They skip with a reason when Playwright or /usr/bin/chromium is missing
(``scripts/install-system`` installs chromium; Playwright never downloads a
browser here), and fail instead under ``CROSSTRACE_REQUIRE_SERVICES``. Every
page a test opens is checked afterwards for console errors and for requests
that left the server's origin, and a screenshot of it is saved under
``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from ui_support import CHROMIUM, DemoServer

from crosstrace.cli import main
from crosstrace.demo.backend import start_backend

REQUIRE_SERVICES = os.environ.get("CROSSTRACE_REQUIRE_SERVICES", "") not in ("", "0")


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CROSSTRACE_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(reason)


def _require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (scripts/install-system installs it)")


@pytest.fixture(scope="module")
def playwright_browser() -> Iterator[Any]:
    """Headless chromium (the system's), for one test module: Playwright's sync API
    keeps an event loop running in this thread while it is open, which the
    asyncio-based tests of other modules must not find."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """The demo (40 boots, a seed that injects every fault kind), then ``serve``
    restarted over the store it left (one per session)."""
    _require_browser()
    data_dir = tmp_path_factory.mktemp("ui-demo")
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--once",
            "--fast",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--requests",
            "40",
            "--seed",
            "4",
        ],
        env={"COLUMNS": "160"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    backend = start_backend(data_dir, port=0)
    try:
        yield DemoServer(
            backend.url,
            data_dir,
            json.loads((data_dir / "groundtruth.json").read_text()),
            backend,
            result.output,
        )
    finally:
        backend.stop()


@dataclass
class PageWatch:
    """What one page did that a test must not see: console errors, foreign requests."""

    origin: str
    console_errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config) -> Path:
    path = pytestconfig.rootpath / "test-artifacts" / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _watched_context(
    browser: Any, origin: str, watch: PageWatch | None = None, **options: Any
) -> tuple[Any, PageWatch]:
    watch = watch or PageWatch(origin)
    context = browser.new_context(viewport={"width": 1440, "height": 900}, **options)

    def route(r: Any) -> None:
        url = r.request.url
        parts = urlsplit(url)
        if (
            parts.scheme in ("data", "blob", "about")
            or f"{parts.scheme}://{parts.netloc}" == origin
        ):
            r.continue_()
        else:
            watch.foreign.append(url)
            r.abort()

    context.route("**/*", route)
    return context, watch


@pytest.fixture
def page_watch(demo_server: DemoServer) -> PageWatch:
    """What the ``ui`` page did; a test that provokes an error page clears it."""
    return PageWatch(demo_server.url)


@pytest.fixture
def ui(playwright_browser: Any, demo_server: DemoServer, page_watch: PageWatch) -> Iterator[Any]:
    """A fresh page on the demo server; console errors and off-origin requests fail
    the test."""
    context, watch = _watched_context(playwright_browser, demo_server.url, watch=page_watch)
    page = context.new_page()
    page.on(
        "console",
        lambda m: watch.console_errors.append(m.text) if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: watch.console_errors.append(f"uncaught: {e}"))
    page.set_default_timeout(10_000)
    yield page
    context.close()
    assert watch.console_errors == [], "console errors"
    assert watch.foreign == [], "requests left the server's origin"


@pytest.fixture
def axe_page(playwright_browser: Any, demo_server: DemoServer) -> Iterator[Any]:
    """A page that may inject the vendored axe-core (CSP bypassed for that script only)."""
    context, watch = _watched_context(playwright_browser, demo_server.url, bypass_csp=True)
    page = context.new_page()
    yield page
    context.close()
    assert watch.foreign == []


@pytest.fixture
def shot(artifacts: Path) -> Any:
    def take(page: Any, name: str) -> Path:
        path = artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
