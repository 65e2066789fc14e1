"""The compute API (WSGI): ``POST /v2.1/servers`` and ``GET /v2.1/servers/{id}``;
checks the image, then calls the scheduler and a compute worker over RPC."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from crosstrace.demo import faults as F
from crosstrace.demo.instrument import ServiceKit
from crosstrace.demo.rpc import MessagingTimeout, RemoteError, RpcClient
from crosstrace.demo.services.base import (
    CloudConfig,
    Service,
    error_message,
    identity_headers_from,
    nova_error,
    read_json,
    rpc_attrs,
    wsgi_json,
)

__all__ = ["ComputeApiService"]


# Error types the compute API maps to HTTP statuses.
_STATUS_FOR_REMOTE = {"OverQuota": 403, "ReadTimeout": 504, "ConnectTimeout": 504}


class ComputeApiService(Service):
    """nova-api-like: ``POST /v2.1/servers`` and ``GET /v2.1/servers/{id}``."""

    def __init__(
        self, kit: ServiceKit, config: CloudConfig, image_url: str, rpc: RpcClient
    ) -> None:
        super().__init__(kit, config)
        self.image_url = image_url
        self.rpc = rpc
        self.servers: dict[str, dict[str, Any]] = {}
        self._local = threading.local()
        self._topic = f"{config.namespace}compute."
        self._scheduler_topic = f"{config.namespace}scheduler"

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self.kit.requests_session()
            self._local.session = session
        return session

    def app(self) -> Callable[..., Any]:
        prefix = "/v2.1/servers"

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            method = environ.get("REQUEST_METHOD")
            if path == prefix and method == "POST":
                status, body = self.create(read_json(environ))
                return wsgi_json(start_response, status, body)
            if path.startswith(prefix + "/") and method == "GET":
                status, body = self.show(path[len(prefix) + 1 :])
                return wsgi_json(start_response, status, body)
            return wsgi_json(start_response, 404, nova_error(404, "not found"))

        return app

    def show(self, server_id: str) -> tuple[int, dict[str, Any]]:
        ctx = self.seen()
        server = self.servers.get(server_id)
        if server is None or (ctx is not None and server["tenant_id"] != ctx.project_id):
            return 404, nova_error(404, f"Instance {server_id} could not be found.")
        return 200, {"server": server}

    def create(self, body: Any) -> tuple[int, dict[str, Any]]:
        ctx = self.seen()
        try:
            spec = body["server"]
            name = str(spec["name"])
            image_id = str(spec["imageRef"])
            flavor = str(spec.get("flavorRef", "1"))
        except (TypeError, KeyError):
            return 400, nova_error(400, "Invalid server body")
        instance_uuid = str(uuid.uuid4())
        headers = identity_headers_from(ctx)
        # 1. the image must exist
        try:
            response = self._session().get(
                f"{self.image_url}/v2/images/{image_id}",
                headers=headers,
                timeout=self.timings.http_timeout,
            )
        except Exception as exc:
            self.log.error("Error contacting the image service: %s", type(exc).__name__)
            return 500, nova_error(500, "Image service unavailable")
        if response.status_code == 404:
            self.log.info("Image %s could not be found", image_id)
            return 400, nova_error(400, f"Image {image_id} could not be found.")
        if response.status_code != 200:
            message = error_message(response, "image service error")
            self.log.error("Error fetching image %s: %s", image_id, message)
            return 500, nova_error(500, f"Error fetching image {image_id}: {message}")
        # 2. pick a host, 3. build there
        try:
            with self.kit.span(F.OP_RPC_CALL_SCHEDULE, rpc_attrs("scheduler"), client=True):
                dest = self.rpc.call(
                    self._scheduler_topic,
                    "select_destinations",
                    timeout=self.timings.scheduler_timeout,
                    request_spec={"instance_uuid": instance_uuid, "flavor": flavor},
                )
            host = str(dest["host"])
            with self.kit.span(F.OP_RPC_CALL_BUILD, rpc_attrs("compute", host), client=True):
                result = self.rpc.call(
                    self._topic + host,
                    "build_and_run_instance",
                    timeout=self.timings.build_timeout,
                    instance={"uuid": instance_uuid, "name": name, "image": image_id},
                )
        except MessagingTimeout as exc:
            self.log.error("[instance: %s] %s", instance_uuid, exc)
            return 504, nova_error(504, str(exc))
        except RemoteError as exc:
            status = _STATUS_FOR_REMOTE.get(exc.exc_type, 500)
            self.log.error("[instance: %s] %s", instance_uuid, exc.message or exc.exc_type)
            return status, nova_error(status, exc.message or exc.exc_type)
        server = {
            "id": instance_uuid,
            "name": name,
            "status": "ACTIVE",
            "tenant_id": ctx.project_id if ctx else None,
            "user_id": ctx.user_id if ctx else None,
            "image": {"id": image_id},
            "flavor": {"id": flavor},
            "OS-EXT-SRV-ATTR:host": result.get("host"),
            "port_id": result.get("port_id"),
            "volume_id": result.get("volume_id"),
        }
        self.servers[instance_uuid] = server
        self.log.info("[instance: %s] Server %s created on %s", instance_uuid, name, host)
        return 202, {"server": {"id": instance_uuid, "name": name}}


# -- the cloud ----------------------------------------------------------------
