"""The network service (ASGI): ``POST /v2.0/ports`` under a per-project quota."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from crosstrace.demo import faults as F
from crosstrace.demo.faults import FaultKind
from crosstrace.demo.instrument import ServiceKit
from crosstrace.demo.services.base import (
    CloudConfig,
    OverQuota,
    Service,
)

__all__ = ["PORT_QUOTA", "NetworkService"]


#: Ports each project may have; the ``network_quota`` fault makes it look used up.
PORT_QUOTA = 10_000


class NetworkService(Service):
    """Neutron-like: ``POST /v2.0/ports`` with a per-project port quota."""

    def __init__(self, kit: ServiceKit, config: CloudConfig) -> None:
        super().__init__(kit, config)
        self.ports: dict[str, dict[str, Any]] = {}
        self.used: dict[str, int] = {}

    def app(self) -> Callable[..., Any]:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def create_port(request: Any) -> Any:
            ctx = self.seen()
            try:
                body = await request.json()
                port_req = body["port"]
                network_id = str(port_req["network_id"])
                device_id = str(port_req.get("device_id", ""))
            except (ValueError, KeyError, TypeError):
                return JSONResponse(
                    {"NeutronError": {"type": "BadRequest", "message": "invalid port body"}},
                    status_code=400,
                )
            project = (ctx.project_id if ctx else None) or "-"
            try:
                with self.kit.span(F.OP_CREATE_PORT, {"network.id": network_id}):
                    used = self.used.get(project, 0)
                    limit = PORT_QUOTA
                    if self.fault(ctx) is FaultKind.NETWORK_QUOTA:
                        # Injected: the project's quota was lowered to what it uses.
                        limit = used
                    if used + 1 > limit:
                        raise OverQuota("Quota exceeded for resources: ['port'].")
                    port_id = str(uuid.uuid4())
                    self.used[project] = used + 1
                    port = {
                        "id": port_id,
                        "network_id": network_id,
                        "device_id": device_id,
                        "project_id": project,
                        "mac_address": "fa:16:3e:" + uuid.UUID(port_id).bytes[:3].hex(":"),
                        "status": "DOWN",
                    }
                    self.ports[port_id] = port
            except OverQuota as exc:
                self.log.info("Port quota exceeded for project %s: %s", project, exc)
                return JSONResponse(
                    {"NeutronError": {"type": "OverQuota", "message": str(exc), "detail": ""}},
                    status_code=409,
                )
            self.log.info("Created port %s for device %s", port["id"], device_id)
            return JSONResponse({"port": port}, status_code=201)

        return Starlette(routes=[Route("/v2.0/ports", create_port, methods=["POST"])])


# -- volume service (WSGI + SQLAlchemy) -------------------------------------
