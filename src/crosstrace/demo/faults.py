"""The demo's fault catalogue and the seeded injector that hands faults out.

Every fault has a documented true root cause: the service and operation where it
starts and the error it raises there. The plan (which boot request gets which
fault) is drawn from a seeded random generator, so a seed reproduces a run
request for request. Services ask the injector whether the request they are
serving carries a fault, by the request's global id; the faults then happen for
real (a real 404, a real UNIQUE constraint violation, a real slow SQL query, a
real RPC timeout), and the tracer and logs see them as they would in production.
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CATALOGUE",
    "DEFAULT_RATES",
    "ERRORS_SEEN",
    "SERVICES_REACHED",
    "FaultInjector",
    "FaultKind",
    "FaultSpec",
    "PlannedRequest",
    "RootCause",
]


class FaultKind(enum.StrEnum):
    """The kinds of fault the demo injects; ``none`` means a clean request."""

    NONE = "none"
    IMAGE_NOT_FOUND = "image_not_found"
    NETWORK_QUOTA = "network_quota"
    VOLUME_DB_TIMEOUT = "volume_db_timeout"
    RPC_NO_REPLY = "rpc_no_reply"
    IMAGE_500 = "image_500"
    SLOW_SCHEDULER = "slow_scheduler"
    VOLUME_DUPLICATE = "volume_duplicate"


@dataclass(frozen=True, slots=True)
class RootCause:
    """Where a fault truly starts: service, operation (span name) and error."""

    service: str
    operation: str
    error_type: str
    error_message: str


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One catalogue entry: what goes wrong, where, and what the client sees."""

    kind: FaultKind
    title: str
    root_cause: RootCause | None
    expected_status: int
    is_failure: bool
    description: str


# Service names, as they appear in traces (``service.name``) and log file names.
SVC_COMPUTE_API = "compute-api"
SVC_IMAGE = "image"
SVC_NETWORK = "network"
SVC_VOLUME = "volume"
SVC_SCHEDULER = "scheduler"
SVC_COMPUTE = "compute"

#: Span names the cloud's own code opens (server and consumer spans are named by
#: the middleware and the RPC wrapper; these are the interesting inner steps).
OP_GET_IMAGE = "image.get"
OP_CREATE_PORT = "network.create_port"
OP_VOLUME_QUERY = "volume.db.find_capacity"
OP_VOLUME_INSERT = "volume.db.insert"
OP_SELECT_DESTINATIONS = "select_destinations"
OP_BUILD = "build_and_run_instance"
#: The compute API's client span around its RPC calls (publish and wait).
OP_RPC_CALL_SCHEDULE = "rpc.call select_destinations"
OP_RPC_CALL_BUILD = "rpc.call build_and_run_instance"

