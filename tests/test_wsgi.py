"""crosstrace.wsgi.RequestIdMiddleware: ids, context lifetime, headers, bad input."""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webob
from oslo_middleware import RequestId as OsloRequestId
from paste.deploy import loadapp

import crosstrace.wsgi
from crosstrace import get_current
from crosstrace.context import ENV_GLOBAL_REQUEST_ID, ENV_REQUEST_ID
from crosstrace.ids import is_valid_request_id
from crosstrace.logging import ContextFilter, ContextFormatter
from crosstrace.propagation import stats
from crosstrace.wsgi import RequestIdMiddleware, filter_factory, parse_header_list

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
GID2 = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"

#: Every kind of bad inbound value the wire contract refuses.
BAD_VALUES = {
    "wrong prefix": "rq-3f1e2d4c-5b6a-4789-8abc-def012345678",
    "no prefix": "3f1e2d4c-5b6a-4789-8abc-def012345678",
    "uppercase hex": "req-3F1E2D4C-5B6A-4789-8ABC-DEF012345678",
    "uuid with suffix": GID + "-extra",
    "trailing newline": GID + "\n",
    "crlf injection": GID + "\r\nX-Injected: yes",
    "10 kB": "req-" + "a" * 10240,
    "non-ascii": "req-3f1e2d4c-5b6a-4789-8abc-def01234567\u00e9",
    "empty": "",
    "repeated header": GID + "," + GID2,
}


def seen_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Record what the application sees: environ ids and the current context."""
    ctx = get_current()
    environ["test.seen"] = {
        "request_id": environ.get(ENV_REQUEST_ID),
        "global_request_id": environ.get(ENV_GLOBAL_REQUEST_ID),
        "context": ctx,
    }
    logging.getLogger("test.app").info("handling %s", environ.get("PATH_INFO"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class LogCapture:
    """Every log line any logger writes at DEBUG and above, formatted with context."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.addFilter(ContextFilter())
        self.handler.setFormatter(ContextFormatter())

    def lines(self) -> list[str]:
        self.handler.flush()
        return self.stream.getvalue().splitlines()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture.handler)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture.handler)
        root.setLevel(old_level)


def get(app: Any, headers: dict[str, str] | None = None, path: str = "/") -> webob.Response:
    req = webob.Request.blank(path)
    for name, value in (headers or {}).items():
        # Straight into the environ, as a server would: no header validation here.
        req.environ["HTTP_" + name.upper().replace("-", "_")] = value
    return req.get_response(app)


def test_valid_inbound_id_becomes_global_id() -> None:
    """A valid X-OpenStack-Request-ID becomes the global id, the local id is new."""
    req = webob.Request.blank("/", headers={"X-OpenStack-Request-ID": GID})
    resp = req.get_response(RequestIdMiddleware(seen_app))
    seen = req.environ["test.seen"]
    assert seen["global_request_id"] == GID
    assert seen["context"].global_request_id == GID
    assert is_valid_request_id(seen["request_id"])
    assert seen["request_id"] != GID
    assert seen["context"].request_id == seen["request_id"]
    assert resp.headers["x-openstack-request-id"] == seen["request_id"]


def test_no_inbound_id_gives_local_id_only() -> None:
    """Without an inbound id there is no global id and the local id is returned."""
    req = webob.Request.blank("/")
    resp = req.get_response(RequestIdMiddleware(seen_app))
    seen = req.environ["test.seen"]
    assert ENV_GLOBAL_REQUEST_ID not in req.environ
    assert seen["context"].global_request_id is None
    assert seen["context"].global_id == seen["request_id"]
    assert resp.headers["x-openstack-request-id"] == seen["request_id"]


def test_each_request_gets_a_fresh_local_id() -> None:
    app = RequestIdMiddleware(seen_app)
    ids = {get(app, {"X-OpenStack-Request-ID": GID}).headers["x-openstack-request-id"]}
    ids |= {get(app).headers["x-openstack-request-id"] for _ in range(20)}
    assert len(ids) == 21
    assert all(is_valid_request_id(i) for i in ids)


def test_context_is_cleared_after_the_request() -> None:
    get(RequestIdMiddleware(seen_app), {"X-OpenStack-Request-ID": GID})
    assert get_current() is None


def test_compat_headers_carry_the_local_id() -> None:
    app = RequestIdMiddleware(seen_app, compat_headers="x-compute-request-id, X-Volume-Request-Id")
    resp = get(app)
    local = resp.headers["x-openstack-request-id"]
    assert resp.headers["x-compute-request-id"] == local
    assert resp.headers["x-volume-request-id"] == local


