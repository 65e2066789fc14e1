"""The demo's client: boots servers like python-novaclient would.

Each boot request gets a fresh global request id in ``X-OpenStack-Request-ID``
and the identity headers of one of the demo's users; the fault plan decides
which requests carry a fault. Requests run concurrently from a small thread
pool, and every outcome goes to the ground truth.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from crosstrace.demo.faults import CATALOGUE, FaultInjector, FaultKind, PlannedRequest
from crosstrace.demo.groundtruth import GroundTruth, RequestOutcome
from crosstrace.demo.identity import IDENTITIES, identity_headers
from crosstrace.demo.services.image import IMAGES
from crosstrace.demo.services.volume import RESERVED_SERVER_NAME
from crosstrace.ids import generate_request_id
from crosstrace.propagation import HEADER_REQUEST_ID

__all__ = ["OP_CREATE", "OP_SHOW", "Driver"]

OP_CREATE = "create server"
OP_SHOW = "show server"

_MISSING_IMAGE_NS = uuid.UUID("9e7c2b8a-2f44-4c0e-8d7e-7d5e0f4b1a33")
_IMAGE_IDS = tuple(IMAGES)


class Driver:
    """Sends boot (and show) requests to the compute API and records outcomes."""

    def __init__(
        self,
        compute_url: str,
        injector: FaultInjector,
        ground_truth: GroundTruth,
        concurrency: int = 8,
        timeout: float = 60.0,
        show_after_boot: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.compute_url = compute_url.rstrip("/")
        self.injector = injector
        self.ground_truth = ground_truth
        self.concurrency = concurrency
        self.timeout = timeout
        self.show_after_boot = show_after_boot
        self._local = threading.local()
        self._show_count = 0
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def run(
        self,
        plan: Iterable[PlannedRequest],
        on_done: Callable[[RequestOutcome], None] | None = None,
    ) -> list[RequestOutcome]:
        """Send every planned boot request (``concurrency`` at a time)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="demo-client") as pool:
            futures = [pool.submit(self.boot, planned) for planned in plan]
            outcomes = []
            for future in futures:
                outcome = future.result()
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)
        return outcomes

    def boot(self, planned: PlannedRequest) -> RequestOutcome:
        """Send one boot request as planned; record it (and its show) in the ground truth."""
        identity = IDENTITIES[planned.identity_index % len(IDENTITIES)]
        if planned.fault is FaultKind.IMAGE_NOT_FOUND:
            image_id = uuid.uuid5(_MISSING_IMAGE_NS, str(planned.index)).hex
        else:
            image_id = _IMAGE_IDS[planned.index % len(_IMAGE_IDS)]
        if planned.fault is FaultKind.VOLUME_DUPLICATE:
            name = RESERVED_SERVER_NAME
        else:
            name = f"vm-{planned.index:05d}-{uuid.uuid4().hex[:6]}"
        global_id = generate_request_id()
        self.injector.arm(global_id, planned.fault)
        outcome = RequestOutcome(
            index=planned.index,
            operation=OP_CREATE,
            global_request_id=global_id,
            fault=planned.fault,
            project_id=identity.project_id,
            domain_id=identity.domain_id,
            user_id=identity.user_id,
            expected_status=CATALOGUE[planned.fault].expected_status,
        )
        headers = {**identity_headers(identity), HEADER_REQUEST_ID: global_id}
        body = {"server": {"name": name, "imageRef": image_id, "flavorRef": "1"}}
        response = self._send(outcome, "POST", "/v2.1/servers", headers, body)
        if response is not None and outcome.ok:
            try:
                outcome.server_id = str(response.json()["server"]["id"])
            except (ValueError, KeyError, TypeError):
                outcome.error = "malformed create response"
        self.ground_truth.add(outcome)
        if self.show_after_boot and outcome.server_id:
            self.show(outcome, headers)
        return outcome

    def show(self, boot: RequestOutcome, boot_headers: dict[str, str]) -> RequestOutcome:
        """Show the server a boot created, as a separate request with its own global id."""
        global_id = generate_request_id()
        with self._lock:
            index = self._show_count
            self._show_count += 1
        outcome = RequestOutcome(
            index=index,
            operation=OP_SHOW,
            global_request_id=global_id,
            fault=FaultKind.NONE,
            project_id=boot.project_id,
            domain_id=boot.domain_id,
            user_id=boot.user_id,
            expected_status=200,
            server_id=boot.server_id,
        )
        headers = {**boot_headers, HEADER_REQUEST_ID: global_id}
        self._send(outcome, "GET", f"/v2.1/servers/{boot.server_id}", headers, None)
        self.ground_truth.add(outcome)
        return outcome

    def _send(
        self,
        outcome: RequestOutcome,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any,
    ) -> requests.Response | None:
        outcome.start_ns = time.time_ns()
        start = time.perf_counter()
        try:
            response = self._session().request(
                method, self.compute_url + path, json=body, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            outcome.latency_s = time.perf_counter() - start
            outcome.error = f"{type(exc).__name__}: {exc}"
            return None
        outcome.latency_s = time.perf_counter() - start
        outcome.status = response.status_code
        outcome.local_request_id = response.headers.get("x-openstack-request-id")
        if not outcome.ok:
            try:
                payload = response.json()
                message = next(iter(payload.values()))["message"]
            except (ValueError, KeyError, TypeError, StopIteration, AttributeError):
                message = response.text[:200]
            outcome.error = str(message)
        return response
