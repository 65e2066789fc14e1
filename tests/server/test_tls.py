"""``crosstrace serve --tls-cert/--tls-key``: HTTPS that a client verifies against
the CA, and no plain-HTTP answer on the same port (a self-signed CA from trustme)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from serve_samples import sqlite_url

_LISTENING = re.compile(r"listening on (https?)://127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_port(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A ``crosstrace serve`` with a certificate for 127.0.0.1; its port."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    log = tmp / "serve.log"
    cmd = [
        sys.executable,
        "-c",
        "from crosstrace.cli import main; main()",
        "serve",
        "--db",
        sqlite_url(tmp),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--retention",
        "off",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]
    env = {**os.environ, "CROSSTRACE_CONFIG": ""}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield _port_from(log, proc)
    finally:
        proc.terminate()
        proc.wait(30)


def _port_from(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_text(errors="replace"))
        if found:
            assert found.group(1) == "https"
            return int(found.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"serve did not start:\n{log.read_text(errors='replace')}")


def _get(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    deadline = time.monotonic() + 15
    while True:  # uvicorn may print before it accepts
        try:
            with urllib.request.urlopen(url, context=context, timeout=10) as resp:
                return int(resp.status), resp.read()
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_https_with_the_ca_verifies_and_answers_healthz(ca: trustme.CA, https_port: int) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    status, body = _get(f"https://127.0.0.1:{https_port}/healthz", context)
    assert status == 200
    assert body


def test_https_without_the_ca_fails_verification(https_port: int) -> None:
    with pytest.raises(urllib.error.URLError) as failed:
        _get(f"https://127.0.0.1:{https_port}/healthz", ssl.create_default_context())
    assert isinstance(failed.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_to_the_tls_port_gets_no_http_answer(ca: trustme.CA, https_port: int) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    _get(f"https://127.0.0.1:{https_port}/healthz", context)  # serving
    with socket.create_connection(("127.0.0.1", https_port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not received.startswith(b"HTTP/"), received[:200]
