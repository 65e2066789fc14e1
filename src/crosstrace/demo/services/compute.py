"""The compute worker (RPC, one per host): ``build_and_run_instance`` creates the
port and the root volume over HTTP."""

from __future__ import annotations

import threading
from typing import Any

from crosstrace.demo import faults as F
from crosstrace.demo.faults import FaultKind
from crosstrace.demo.instrument import ServiceKit
from crosstrace.demo.rpc import RpcServer
from crosstrace.demo.services.base import (
    ROOT_VOLUME_GB,
    BuildFailed,
    CloudConfig,
    OverQuota,
    Service,
    VolumeCreateFailed,
    error_message,
    identity_headers_from,
)

__all__ = ["ComputeService"]


class ComputeService(Service):
    """nova-compute-like: ``build_and_run_instance`` creates port and volume."""

    def __init__(
        self,
        kit: ServiceKit,
        config: CloudConfig,
        host: str,
        network_url: str,
        volume_url: str,
        stop: threading.Event,
    ) -> None:
        super().__init__(kit, config)
        self.host = host
        self.network_url = network_url
        self.volume_url = volume_url
        self._stop = stop
        self._local = threading.local()

    def _clients(self) -> tuple[Any, Any]:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = (
                self.kit.httpx_client(self.timings.http_timeout),
                self.kit.requests_session(),
            )
            self._local.clients = clients
        return clients

    def build_and_run_instance(self, instance: dict[str, Any]) -> Any:
        ctx = self.seen()
        instance_uuid = str(instance.get("uuid"))
        with self.kit.span(F.OP_BUILD, {"compute.host": self.host, "instance.id": instance_uuid}):
            if self.fault(ctx) is FaultKind.RPC_NO_REPLY:
                # Injected: the worker is stuck (e.g. on a hung hypervisor call) and
                # never answers; the caller's RPC call times out.
                self.log.info("[instance: %s] Waiting for the hypervisor", instance_uuid)
                self._stop.wait(self.timings.stuck)
                self.log.warning(
                    "[instance: %s] Hypervisor call took %.1fs; dropping the build",
                    instance_uuid,
                    self.timings.stuck,
                )
                return RpcServer.NO_REPLY
            network_client, volume_session = self._clients()
            headers = identity_headers_from(ctx)
            response = network_client.post(
                f"{self.network_url}/v2.0/ports",
                json={"port": {"network_id": "private", "device_id": instance_uuid}},
                headers=headers,
            )
            if response.status_code == 409:
                message = response.json().get("NeutronError", {}).get("message", "")
                self.log.error(
                    "[instance: %s] Failed to allocate network: %s", instance_uuid, message
                )
                raise OverQuota(message)
            if response.status_code != 201:
                raise BuildFailed(f"network service answered {response.status_code}")
            port = response.json()["port"]
            try:
                vresp = volume_session.post(
                    f"{self.volume_url}/v3/volumes",
                    json={"volume": {"name": f"{instance['name']}-root", "size": ROOT_VOLUME_GB}},
                    headers=headers,
                    timeout=self.timings.volume_timeout,
                )
            except Exception as exc:
                self.log.error(
                    "[instance: %s] Timed out waiting for the volume service: %s",
                    instance_uuid,
                    type(exc).__name__,
                )
                raise
            if vresp.status_code != 202:
                message = error_message(vresp, "Failed to create volume")
                self.log.error("[instance: %s] %s", instance_uuid, message)
                raise VolumeCreateFailed(message)
            volume = vresp.json()["volume"]
        self.log.info(
            "[instance: %s] Built on %s with port %s and volume %s",
            instance_uuid,
            self.host,
            port["id"],
            volume["id"],
        )
        return {"host": self.host, "port_id": port["id"], "volume_id": volume["id"]}
