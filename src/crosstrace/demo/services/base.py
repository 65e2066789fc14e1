"""What the demo services share: timings, the cloud's configuration, the errors
they raise, small WSGI/JSON helpers and the :class:`Service` base class."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosstrace.demo.faults import FaultInjector, FaultKind
from crosstrace.demo.groundtruth import GroundTruth
from crosstrace.demo.instrument import ServiceKit

__all__ = [
    "REASONS",
    "ROOT_VOLUME_GB",
    "BuildFailed",
    "CloudConfig",
    "ImageNotFound",
    "OverQuota",
    "Service",
    "StoreUnavailable",
    "Timings",
    "VolumeCreateFailed",
    "error_message",
    "identity_headers_from",
    "nova_error",
    "read_json",
    "rpc_attrs",
    "wsgi_json",
]


#: Root volume size of every server, in GiB.
ROOT_VOLUME_GB = 1


@dataclass(frozen=True, slots=True)
class Timings:
    """Delays and timeouts, in seconds. The defaults suit a laptop demo; tests
    use :meth:`fast`."""

    #: compute worker → volume service HTTP timeout.
    volume_timeout: float = 2.0
    #: how long the slow volume DB query takes (must exceed ``volume_timeout``).
    slow_query: float = 3.0
    #: compute API → scheduler RPC call timeout.
    scheduler_timeout: float = 10.0
    #: compute API → compute worker RPC call timeout.
    build_timeout: float = 6.0
    #: how long a stuck compute worker stays stuck (must exceed ``build_timeout``).
    stuck: float = 7.0
    #: extra time the slow scheduler takes.
    slow_scheduler: float = 1.5
    #: client latency above which a request counts as slow.
    slow_threshold: float = 1.0
    #: timeout of other HTTP calls between services.
    http_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.slow_query <= self.volume_timeout:
            raise ValueError("slow_query must exceed volume_timeout")
        if self.stuck <= self.build_timeout:
            raise ValueError("stuck must exceed build_timeout")
        if self.build_timeout <= self.volume_timeout:
            raise ValueError("build_timeout must exceed volume_timeout")

    @classmethod
    def fast(cls) -> Timings:
        """Short timeouts for tests (still well above a normal request's time)."""
        return cls(
            volume_timeout=1.0,
            slow_query=1.5,
            scheduler_timeout=8.0,
            build_timeout=3.0,
            stuck=3.3,
            slow_scheduler=0.8,
            slow_threshold=0.6,
            http_timeout=8.0,
        )


@dataclass(slots=True)
class CloudConfig:
    """Everything the cloud needs to start."""

    injector: FaultInjector
    ground_truth: GroundTruth
    #: Where the service logs (``logs/<service>.log``) and the default volume
    #: database (``volume.sqlite3``) go.
    data_dir: Path
    broker_url: str = "memory://"
    volume_db_url: str | None = None
    timings: Timings = Timings()
    #: Kombu exchange and queue name prefix; unique per cloud so that two clouds
    #: in one process or on one broker never see each other's messages.
    namespace: str = ""


# -- errors -----------------------------------------------------------------


class ImageNotFound(Exception):
    """The image service has no image with this id."""


class StoreUnavailable(Exception):
    """The image service's store backend failed."""


class OverQuota(Exception):
    """The project has used up its quota."""


class VolumeCreateFailed(Exception):
    """The volume service could not create the volume."""


class BuildFailed(Exception):
    """The compute worker could not build the instance."""


# -- small WSGI/ASGI helpers ------------------------------------------------

REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def wsgi_json(start_response: Any, status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} {REASONS.get(status, 'Unknown')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


def read_json(environ: dict[str, Any]) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0 or length > 1_000_000:
        return None
    try:
        return json.loads(environ["wsgi.input"].read(length))
    except ValueError:
        return None


def identity_headers_from(ctx: Any) -> dict[str, str]:
    """Forward the caller's identity as keystonemiddleware would set it again
    downstream (the demo has no tokens to re-validate)."""
    if ctx is None:
        return {}
    headers = {}
    for header, value in (
        ("X-User-Id", ctx.user_id),
        ("X-Project-Id", ctx.project_id),
        ("X-Domain-Id", ctx.domain_id),
        ("X-User-Domain-Id", ctx.user_domain_id),
        ("X-Project-Domain-Id", ctx.project_domain_id),
    ):
        if value:
            headers[header] = value
    if ctx.roles:
        headers["X-Roles"] = ",".join(ctx.roles)
    return headers


def rpc_attrs(service: str, host: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"rpc.system": "oslo.messaging", "rpc.service": service}
    if host:
        attrs["server.address"] = host
    return attrs


def nova_error(status: int, message: str) -> dict[str, Any]:
    key = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 504: "computeFault"}.get(
        status, "computeFault"
    )
    return {key: {"code": status, "message": message}}


class Service:
    """What every service shares: its kit (logger, spans) and the fault table."""

    def __init__(self, kit: ServiceKit, config: CloudConfig) -> None:
        self.kit = kit
        self.log = kit.log
        self.config = config
        self.timings = config.timings

    def seen(self) -> Any:
        """Record the current request for the ground truth; return its context."""
        ctx = self.kit.context()
        if ctx is not None:
            self.config.ground_truth.saw(
                ctx.global_request_id, self.kit.name, ctx.request_id, self.kit.trace_id()
            )
        return ctx

    def fault(self, ctx: Any) -> FaultKind:
        return self.config.injector.fault_for(ctx.global_request_id if ctx else None)


# -- image service (ASGI) ---------------------------------------------------


def error_message(response: Any, default: str) -> str:
    try:
        body = response.json()
    except ValueError:
        return default
    if isinstance(body, dict):
        for value in body.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
        if "message" in body:
            return str(body["message"])
    return default


# -- compute API (WSGI) -----------------------------------------------------
