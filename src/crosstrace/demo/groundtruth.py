"""The demo's ground truth: what was injected into which request, and what came out.

Written as one JSON document (``groundtruth.json`` in the demo's data directory)
so that the root-cause analysis can be scored against it: for every boot request
its global request id, the local request ids each service gave it, its trace id,
the fault injected (if any) with its true root cause, the expected and the
observed HTTP status at the client. Requests without a fault are listed too, so
that precision (not only recall) can be computed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crosstrace.demo.faults import CATALOGUE, FaultKind

__all__ = ["FORMAT_VERSION", "GroundTruth", "RequestOutcome"]

#: Bumped when the JSON layout changes incompatibly.
FORMAT_VERSION = 1


@dataclass(slots=True)
class RequestOutcome:
    """One client request and what the client saw."""

    index: int
    operation: str
    global_request_id: str
    fault: FaultKind
    project_id: str
    domain_id: str
    user_id: str
    expected_status: int
    status: int | None = None
    error: str | None = None
    local_request_id: str | None = None
    latency_s: float | None = None
    server_id: str | None = None
    start_ns: int = 0

    @property
    def ok(self) -> bool:
        """Whether the request succeeded at the client (2xx)."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def as_expected(self) -> bool:
        """Whether the client saw the status the fault catalogue predicts."""
        return self.status == self.expected_status


@dataclass(slots=True)
class _Seen:
    local_request_ids: dict[str, list[str]] = field(default_factory=dict)
    trace_ids: set[str] = field(default_factory=set)


class GroundTruth:
    """Collects outcomes from the driver and ids from the services; thread-safe.

    Services call :meth:`saw` with the ids of each request they serve (the
    global id, their own local id and the trace id of their current span); the
    driver calls :meth:`add` with each finished request.
    """

    def __init__(self, seed: int, rates: dict[str, float], slow_threshold_s: float) -> None:
        self.seed = seed
        self.rates = rates
        self.slow_threshold_s = slow_threshold_s
        self.started_at = time.time()
        self._outcomes: list[RequestOutcome] = []
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def saw(
        self,
        global_request_id: str | None,
        service: str,
        local_request_id: str | None,
        trace_id: str | None,
    ) -> None:
        """Record that ``service`` served the request with this global id."""
        if not global_request_id:
            return
        with self._lock:
            seen = self._seen.setdefault(global_request_id, _Seen())
            if local_request_id:
                ids = seen.local_request_ids.setdefault(service, [])
                if local_request_id not in ids:
                    ids.append(local_request_id)
            if trace_id:
                seen.trace_ids.add(trace_id)

    def add(self, outcome: RequestOutcome) -> None:
        """Record a finished client request."""
        with self._lock:
            self._outcomes.append(outcome)

    def outcomes(self, operation: str | None = "create server") -> list[RequestOutcome]:
        """Finished requests in plan order (boot requests by default)."""
        with self._lock:
            items = [o for o in self._outcomes if operation is None or o.operation == operation]
        return sorted(items, key=lambda o: (o.operation, o.index))

    def local_ids(self, global_request_id: str) -> dict[str, list[str]]:
        with self._lock:
            seen = self._seen.get(global_request_id)
            return {k: list(v) for k, v in seen.local_request_ids.items()} if seen else {}

    def trace_ids(self, global_request_id: str) -> list[str]:
        with self._lock:
            seen = self._seen.get(global_request_id)
            return sorted(seen.trace_ids) if seen else []

    def counts(self) -> Counter[FaultKind]:
        """Boot requests per fault kind."""
        return Counter(o.fault for o in self.outcomes())

    def _entry(self, o: RequestOutcome) -> dict[str, Any]:
        spec = CATALOGUE[o.fault]
        trace_ids = self.trace_ids(o.global_request_id)
        entry: dict[str, Any] = {
            "index": o.index,
            "operation": o.operation,
            "global_request_id": o.global_request_id,
            "local_request_ids": self.local_ids(o.global_request_id),
            "client_local_request_id": o.local_request_id,
            "trace_id": trace_ids[0] if len(trace_ids) == 1 else None,
            "trace_ids": trace_ids,
            "fault": str(o.fault),
            "project_id": o.project_id,
            "domain_id": o.domain_id,
            "user_id": o.user_id,
            "expected_status": o.expected_status,
            "status": o.status,
            "error": o.error,
            "latency_s": None if o.latency_s is None else round(o.latency_s, 4),
            "slow": o.latency_s is not None and o.latency_s > self.slow_threshold_s,
            "start_ns": o.start_ns,
        }
        if spec.root_cause is not None:
            entry["root_cause"] = asdict(spec.root_cause)
            entry["is_failure"] = spec.is_failure
        if o.server_id:
            entry["server_id"] = o.server_id
        return entry

    def to_dict(self) -> dict[str, Any]:
        """The whole document: catalogue, faults, clean requests, other requests."""
        boots = self.outcomes()
        faults = [self._entry(o) for o in boots if o.fault is not FaultKind.NONE]
        clean = [self._entry(o) for o in boots if o.fault is FaultKind.NONE]
        others = [self._entry(o) for o in self.outcomes(None) if o.operation != "create server"]
        return {
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "started_at": self.started_at,
            "slow_threshold_s": self.slow_threshold_s,
            "fault_rates": self.rates,
            "catalogue": {
                str(kind): {
                    "title": spec.title,
                    "root_cause": asdict(spec.root_cause) if spec.root_cause else None,
                    "expected_status": spec.expected_status,
                    "is_failure": spec.is_failure,
                    "description": spec.description,
                }
                for kind, spec in CATALOGUE.items()
            },
            "counts": {str(k): v for k, v in sorted(self.counts().items())},
            "faults": faults,
            "requests_without_fault": clean,
            "other_requests": others,
        }

    def write(self, path: Path) -> Path:
        """Write the document atomically (temp file, then rename) and return ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
        return path