def test_header_set_by_the_app_is_not_overwritten() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-Compute-Request-Id", "app-chosen")])
        return [b""]

    resp = get(RequestIdMiddleware(app, compat_headers=["x-compute-request-id"]))
    assert resp.headers.getall("x-compute-request-id") == ["app-chosen"]
    assert is_valid_request_id(resp.headers["x-openstack-request-id"])


def test_streamed_body_is_produced_under_the_request_context() -> None:
    """A generator body runs with the context current, and closes under it too."""
    produced: list[str | None] = []
    closed: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for _ in range(3):
                ctx = get_current()
                produced.append(ctx.request_id if ctx else None)
                yield b"chunk"
        finally:
            ctx = get_current()
            closed.append(ctx.request_id if ctx else None)

    environ = webob.Request.blank("/", headers={"X-OpenStack-Request-ID": GID}).environ
    status: list[str] = []
    body = RequestIdMiddleware(app)(environ, lambda s, h, e=None: status.append(s))
    assert get_current() is None  # not current between server calls
    it = iter(body)
    assert next(it) == b"chunk"
    assert get_current() is None
    assert list(it) == [b"chunk", b"chunk"]
    body.close()  # type: ignore[attr-defined]
    local = environ[ENV_REQUEST_ID]
    assert produced == [local, local, local]
    assert closed == [local]
    assert status == ["200 OK"]


def test_generator_closed_early_runs_its_cleanup_under_the_context() -> None:
    closed: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            yield b"a"
            yield b"b"
        finally:
            ctx = get_current()
            closed.append(ctx.global_request_id if ctx else None)

    environ = webob.Request.blank("/", headers={"X-OpenStack-Request-ID": GID}).environ
    body = RequestIdMiddleware(app)(environ, lambda s, h, e=None: None)
    assert next(iter(body)) == b"a"
    body.close()  # type: ignore[attr-defined]
    assert closed == [GID]


def test_context_cleared_when_the_app_raises() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert get_current() is not None
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        RequestIdMiddleware(app)(webob.Request.blank("/").environ, lambda *a: None)
    assert get_current() is None


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_bad_inbound_value_is_dropped(kind: str, logs: LogCapture) -> None:
    """A bad id never becomes the global id, never breaks the request, never shows up raw."""
    raw = BAD_VALUES[kind]
    before = stats()["invalid_http_request_id"]
    req = webob.Request.blank("/")
    req.environ["HTTP_X_OPENSTACK_REQUEST_ID"] = raw  # as the server handed it over
    resp = req.get_response(RequestIdMiddleware(seen_app, compat_headers="x-compute-request-id"))
    seen = req.environ["test.seen"]

    assert resp.status_int == 200
    assert seen["global_request_id"] is None
    assert seen["context"].global_request_id is None
    assert seen["context"].global_id == seen["request_id"]
    assert ENV_GLOBAL_REQUEST_ID not in req.environ
    assert stats()["invalid_http_request_id"] == before + 1
    assert resp.headers["x-openstack-request-id"] == seen["request_id"]
    assert get_current() is None

    lines = logs.lines()
    assert any("dropped an invalid request id" in line for line in lines)
    assert any(f"[None {seen['request_id']} " in line for line in lines)
    fragments = {raw, raw[:36], *raw.split(",")} - {""}
    response_text = str(list(resp.headers.items())) + resp.text
    for fragment in fragments:
        assert all(fragment not in line for line in lines), fragment
        assert fragment not in response_text