CATALOGUE: Mapping[FaultKind, FaultSpec] = {
    FaultKind.NONE: FaultSpec(
        FaultKind.NONE,
        "no fault",
        None,
        202,
        False,
        "The boot succeeds: image found, host picked, port and volume created.",
    ),
    FaultKind.IMAGE_NOT_FOUND: FaultSpec(
        FaultKind.IMAGE_NOT_FOUND,
        "image not found",
        RootCause(SVC_IMAGE, OP_GET_IMAGE, "ImageNotFound", "Image {image_id} could not be found."),
        400,
        True,
        "The client asks for an image id the image service does not have; the image "
        "service answers 404 and the compute API rejects the boot with 400.",
    ),
    FaultKind.NETWORK_QUOTA: FaultSpec(
        FaultKind.NETWORK_QUOTA,
        "network quota exceeded",
        RootCause(
            SVC_NETWORK,
            OP_CREATE_PORT,
            "OverQuota",
            "Quota exceeded for resources: ['port'].",
        ),
        403,
        True,
        "The project's port quota is used up; the network service answers 409 "
        "OverQuota to the compute worker, and the compute API answers 403.",
    ),
    FaultKind.VOLUME_DB_TIMEOUT: FaultSpec(
        FaultKind.VOLUME_DB_TIMEOUT,
        "slow volume database query",
        RootCause(
            SVC_VOLUME,
            OP_VOLUME_QUERY,
            "ReadTimeout",
            "The volume service did not answer in time (slow capacity query).",
        ),
        504,
        True,
        "A slow SQL query in the volume service outlasts the compute worker's HTTP "
        "timeout; the worker gives up and the compute API answers 504.",
    ),
    FaultKind.RPC_NO_REPLY: FaultSpec(
        FaultKind.RPC_NO_REPLY,
        "compute worker never answers",
        RootCause(
            SVC_COMPUTE,
            OP_BUILD,
            "MessagingTimeout",
            "Timed out waiting for a reply to build_and_run_instance.",
        ),
        504,
        True,
        "The compute worker takes the RPC call but is stuck and never replies; the "
        "compute API's call times out (MessagingTimeout) and it answers 504.",
    ),
    FaultKind.IMAGE_500: FaultSpec(
        FaultKind.IMAGE_500,
        "intermittent image service error",
        RootCause(
            SVC_IMAGE,
            OP_GET_IMAGE,
            "StoreUnavailable",
            "Image store backend is unavailable.",
        ),
        500,
        True,
        "The image service fails with 500 now and then (its store backend is "
        "flaky); the compute API answers 500.",
    ),
    FaultKind.SLOW_SCHEDULER: FaultSpec(
        FaultKind.SLOW_SCHEDULER,
        "slow scheduler",
        RootCause(SVC_SCHEDULER, OP_SELECT_DESTINATIONS, "", "select_destinations was slow."),
        202,
        False,
        "The scheduler takes long to pick a host; the boot succeeds, but slowly "
        "(latency, not failure).",
    ),
    FaultKind.VOLUME_DUPLICATE: FaultSpec(
        FaultKind.VOLUME_DUPLICATE,
        "volume DB constraint violation, repeated upstream",
        RootCause(
            SVC_VOLUME,
            OP_VOLUME_INSERT,
            "IntegrityError",
            "Failed to create volume: duplicate volume name",
        ),
        500,
        True,
        "The volume insert violates a UNIQUE constraint. The volume service logs it "
        "at WARNING; the compute worker and the compute API each log the same "
        "'Failed to create volume: ...' message at ERROR and pass it on, so the "
        "first ERROR line in the logs names the compute worker, not the volume DB.",
    ),
}

_ALL = (SVC_COMPUTE_API, SVC_IMAGE, SVC_SCHEDULER, SVC_COMPUTE, SVC_NETWORK, SVC_VOLUME)

#: The services a boot request with each fault reaches (so its trace spans them).
SERVICES_REACHED: Mapping[FaultKind, frozenset[str]] = {
    FaultKind.NONE: frozenset(_ALL),
    FaultKind.IMAGE_NOT_FOUND: frozenset({SVC_COMPUTE_API, SVC_IMAGE}),
    FaultKind.IMAGE_500: frozenset({SVC_COMPUTE_API, SVC_IMAGE}),
    FaultKind.NETWORK_QUOTA: frozenset(_ALL) - {SVC_VOLUME},
    FaultKind.VOLUME_DB_TIMEOUT: frozenset(_ALL),
    FaultKind.RPC_NO_REPLY: frozenset({SVC_COMPUTE_API, SVC_IMAGE, SVC_SCHEDULER, SVC_COMPUTE}),
    FaultKind.SLOW_SCHEDULER: frozenset(_ALL),
    FaultKind.VOLUME_DUPLICATE: frozenset(_ALL),
}

