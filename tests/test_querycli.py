"""``crosstrace traces / trace / request`` against a real backend.

The backend is the ``serve`` ASGI app under uvicorn on an ephemeral loopback
port over a SQLite store; spans and logs arrive through OTLP/HTTP JSON ingest,
and the commands read them back through the query API over HTTP.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from crosstrace.cli import main
from crosstrace.cli.query import DEFAULT_URL, ENV_API_TOKEN, ENV_URL
from crosstrace.demo.runner import cli_commands
from crosstrace.demo.servers import serve_asgi
from crosstrace.server.app import create_app
from crosstrace.server.auth import TokenSet
from crosstrace.server.store import open_store

DEADLINE = 20.0
TOKEN = "s3cret-query-token"

FAILED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OK_TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT_SPAN = "00f067aa0ba902b7"
CHILD_SPAN = "b7ad6b7169203331"
OK_SPAN = "53995c3f42cd8ad8"
GID = "req-6f1c2a4e-9a1b-4c2d-8e3f-0123456789ab"
LOCAL_ID = "req-11111111-2222-4333-8444-555555555555"
OTHER_GID = "req-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"


def _attrs(**values: Any) -> list[dict[str, Any]]:
    out = []
    for key, value in values.items():
        name = key.replace("__", ".")
        if isinstance(value, int):
            out.append({"key": name, "value": {"intValue": str(value)}})
        else:
            out.append({"key": name, "value": {"stringValue": value}})
    return out


def _resource_spans(service: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resource": {"attributes": _attrs(service__name=service)},
        "scopeSpans": [{"scope": {"name": "crosstrace"}, "spans": spans}],
    }


def _span(
    trace_id: str,
    span_id: str,
    name: str,
    start_ns: int,
    duration_ns: int,
    *,
    parent: str = "",
    kind: int = 2,
    status: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns + duration_ns),
        "status": status or {},
        "events": events or [],
        "attributes": _attrs(**attributes),
    }


def _log(
    service: str, time_ns: int, severity: int, text: str, body: str, **attributes: Any
) -> dict[str, Any]:
    return {
        "resource": {"attributes": _attrs(service__name=service)},
        "scopeLogs": [
            {
                "scope": {"name": service},
                "logRecords": [
                    {
                        "timeUnixNano": str(time_ns),
                        "severityNumber": severity,
                        "severityText": text,
                        "body": {"stringValue": body},
                        "traceId": FAILED_TRACE,
                        "spanId": CHILD_SPAN,
                        "attributes": _attrs(**attributes),
                    }
                ],
            }
        ],
    }


def _ingest(url: str, base_ns: int) -> None:
    """Two traces (one failed across two services, one slow and ok) and three logs."""
    ids = {"openstack__global_request_id": GID, "openstack__request_id": LOCAL_ID}
    failed = [
        _resource_spans(
            "nova-api",
            [
                _span(
                    FAILED_TRACE,
                    ROOT_SPAN,
                    "POST /servers",
                    base_ns + 10_000_000_000,
                    300_000_000,
                    status={"code": 2, "message": "image lookup failed"},
                    openstack__project_id="proj-a",
                    **ids,
                )
            ],
        ),
        _resource_spans(
            "glance-api",
            [
                _span(
                    FAILED_TRACE,
                    CHILD_SPAN,
                    "GET /v2/images/{id}",
                    base_ns + 10_050_000_000,
                    20_000_000,
                    parent=ROOT_SPAN,
                    status={"code": 2, "message": "404"},
                    events=[
                        {
                            "timeUnixNano": str(base_ns + 10_060_000_000),
                            "name": "exception",
                            "attributes": _attrs(
                                exception__type="ImageNotFound",
                                exception__message="image 42 could not be found",
                            ),
                        }
                    ],
                    openstack__global_request_id=GID,
                )
            ],
        ),
    ]
    slow = [
        _resource_spans(
            "nova-api",
            [
                _span(
                    OK_TRACE,
                    OK_SPAN,
                    "GET /servers",
                    base_ns,
                    2_500_000_000,
                    status={"code": 1},
                    openstack__global_request_id=OTHER_GID,
                    openstack__project_id="proj-b",
                )
            ],
        )
    ]
    logs = [
        _log("glance-api", base_ns + 10_060_000_000, 17, "ERROR", "image 42 not found", **ids),
        _log("nova-api", base_ns + 10_020_000_000, 9, "INFO", "creating server vm-1", **ids),
        _log(
            "nova-api",
            base_ns + 5_000_000_000,
            9,
            "INFO",
            "listing servers",
            openstack__global_request_id=OTHER_GID,
        ),
    ]
    with httpx.Client(base_url=url, timeout=DEADLINE) as client:
        for body, path in (
            ({"resourceSpans": failed}, "/v1/traces"),
            ({"resourceSpans": slow}, "/v1/traces"),
            ({"resourceLogs": logs}, "/v1/logs"),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            partial = response.json().get("partialSuccess") or {}
            assert not any(int(v) for k, v in partial.items() if k.startswith("rejected")), partial


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return "sqlite:///" + str(tmp_path_factory.mktemp("querycli") / "store.sqlite3")


def _start(store_url: str, api_tokens: tuple[str, ...] = ()) -> Iterator[str]:
    store = open_store(store_url)
    app = create_app(store, api_tokens=TokenSet(api_tokens))
    server = serve_asgi(app, "querycli-backend", start_timeout=DEADLINE)
    try:
        yield server.url
    finally:
        server.stop(DEADLINE)
        store.close()


@pytest.fixture(scope="module")
def backend(store_url: str) -> Iterator[str]:
    """A backend with auth off holding the sample traces and logs."""
    for url in _start(store_url):
        _ingest(url, time.time_ns() - 60_000_000_000)
        yield url


@pytest.fixture(scope="module")
def token_backend(store_url: str, backend: str) -> Iterator[str]:
    """A second backend on the same store that requires an API token."""
    yield from _start(store_url, (TOKEN,))


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_API_TOKEN, raising=False)

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    return invoke


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _ids(result: Result) -> list[str]:
    return [t["trace_id"] for t in _json(result)["traces"]]


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)


# ------------------------------------------------------------------------- traces


def test_traces_json_newest_first_and_filters(run: Any, backend: str) -> None:
    assert _ids(run("traces", "--url", backend, "--json")) == [FAILED_TRACE, OK_TRACE]
    assert _ids(run("traces", "--url", backend, "--json", "--error")) == [FAILED_TRACE]
    assert _ids(run("traces", "--url", backend, "--json", "--min-duration", "1s")) == [OK_TRACE]
    assert _ids(run("traces", "--url", backend, "--json", "--service", "glance-api")) == [
        FAILED_TRACE
    ]
    assert _ids(run("traces", "--url", backend, "--json", "--operation", "GET /servers")) == [
        OK_TRACE
    ]
    assert _ids(run("traces", "--url", backend, "--json", "--request-id", LOCAL_ID)) == [
        FAILED_TRACE
    ]
    assert _ids(run("traces", "--url", backend, "--json", "--project", "proj-b")) == [OK_TRACE]
    assert _ids(run("traces", "--url", backend, "--json", "--since", "1h")) == [
        FAILED_TRACE,
        OK_TRACE,
    ]
    assert _ids(run("traces", "--url", backend, "--json", "--since", "1s")) == []
    assert _ids(run("traces", "--url", backend, "--json", "--limit", "1")) == [FAILED_TRACE]


def test_traces_table_names_each_trace(run: Any, backend: str) -> None:
    result = run("traces", "--url", backend)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    failed = next(line for line in lines if FAILED_TRACE in line)
    ok = next(line for line in lines if OK_TRACE in line)
    assert lines.index(failed) < lines.index(ok)  # newest first
    assert "nova-api POST /servers" in failed
    assert GID in failed
    assert re.search(r"300\.0 ms\s+2\s+2\s", failed), failed  # duration, spans, errors
    assert "nova-api GET /servers" in ok
    assert OTHER_GID in ok
    assert "2.50 s" in ok


def test_traces_env_url_and_empty_result(run: Any, backend: str) -> None:
    result = run("traces", "--error", "--service", "keystone", env={ENV_URL: backend})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no traces match"


# -------------------------------------------------------------------------- trace


def test_trace_json_is_the_span_tree(run: Any, backend: str) -> None:
    doc = _json(run("trace", FAILED_TRACE, "--url", backend, "--json"))
    assert [(s["span_id"], s["depth"], s["service"]) for s in doc["spans"]] == [
        (ROOT_SPAN, 0, "nova-api"),
        (CHILD_SPAN, 1, "glance-api"),
    ]


def test_trace_table_indents_children_and_shows_the_exception(run: Any, backend: str) -> None:
    result = run("trace", FAILED_TRACE.upper(), "--url", backend)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"trace {FAILED_TRACE}" in out
    assert GID in out
    assert "2 error(s)" in out
    root = next(line for line in out.splitlines() if ROOT_SPAN in line)
    child = next(line for line in out.splitlines() if CHILD_SPAN in line)
    assert root.index("POST /servers") + 2 == child.index("GET /v2/images/{id}")
    assert "nova-api" in root
    assert "server" in root
    assert "error: image lookup failed" in root
    assert "glance-api" in child
    assert "error: ImageNotFound: image 42 could not be found" in child


def test_trace_ok_span_status(run: Any, backend: str) -> None:
    result = run("trace", OK_TRACE, "--url", backend)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if OK_SPAN in line)
    assert "GET /servers" in line
    assert "2.50 s" in line
    assert " ok " in line


# ------------------------------------------------------------------------ request


def test_request_json_has_its_traces_and_logs_in_time_order(run: Any, backend: str) -> None:
    doc = _json(run("request", GID, "--url", backend, "--json"))
    assert [t["trace_id"] for t in doc["traces"]] == [FAILED_TRACE]
    assert [r["body"] for r in doc["logs"]] == ["creating server vm-1", "image 42 not found"]


def test_request_table_lists_traces_then_logs(run: Any, backend: str) -> None:
    result = run("request", LOCAL_ID, "--url", backend)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"request {LOCAL_ID}"
    assert any(FAILED_TRACE in line and "POST /servers" in line for line in lines)
    first = next(i for i, line in enumerate(lines) if "creating server vm-1" in line)
    second = next(i for i, line in enumerate(lines) if "image 42 not found" in line)
    assert first < second
    assert "nova-api" in lines[first]
    assert "INFO" in lines[first]
    assert LOCAL_ID in lines[first]
    assert "glance-api" in lines[second]
    assert "ERROR" in lines[second]
    assert FAILED_TRACE in lines[second]
    assert "listing servers" not in result.stdout


# ------------------------------------------------------------------------- errors


def test_server_down_is_one_line_and_status_1(run: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    for args in (("traces",), ("trace", FAILED_TRACE), ("request", GID)):
        result = run(*args, "--url", f"http://127.0.0.1:{port}")
        assert result.exit_code == 1, result.output
        _no_traceback(result)
        assert result.stdout == ""
        assert result.stderr.startswith(
            f"Error: cannot reach the backend at http://127.0.0.1:{port}"
        )
        assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_trace_is_status_2(run: Any, backend: str) -> None:
    result = run("trace", "f" * 32, "--url", backend)
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert result.stderr.strip() == f"Error: trace {'f' * 32} not found (HTTP 404)"


def test_unknown_request_is_empty_not_an_error(run: Any, backend: str) -> None:
    result = run("request", "req-00000000-0000-4000-8000-000000000000", "--url", backend)
    assert result.exit_code == 0, result.output
    assert "no traces for this request" in result.stdout
    assert "no log lines for this request" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("trace", "not-a-trace-id"), "a trace id is 32 hex digits"),
        (("request", "12345"), "a request id is req- followed by a lowercase UUID"),
        (("traces", "--limit", "0"), "--limit"),
        (("traces", "--url", "ftp://example.invalid"), "is not an http(s) URL"),
        (("traces", "--url", "http://[::1"), "is not an http(s) URL"),
        (("traces", "--url", "http://127.0.0.1:99999"), "is not an http(s) URL"),
    ],
)
def test_bad_input_is_refused_before_any_request(
    run: Any, backend: str, args: tuple[str, ...], message: str
) -> None:
    result = run(*args) if "--url" in args else run(*args, "--url", backend)
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert message in result.stderr


def test_parameter_the_backend_refuses_is_status_2(run: Any, backend: str) -> None:
    result = run("traces", "--url", backend, "--since", "yesterday")
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert result.stderr.startswith("Error: start: 'yesterday' is neither an RFC 3339 time")
    assert result.stderr.rstrip().endswith("(HTTP 400)")
    result = run("traces", "--url", backend, "--min-duration", "soon")
    assert result.exit_code == 2
    assert "min_duration:" in result.stderr


def test_api_token(run: Any, token_backend: str) -> None:
    result = run("traces", "--url", token_backend)
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert result.stderr.strip() == (
        f"Error: the backend at {token_backend} requires an API token (set ${ENV_API_TOKEN})"
    )
    result = run("traces", "--url", token_backend, env={ENV_API_TOKEN: "wrong"})
    assert result.exit_code == 2
    assert "the token was refused" in result.stderr
    result = run("trace", OK_TRACE, "--url", token_backend, "--json", env={ENV_API_TOKEN: TOKEN})
    assert _json(result)["trace_id"] == OK_TRACE


# --------------------------------------------------------------- demo's commands


def test_demo_commands_run_against_the_backend(run: Any, backend: str) -> None:
    commands = dict(cli_commands(backend, GID, FAILED_TRACE, min_duration="1s"))
    assert commands == {
        "failed traces": f"crosstrace traces --error --url {backend}",
        "slow traces": f"crosstrace traces --min-duration 1s --url {backend}",
        "one failed boot": f"crosstrace request {GID} --url {backend}",
        "its trace": f"crosstrace trace {FAILED_TRACE} --url {backend}",
    }
    expected = {
        "failed traces": FAILED_TRACE,
        "slow traces": OK_TRACE,
        "one failed boot": "image 42 not found",
        "its trace": "ImageNotFound",
    }
    for label, command in commands.items():
        result = run(*command.split()[1:])
        assert result.exit_code == 0, (command, result.output)
        assert expected[label] in result.stdout, (command, result.stdout)


def test_demo_commands_on_the_default_port_have_no_url() -> None:
    commands = cli_commands(DEFAULT_URL + "/", GID, None)
    assert commands == [
        ("failed traces", "crosstrace traces --error"),
        ("one failed boot", f"crosstrace request {GID}"),
    ]
    assert all("--url" not in c for _, c in cli_commands(DEFAULT_URL, None, None))