def test_repeated_header_from_a_real_wsgi_server_is_refused() -> None:
    """wsgiref joins a repeated header with ',', which the middleware refuses."""
    import http.client
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append((environ.get("HTTP_X_OPENSTACK_REQUEST_ID"), get_current()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = make_server("127.0.0.1", 0, RequestIdMiddleware(app), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.putrequest("GET", "/")
        conn.putheader("X-OpenStack-Request-ID", GID)
        conn.putheader("X-OpenStack-Request-ID", GID2)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
    assert resp.status == 200
    raw, ctx = seen[0]
    assert raw is None  # the refused "GID,GID2" never reaches the application
    assert ctx.global_request_id is None
    assert resp.getheader("x-openstack-request-id") == ctx.request_id


def test_oslo_middleware_in_front_ids_are_reused() -> None:
    """With oslo.middleware's RequestId first, its ids are reused, not replaced."""
    app = OsloRequestId(RequestIdMiddleware(seen_app))
    req = webob.Request.blank("/", headers={"X-OpenStack-Request-ID": GID})
    resp = req.get_response(app)
    seen = req.environ["test.seen"]
    oslo_local = req.environ[ENV_REQUEST_ID]
    assert seen["request_id"] == oslo_local
    assert seen["context"].request_id == oslo_local
    assert seen["context"].global_request_id == GID
    assert resp.headers.getall("x-openstack-request-id") == [oslo_local]


def test_oslo_middleware_trailing_newline_global_id_is_dropped() -> None:
    """oslo.middleware lets 'req-...\\n' through (``$`` match); crosstrace drops it."""
    app = OsloRequestId(RequestIdMiddleware(seen_app))
    req = webob.Request.blank("/")
    req.environ["HTTP_X_OPENSTACK_REQUEST_ID"] = GID + "\n"
    before = stats()["invalid_http_request_id"]
    req.get_response(app)
    seen = req.environ["test.seen"]
    assert seen["global_request_id"] is None
    assert seen["context"].global_request_id is None
    assert stats()["invalid_http_request_id"] == before + 1


def test_paste_deploy_pipeline(tmp_path: Path) -> None:
    """The filter loads from a paste ini, by entry point and by factory path."""
    ini = tmp_path / "api-paste.ini"
    ini.write_text(
        textwrap.dedent(
            """
            [pipeline:main]
            pipeline = request_id app

            [pipeline:by_factory]
            pipeline = request_id_factory app

            [filter:request_id]
            use = egg:crosstrace#request_id
            compat_headers = x-compute-request-id x-volume-request-id

            [filter:request_id_factory]
            paste.filter_factory = crosstrace.wsgi:filter_factory
            compat_headers = x-image-request-id

            [app:app]
            paste.app_factory = APP_MODULE:app_factory
            """
        ).replace("APP_MODULE", __name__)
    )
    main = loadapp(f"config:{ini}")
    assert isinstance(main, RequestIdMiddleware)
    assert main.compat_headers == ("x-compute-request-id", "x-volume-request-id")
    resp = get(main, {"X-OpenStack-Request-ID": GID})
    local = resp.headers["x-openstack-request-id"]
    assert resp.headers["x-compute-request-id"] == local
    assert resp.headers["x-volume-request-id"] == local
    assert resp.json == {"global": GID, "local": local}

    other = loadapp(f"config:{ini}", name="by_factory")
    resp = get(other)
    assert resp.headers["x-image-request-id"] == resp.headers["x-openstack-request-id"]


def app_factory(global_conf: dict[str, str], **local_conf: str) -> Any:
    """paste.app_factory for the pipeline test: echoes the context's ids."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ctx = get_current()
        assert ctx is not None
        start_response("200 OK", [("Content-Type", "application/json")])
        return [
            webob.Response(json={"global": ctx.global_request_id, "local": ctx.request_id}).body
        ]

    return app


def test_filter_factory_reads_default_section() -> None:
    make = filter_factory({"compat_headers": "x-compute-request-id"})
    assert make(seen_app).compat_headers == ("x-compute-request-id",)


@pytest.mark.parametrize("bad", ["x-ok bad:name", "x-é", "x-a;b", "x-a\x00b"])
def test_bad_compat_header_name_fails_at_start_up(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid HTTP header name"):
        RequestIdMiddleware(seen_app, compat_headers=bad)


def test_parse_header_list_splits_and_deduplicates() -> None:
    assert parse_header_list(" X-A, x-b  x-a,,") == ("x-a", "x-b")
    assert parse_header_list(None) == ()


def test_file_wrapper_body_is_passed_through() -> None:
    from wsgiref.util import FileWrapper

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"data"))

    environ = webob.Request.blank("/").environ
    environ["wsgi.file_wrapper"] = FileWrapper
    body = crosstrace.wsgi.RequestIdMiddleware(app)(environ, lambda *a: None)
    assert isinstance(body, FileWrapper)


def test_untrusted_identity_headers_are_dropped_and_counted_wsgi() -> None:
    """Without authtoken in front, the client's X-Roles / X-Project-Id are removed."""
    seen: dict[str, object] = {}

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [])  # type: ignore[operator]
        return [b""]

    mw = RequestIdMiddleware(app)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_X_ROLES": "admin",
        "HTTP_X_PROJECT_ID": "p1",
    }
    list(mw(environ, lambda status, headers, exc_info=None: None))
    assert "HTTP_X_ROLES" not in seen
    assert "HTTP_X_PROJECT_ID" not in seen
    assert mw.untrusted_identity_headers == 2
    trusted = RequestIdMiddleware(app, trust_identity_headers=True)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_PROJECT_ID": "p1"}
    list(trusted(environ, lambda status, headers, exc_info=None: None))
    assert seen["HTTP_X_PROJECT_ID"] == "p1"
