"""Tracing settings set centrally in ``crosstrace serve``, and what this process reports.

A background thread (one per configured process) asks
``GET {CROSSTRACE_SAMPLING_URL}/api/v1/sampling/{service}`` every
``CROSSTRACE_SAMPLING_INTERVAL`` (30 s; the OTLP endpoint is the default URL)
with the last ``ETag``, and applies the ratio, budget, rate limit and slow
threshold it gets to the tracer, except the settings this process set
explicitly (``configure()`` keywords, its environment, its config file): a
local value wins. When the server cannot be reached the last settings stay and
the failure is counted (:attr:`SamplingPoller.failures`). After each poll it
reports ``POST /api/v1/overhead``: the budget, the overhead fraction the tracer
measured, the effective ratio, the record and traced fractions, and the spans
the exporter dropped.

No request thread ever waits for it: it does its I/O on its own thread, and the
settings reach the tracer through :meth:`crosstrace.tracing.Tracer.update`.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from crosstrace.tracing import Tracer

__all__ = ["CENTRAL_KEYS", "SamplingPoller"]

log = logging.getLogger(__name__)

#: Central setting -> (Tracer.update keyword, local setting name).
CENTRAL_KEYS: dict[str, tuple[str, str]] = {
    "ratio": ("sample_ratio", "sample_ratio"),
    "budget": ("overhead_budget", "overhead_budget"),
    "rate_limit": ("rate_limit", "rate_limit"),
    "slow_threshold": ("slow_threshold_s", "slow_threshold"),
}
_MAX_BODY = 1 << 16


class SamplingPoller:
    """Polls the central settings of *tracer*'s service and reports its overhead."""

    def __init__(
        self,
        url: str,
        tracer: Tracer,
        interval_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
        explicit: frozenset[str] = frozenset(),
        dropped: Callable[[], int] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the sampling URL must be http(s)://host[:port], got {url!r}")
        self.url = url.rstrip("/")
        self.tracer = tracer
        self.interval_s = max(0.05, float(interval_s))
        self.headers = dict(headers or {})
        self.explicit = explicit
        self.timeout_s = timeout_s
        self._dropped = dropped
        self._parts = parts
        self.etag: str | None = None
        #: The central settings last applied (central names).
        self.settings: dict[str, float] = {}
        self.polls = 0
        #: Polls that could not reach the server or got a bad answer.
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crosstrace-sampling", daemon=True)

    def start(self) -> SamplingPoller:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    # -- one round ----------------------------------------------------------------
    def poll_once(self) -> bool:
        """Fetch and apply the settings, then report; ``False`` if the server failed."""
        self.polls += 1
        ok = True
        try:
            self._fetch()
        except Exception as exc:
            ok = False
            self.failures += 1
            log.debug("central sampling settings unavailable: %s", exc)
        try:
            self._report()
        except Exception as exc:
            log.debug("overhead report failed: %s", exc)
        return ok

    def _connection(self) -> http.client.HTTPConnection:
        p = self._parts
        cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        return cls(p.hostname or "", p.port, timeout=self.timeout_s)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self._connection()
        try:
            base = self._parts.path.rstrip("/")
            conn.request(method, base + path, body=body, headers={**self.headers, **headers})
            resp = conn.getresponse()
            data = resp.read(_MAX_BODY + 1)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def _fetch(self) -> None:
        service = str(self.tracer.resource.get("service.name", ""))
        headers = {"Accept": "application/json"}
        if self.etag:
            headers["If-None-Match"] = self.etag
        status, resp_headers, data = self._request(
            "GET", "/api/v1/sampling/" + quote(service, safe=""), None, headers
        )
        if status == 304:
            return
        if status != 200 or len(data) > _MAX_BODY:
            raise RuntimeError(f"GET sampling settings: HTTP {status}")
        doc = json.loads(data)
        settings = doc.get("settings") if isinstance(doc, dict) else None
        if not isinstance(settings, dict):
            raise RuntimeError("sampling settings: no 'settings' object")
        self.apply(settings)
        self.etag = resp_headers.get("etag")

    def apply(self, settings: Mapping[str, Any]) -> dict[str, float]:
        """Apply central *settings* the local configuration does not set itself."""
        kwargs: dict[str, float] = {}
        applied: dict[str, float] = {}
        for central, (keyword, local) in CENTRAL_KEYS.items():
            value = settings.get(central)
            if local in self.explicit or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and value >= 0:
                kwargs[keyword] = float(value)
                applied[central] = float(value)
        if kwargs:
            self.tracer.update(**kwargs)  # type: ignore[arg-type]
        self.settings = applied
        return applied

    def report_body(self) -> dict[str, Any]:
        """What this process spends (the body of ``POST /api/v1/overhead``)."""
        t = self.tracer
        ctl = t.controller
        body: dict[str, Any] = {
            "service": str(t.resource.get("service.name", "")),
            "budget": ctl.budget if ctl is not None else 0.0,
            "overhead": ctl.last_fraction if ctl is not None else 0.0,
            "floor": ctl.last_floor if ctl is not None else 0.0,
            "effective_ratio": t.effective_ratio,
            "record_fraction": t.record_fraction,
            "trace_fraction": ctl.trace_fraction if ctl is not None else 1.0,
            "poll_failures": self.failures,
        }
        if self._dropped is not None:
            body["spans_dropped"] = self._dropped()
        return body

    def _report(self) -> None:
        body = json.dumps(self.report_body()).encode()
        status, _, _ = self._request(
            "POST", "/api/v1/overhead", body, {"Content-Type": "application/json"}
        )
        if status >= 400:
            raise RuntimeError(f"POST overhead: HTTP {status}")
