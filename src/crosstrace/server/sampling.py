"""Central tracing settings per service, and the overhead each service reports.

``crosstrace serve`` keeps, for each service name and for ``_default`` (every
service without settings of its own), the sampling ratio, the overhead budget,
the rate limit and the slow threshold. Tracers read their service's merged
settings from ``GET /api/v1/sampling/{service}`` (with an ETag, so an unchanged
answer is a ``304``) and report what they actually spend with
``POST /api/v1/overhead``; ``GET /api/v1/overhead`` shows budget against actual
per service. The settings are written to a JSON file beside the SQLite store
(kept in memory for PostgreSQL) so a restart keeps them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_SERVICE",
    "FIELDS",
    "SamplingRegistry",
    "parse_settings",
]

log = logging.getLogger(__name__)

#: The entry every service without settings of its own follows.
DEFAULT_SERVICE: Final = "_default"
#: The settings a service can have, and what each must be.
FIELDS: Final = ("ratio", "budget", "rate_limit", "slow_threshold")
#: Reported fields kept per service (numbers only).
REPORT_FIELDS: Final = (
    "budget",
    "overhead",
    "floor",
    "effective_ratio",
    "record_fraction",
    "trace_fraction",
    "spans_dropped",
    "poll_failures",
)
MAX_SERVICES: Final = 10_000
MAX_SERVICE_NAME: Final = 256


def parse_settings(body: object) -> dict[str, float | None]:
    """Validate a settings body: known fields, numbers in range (``None`` unsets).

    ``ratio`` and ``budget`` are fractions 0..1, ``rate_limit`` traces per
    second >= 0, ``slow_threshold`` seconds >= 0. Raises :class:`ValueError`.
    """
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    out: dict[str, float | None] = {}
    for name, value in body.items():
        if value is None:
            out[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < 0.0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if name in ("ratio", "budget") and v > 1.0:
            raise ValueError(f"{name} is a fraction between 0 and 1, got {value!r}")
        out[name] = v
    return out


def check_service(name: str) -> str:
    """A service name as a path segment: non-empty, at most 256 printable characters."""
    if not name or len(name) > MAX_SERVICE_NAME or not name.isprintable():
        raise ValueError("service must be 1 to 256 printable characters")
    return name


class SamplingRegistry:
    """Per-service settings and reports; thread-safe, persisted to *path* if given."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._settings: dict[str, dict[str, float]] = {}
        self._reports: dict[str, dict[str, Any]] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read sampling settings %s: %s (starting empty)", path, exc)
            return
        if not isinstance(doc, dict):
            return
        for service, values in doc.items():
            try:
                parsed = parse_settings(values)
                self._settings[check_service(str(service))] = {
                    k: v for k, v in parsed.items() if v is not None
                }
            except ValueError as exc:
                log.warning("skipping sampling settings of %r in %s: %s", service, path, exc)

    def _save(self) -> None:
        path = self._path
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self._settings, sort_keys=True, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write sampling settings %s: %s", path, exc)

    def effective(self, service: str) -> tuple[dict[str, Any], str]:
        """*service*'s settings over the default, and their ETag."""
        with self._lock:
            merged = dict(self._settings.get(DEFAULT_SERVICE, {}))
            merged.update(self._settings.get(service, {}))
        doc = {"service": service, "settings": merged}
        text = json.dumps(doc, sort_keys=True)
        return doc, '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'

    def all(self) -> dict[str, dict[str, float]]:
        """Every service's own settings (``_default`` included)."""
        with self._lock:
            return {k: dict(v) for k, v in sorted(self._settings.items())}

    def update(self, service: str, values: Mapping[str, float | None]) -> dict[str, float]:
        """Set (or, with ``None``, unset) settings of *service*; returns its own settings."""
        check_service(service)
        with self._lock:
            if service not in self._settings and len(self._settings) >= MAX_SERVICES:
                raise ValueError("too many services with settings")
            own = self._settings.setdefault(service, {})
            for name, value in values.items():
                if value is None:
                    own.pop(name, None)
                else:
                    own[name] = value
            if not own and service != DEFAULT_SERVICE:
                del self._settings[service]
            self._save()
            return dict(own)

    def report(self, body: object) -> None:
        """Keep the latest overhead report of a service (validated, numbers only)."""
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        service = body.get("service")
        if not isinstance(service, str):
            raise ValueError("service is required")
        check_service(service)
        entry: dict[str, Any] = {"reported_at": time.time()}
        for name in REPORT_FIELDS:
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number")
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite")
            entry[name] = value
        with self._lock:
            if service not in self._reports and len(self._reports) >= MAX_SERVICES:
                raise ValueError("too many reporting services")
            self._reports[service] = entry

    def overhead(self) -> list[dict[str, Any]]:
        """Per service: the budget set centrally and what its tracer reports."""
        with self._lock:
            names = sorted((set(self._settings) | set(self._reports)) - {DEFAULT_SERVICE})
            default = self._settings.get(DEFAULT_SERVICE, {})
            rows = []
            for name in names:
                own = self._settings.get(name, {})
                report = self._reports.get(name, {})
                rows.append(
                    {
                        "service": name,
                        "budget": own.get("budget", default.get("budget")),
                        "reported": dict(report),
                    }
                )
        return rows
