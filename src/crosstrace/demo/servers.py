"""Run WSGI and ASGI applications as real HTTP servers on loopback, in threads.

WSGI apps run under the standard library's ``wsgiref`` server with one thread
per request; ASGI apps run under uvicorn on its own event loop thread. Both
listen on an ephemeral port chosen by the kernel, so several demo clouds (and
the tests) never fight over ports.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["HttpServer", "serve_asgi", "serve_wsgi"]

log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # Many concurrent clients connect at once during a burst.
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without the access log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class HttpServer:
    """A running HTTP server: its URL and how to stop it."""

    def __init__(self, name: str, port: int, thread: threading.Thread, stop: Callable[[], None]):
        self.name = name
        self.port = port
        self.url = f"http://{_LOOPBACK}:{port}"
        self._thread = thread
        self._stop = stop

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting requests and wait for the server thread to end."""
        self._stop()
        self._thread.join(timeout)


def serve_wsgi(app: Callable[..., Any], name: str) -> HttpServer:
    """Serve a WSGI app on a loopback ephemeral port, one thread per request."""
    server = make_server(
        _LOOPBACK, 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"wsgi-{name}"
    )
    thread.daemon = True
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return HttpServer(name, int(port), thread, stop)


def serve_asgi(app: Callable[..., Any], name: str, start_timeout: float = 10.0) -> HttpServer:
    """Serve an ASGI app with uvicorn on a loopback ephemeral port, in a thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((_LOOPBACK, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the process's logging configuration alone
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"asgi-{name}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the {name} service did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True

    def stop_and_close() -> None:
        stop()
        thread.join(5.0)
        sock.close()

    return HttpServer(name, int(port), thread, stop_and_close)
