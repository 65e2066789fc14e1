"""The demo's backend: ``crosstrace serve`` in a child process, and a small client
for the query API the demo uses to check that every trace arrived.

``serve`` runs as its own process (its own interpreter and GIL), storing into a
SQLite file in the demo's data directory, exactly as a user would start it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

__all__ = ["Backend", "BackendClient", "BackendError", "start_backend"]

log = logging.getLogger(__name__)

_LISTENING_RE = re.compile(r"listening on (http://\S+?):(\d+)")
# `python -c` runs the CLI the same way the `crosstrace` script does, without
# depending on where the script was installed.
_CLI = "import sys; from crosstrace.cli import main; sys.exit(main(prog_name='crosstrace'))"


class BackendError(RuntimeError):
    """``crosstrace serve`` could not start, or stopped."""


class Backend:
    """A running ``crosstrace serve`` child process."""

    def __init__(self, process: subprocess.Popen[str], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: pending writes are flushed), then wait; kill if stuck."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("crosstrace serve did not stop in %ss; killing it", timeout)
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_backend(
    data_dir: Path,
    port: int = 4318,
    db_url: str | None = None,
    timeout: float = 60.0,
    auth_file: Path | None = None,
) -> Backend:
    """Start ``crosstrace serve`` on loopback, storing into ``data_dir``; wait until healthy.
    With *auth_file*, the backend requires the tokens of its identities.

    ``port=0`` lets the server pick a free port; the real one is read from its
    start-up line. The server's output goes to ``data_dir/serve.log``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    db = db_url or f"sqlite:///{data_dir / 'crosstrace.sqlite3'}"
    log_path = data_dir / "serve.log"
    env = dict(os.environ)
    # The demo's backend is local and token-less; settings from the user's
    # environment must not point it elsewhere.
    for key in list(env):
        if key.startswith("CROSSTRACE_") and key not in ("CROSSTRACE_REQUIRE_SERVICES",):
            del env[key]
    cmd = [
        sys.executable,
        "-c",
        _CLI,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        db,
        *(["--auth-file", str(auth_file)] if auth_file is not None else ["--no-auth"]),
        "--verbose",
    ]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # Its own session: a terminal's Ctrl-C reaches the demo only, which then
        # flushes its exporters into the backend before stopping it.
        start_new_session=True,
    )
    found: dict[str, str] = {}
    ready = threading.Event()
    out = log_path.open("w", encoding="utf-8")

    def pump() -> None:
        stream = process.stdout
        try:
            for line in stream if stream is not None else ():
                out.write(line)
                out.flush()
                if not ready.is_set():
                    match = _LISTENING_RE.search(line)
                    if match:
                        found["url"] = f"{match.group(1)}:{match.group(2)}"
                        ready.set()
        finally:
            out.close()
            if stream is not None:
                stream.close()
            ready.set()

    threading.Thread(target=pump, name="serve-output", daemon=True).start()
    deadline = time.monotonic() + timeout
    if not ready.wait(timeout) or "url" not in found:
        process.poll()
        if process.returncode is None:
            process.kill()
            process.wait(5)
        raise BackendError(
            f"crosstrace serve did not start (exit status {process.returncode}); "
            f"see {log_path}:\n{_tail(log_path)}"
        )
    backend = Backend(process, found["url"], log_path)
    client = BackendClient(backend.url)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BackendError(f"crosstrace serve exited; see {log_path}:\n{_tail(log_path)}")
            if client.healthy():
                return backend
            time.sleep(0.1)
    finally:
        client.close()
    backend.stop()
    raise BackendError(f"crosstrace serve did not become healthy in {timeout}s")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class BackendClient:
    """The parts of the query API the demo reads."""

    def __init__(self, url: str, timeout: float = 10.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        if token is not None:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def _get(self, path: str, **params: Any) -> Any:
        response = self._session.get(self.url + path, params=params, timeout=self.timeout)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Close the client's connections."""
        self._session.close()

    def healthy(self) -> bool:
        try:
            response = self._session.get(self.url + "/healthz", timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def request(self, request_id: str) -> dict[str, Any]:
        """``GET /api/v1/requests/{id}``: traces and logs of a global or local id."""
        result: dict[str, Any] = self._get(f"/api/v1/requests/{request_id}")
        return result

    def trace(self, trace_id: str) -> dict[str, Any]:
        """``GET /api/v1/traces/{id}``: every span of one trace."""
        result: dict[str, Any] = self._get(f"/api/v1/traces/{trace_id}")
        return result

    def search(self, **params: Any) -> Iterator[dict[str, Any]]:
        """``GET /api/v1/traces`` with every page followed."""
        params.setdefault("limit", 1000)
        while True:
            page = self._get("/api/v1/traces", **params)
            yield from page["traces"]
            cursor = page.get("next_cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    def analysis(self, trace_id: str, **params: Any) -> dict[str, Any]:
        """``GET /api/v1/traces/{id}/analysis``: crosstrace's verdict on one trace."""
        result: dict[str, Any] = self._get(f"/api/v1/traces/{trace_id}/analysis", **params)
        return result

    def errors(self, **params: Any) -> dict[str, Any]:
        """``GET /api/v1/errors``: error groups over a window."""
        result: dict[str, Any] = self._get("/api/v1/errors", **params)
        return result

    def logs(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /api/v1/logs``."""
        result: list[dict[str, Any]] = self._get("/api/v1/logs", **params)["logs"]
        return result
