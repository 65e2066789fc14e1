"""The docs stay true: every example in README.md and docs/ that is marked
runnable runs, against a real ``crosstrace serve`` started here.

A fenced block is runnable when its info string is ``python runnable`` or
``sh runnable``. Each runs in a fresh directory and process, with the backend's
address in ``CROSSTRACE_ENDPOINT`` (the tracer) and ``CROSSTRACE_URL`` (the query
commands), its store in ``CROSSTRACE_DB``, and this environment's ``crosstrace``
first on the ``PATH``; a block passes when it exits with status 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
LANGUAGES = {"python", "sh"}
LISTENING = re.compile(r"listening on (http://\S+)")
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def runnable_examples(text: str, path: Path) -> list[Example]:
    """The blocks of *text* whose info string is ``<language> runnable``."""
    found = []
    for match in FENCE.finditer(text):
        words = match.group("info").split()
        if len(words) >= 2 and words[1] == "runnable" and words[0] in LANGUAGES:
            line = text.count("\n", 0, match.start()) + 1
            found.append(Example(path, line, words[0], match.group("body")))
    return found


EXAMPLES = [ex for doc in DOCS for ex in runnable_examples(doc.read_text(encoding="utf-8"), doc)]


class Serve:
    """``crosstrace serve`` on a free port with its own SQLite store."""

    def __init__(self, db: Path) -> None:
        self.db_url = f"sqlite:///{db}"
        cmd = [sys.executable, "-c", "from crosstrace.cli import main; main()", "serve"]
        env = {**os.environ, "CROSSTRACE_CONFIG": ""}
        self.proc = subprocess.Popen(
            [*cmd, "--port", "0", "--db", self.db_url, "--decode-workers", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.stop()
            raise AssertionError("serve did not start:\n" + "\n".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    server = Serve(tmp_path_factory.mktemp("docs-serve") / "crosstrace.sqlite3")
    try:
        yield server
    finally:
        server.stop()


def run_example(example: Example, server: Serve, cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "CROSSTRACE_ENDPOINT": server.url,
        "CROSSTRACE_URL": server.url,
        "CROSSTRACE_DB": server.db_url,
        "CROSSTRACE_CONFIG": "",
    }
    if example.language == "python":
        cmd = [sys.executable, "-c", example.code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", example.code]
    return subprocess.run(
        cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )


def test_docs_have_runnable_examples() -> None:
    """The marker is in use: the README's instrument-a-service example is runnable."""
    readme = [ex for ex in EXAMPLES if ex.path.name == "README.md"]
    assert any("RequestIdMiddleware" in ex.code for ex in readme)


def test_marker_is_parsed() -> None:
    """Only blocks whose info string says ``runnable`` are collected."""
    text = "```python\nskip\n```\n\n```sh runnable\necho run\n```\n\n```ini runnable\nx\n```\n"
    found = runnable_examples(text, ROOT / "x.md")
    assert [(e.language, e.code, e.line) for e in found] == [("sh", "echo run\n", 5)]


@pytest.mark.parametrize("example", EXAMPLES, ids=[ex.id for ex in EXAMPLES])
def test_example_runs(example: Example, serve: Serve, tmp_path: Path) -> None:
    """A runnable example exits with status 0 against the running backend."""
    result = run_example(example, serve, tmp_path)
    assert result.returncode == 0, (
        f"{example.id} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_readme_instrumented_service_reaches_the_backend(serve: Serve, tmp_path: Path) -> None:
    """The README's example, run as written, leaves its trace and its log line in
    ``crosstrace serve``, found by the request id the log line shows."""
    (example,) = [
        ex for ex in EXAMPLES if ex.path.name == "README.md" and "RequestIdMiddleware" in ex.code
    ]
    result = run_example(example, serve, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "b'hello\\n'" in result.stdout
    ids = re.findall(r"\[\S+ (req-[0-9a-f-]{36}) ", result.stderr)
    assert ids, result.stderr
    with httpx.Client(base_url=serve.url, timeout=10) as client:
        services = client.get("/api/v1/services").json()
        assert "hello-api" in str(services)
        deadline = time.monotonic() + 20
        while True:
            found = client.get(f"/api/v1/requests/{ids[-1]}")
            body = found.json() if found.status_code == 200 else {}
            if body.get("traces") and body.get("logs"):
                break
            assert time.monotonic() < deadline, f"{found.status_code} {found.text}"
            time.sleep(0.2)
    assert any("hello from /hello" in str(line) for line in body["logs"])