#: Error spans (service, span name) that the stored trace of a request with each
#: fault must contain. A stuck worker raises nothing itself: its failure shows
#: only as the caller's RPC timeout.
ERRORS_SEEN: Mapping[FaultKind, tuple[tuple[str, str], ...]] = {
    FaultKind.NONE: (),
    FaultKind.SLOW_SCHEDULER: (),
    FaultKind.IMAGE_NOT_FOUND: ((SVC_IMAGE, OP_GET_IMAGE),),
    FaultKind.IMAGE_500: ((SVC_IMAGE, OP_GET_IMAGE),),
    FaultKind.NETWORK_QUOTA: ((SVC_NETWORK, OP_CREATE_PORT), (SVC_COMPUTE, OP_BUILD)),
    FaultKind.VOLUME_DB_TIMEOUT: ((SVC_COMPUTE, OP_BUILD),),
    FaultKind.RPC_NO_REPLY: ((SVC_COMPUTE_API, OP_RPC_CALL_BUILD),),
    FaultKind.VOLUME_DUPLICATE: ((SVC_VOLUME, OP_VOLUME_INSERT), (SVC_COMPUTE, OP_BUILD)),
}

#: Probability of each fault per boot request; the rest are clean. The same
#: numbers are documented in the README.
DEFAULT_RATES: Mapping[FaultKind, float] = {
    FaultKind.IMAGE_NOT_FOUND: 0.05,
    FaultKind.NETWORK_QUOTA: 0.05,
    FaultKind.VOLUME_DB_TIMEOUT: 0.03,
    FaultKind.RPC_NO_REPLY: 0.03,
    FaultKind.IMAGE_500: 0.05,
    FaultKind.SLOW_SCHEDULER: 0.05,
    FaultKind.VOLUME_DUPLICATE: 0.04,
}


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One boot request of the plan: its position, fault and caller identity."""

    index: int
    fault: FaultKind
    identity_index: int


class FaultInjector:
    """Draws the fault plan from a seed and answers "does this request fail here?".

    :meth:`next_request` hands out planned requests in order (for the driver);
    :meth:`arm` binds a planned fault to the request's global id before it is
    sent, and services ask :meth:`fault_for` with the global id of the request
    they are serving. Thread-safe: services run in many threads.
    """

    def __init__(
        self,
        seed: int,
        rates: Mapping[FaultKind, float] | None = None,
        identities: int = 1,
    ) -> None:
        rates = dict(DEFAULT_RATES if rates is None else rates)
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1.0:
            raise ValueError("fault rates must be >= 0 and sum to at most 1")
        if FaultKind.NONE in rates:
            raise ValueError("the rate of clean requests is what the faults leave over")
        if identities < 1:
            raise ValueError("identities must be >= 1")
        self.seed = seed
        self.rates = rates
        self._rng = random.Random(seed)
        self._identities = identities
        self._kinds = [*rates, FaultKind.NONE]
        self._weights = [*rates.values(), max(0.0, 1.0 - sum(rates.values()))]
        self._count = 0
        self._armed: dict[str, FaultKind] = {}
        self._lock = threading.Lock()

    def next_request(self) -> PlannedRequest:
        """The next request of the plan (fault and identity drawn from the seed)."""
        with self._lock:
            fault = self._rng.choices(self._kinds, self._weights)[0]
            identity = self._rng.randrange(self._identities)
            planned = PlannedRequest(self._count, fault, identity)
            self._count += 1
            return planned

    def plan(self, n: int) -> list[PlannedRequest]:
        """The next ``n`` planned requests."""
        return [self.next_request() for _ in range(n)]

    def arm(self, global_request_id: str, fault: FaultKind) -> None:
        """Make the services inject ``fault`` into the request with this global id."""
        if fault is FaultKind.NONE:
            return
        with self._lock:
            self._armed[global_request_id] = fault

    def disarm(self, global_request_id: str) -> None:
        """Forget a request once it is answered (keeps the table small)."""
        with self._lock:
            self._armed.pop(global_request_id, None)

    def fault_for(self, global_request_id: str | None) -> FaultKind:
        """The fault armed for this global id, or :attr:`FaultKind.NONE`."""
        if global_request_id is None:
            return FaultKind.NONE
        return self._armed.get(global_request_id, FaultKind.NONE)
