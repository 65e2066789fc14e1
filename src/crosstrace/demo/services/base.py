"""The miniature cloud: compute API, image, network and volume services, and the
scheduler and compute workers, wired like their OpenStack namesakes.

Boot flow (``POST /v2.1/servers``)::

    client ─HTTP─▶ compute-api ─HTTP─▶ image         GET /v2/images/{id}
                        │
                        ├─RPC call─▶ scheduler        select_destinations → host
                        └─RPC call─▶ compute (host) ─HTTP─▶ network  POST /v2.0/ports
                                                    └─HTTP─▶ volume   POST /v3/volumes
                                                                        (SQL: capacity
                                                                         query, insert)

compute-api and volume are WSGI apps (threaded ``wsgiref`` server), image and
network are ASGI apps (uvicorn), so both middlewares are exercised. RPC runs over
kombu: ``memory://`` (in-process) by default, RabbitMQ with an ``amqp://`` URL.
The volume service keeps its volumes in its own SQL database through SQLAlchemy:
SQLite by default, PostgreSQL or MariaDB by URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosstrace.demo import faults as F
from crosstrace.demo.faults import FaultInjector, FaultKind
from crosstrace.demo.groundtruth import GroundTruth
from crosstrace.demo.identity import IDENTITIES
from crosstrace.demo.instrument import LogRouter, ServiceKit, file_handler
from crosstrace.demo.rpc import MessagingTimeout, RemoteError, RpcClient, RpcServer
from crosstrace.demo.servers import HttpServer, serve_asgi, serve_wsgi

__all__ = ["IMAGES", "RESERVED_SERVER_NAME", "Cloud", "CloudConfig", "Timings"]

log = logging.getLogger(__name__)

_NS = uuid.UUID("0b8f9a52-8f0e-4b7e-a1f6-5c7f3f8e2d11")

#: The image service's catalogue: id → name.
IMAGES: dict[str, str] = {
    uuid.uuid5(_NS, name).hex: name
    for name in ("cirros-0.6.2", "ubuntu-24.04", "debian-12", "fedora-41", "rocky-9")
}
#: A server name whose root volume already exists in every project (seeded into
#: the volume DB), so booting a server with this name violates the volume
#: table's UNIQUE constraint: the ``volume_duplicate`` fault.
RESERVED_SERVER_NAME = "golden"
#: Hosts the scheduler chooses between; one compute worker each.
COMPUTE_HOSTS = ("compute-1", "compute-2")
#: Ports each project may have; the ``network_quota`` fault makes it look used up.
PORT_QUOTA = 10_000
#: Root volume size of every server, in GiB.
ROOT_VOLUME_GB = 1

# Error types the compute API maps to HTTP statuses.
_STATUS_FOR_REMOTE = {"OverQuota": 403, "ReadTimeout": 504, "ConnectTimeout": 504}


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

_REASONS = {
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


def _wsgi_json(start_response: Any, status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} {_REASONS.get(status, 'Unknown')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


def _read_json(environ: dict[str, Any]) -> Any:
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


def _identity_headers_from(ctx: Any) -> dict[str, str]:
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


def _rpc_attrs(service: str, host: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"rpc.system": "oslo.messaging", "rpc.service": service}
    if host:
        attrs["server.address"] = host
    return attrs


def _nova_error(status: int, message: str) -> dict[str, Any]:
    key = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 504: "computeFault"}.get(
        status, "computeFault"
    )
    return {key: {"code": status, "message": message}}


class _Service:
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


class ImageService(_Service):
    """Glance-like: ``GET /v2/images/{id}``."""

    def app(self) -> Callable[..., Any]:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def show(request: Any) -> Any:
            ctx = self.seen()
            image_id = str(request.path_params["image_id"])
            try:
                with self.kit.span(F.OP_GET_IMAGE, {"image.id": image_id}):
                    if self.fault(ctx) is FaultKind.IMAGE_500:
                        raise StoreUnavailable("Image store backend is unavailable.")
                    name = IMAGES.get(image_id)
                    if name is None:
                        raise ImageNotFound(f"Image {image_id} could not be found.")
            except ImageNotFound as exc:
                self.log.info("Image %s not found", image_id)
                return JSONResponse({"message": str(exc), "code": 404}, status_code=404)
            except StoreUnavailable as exc:
                self.log.error("Error fetching image %s: %s", image_id, exc)
                return JSONResponse({"message": str(exc), "code": 500}, status_code=500)
            self.log.info("Image %s (%s) shown", image_id, name)
            return JSONResponse(
                {"id": image_id, "name": name, "status": "active", "min_disk": ROOT_VOLUME_GB}
            )

        return Starlette(routes=[Route("/v2/images/{image_id}", show, methods=["GET"])])


# -- network service (ASGI) -------------------------------------------------


class NetworkService(_Service):
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


def _sqlalchemy_url(url: str) -> str:
    """Pick a driver SQLAlchemy can use from a bare URL (psycopg 3 for PostgreSQL)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    if url.startswith(("mariadb://", "mysql://")):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    return url


class VolumeService(_Service):
    """Cinder-like: ``POST /v3/volumes``, volumes kept in a SQL database."""

    def __init__(self, kit: ServiceKit, config: CloudConfig, db_url: str) -> None:
        super().__init__(kit, config)
        import sqlalchemy as sa

        self.db_url = _sqlalchemy_url(db_url)
        kwargs: dict[str, Any] = {}
        if self.db_url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 10
        self.engine = sa.create_engine(self.db_url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":

            @sa.event.listens_for(self.engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                # SQLite has no sleep(); the slow query needs one.
                dbapi_conn.create_function("sleep", 1, _sqlite_sleep)
                dbapi_conn.execute("PRAGMA journal_mode=WAL")

        kit.instrument_engine(self.engine)
        self.metadata = sa.MetaData()
        self.volumes = sa.Table(
            "demo_volumes",
            self.metadata,
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("project_id", sa.String(64), nullable=False),
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("size_gb", sa.Integer, nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.UniqueConstraint("project_id", "name", name="uniq_demo_volumes_project_name"),
        )

    def create_schema(self) -> None:
        """Create the table and the reserved root volumes (idempotent)."""
        import sqlalchemy as sa

        self.metadata.create_all(self.engine)
        name = f"{RESERVED_SERVER_NAME}-root"
        with self.engine.begin() as conn:
            existing = {
                row[0]
                for row in conn.execute(
                    sa.select(self.volumes.c.project_id).where(self.volumes.c.name == name)
                )
            }
            for identity in IDENTITIES:
                if identity.project_id not in existing:
                    conn.execute(
                        self.volumes.insert().values(
                            id=str(uuid.uuid4()),
                            project_id=identity.project_id,
                            name=name,
                            size_gb=ROOT_VOLUME_GB,
                            status="available",
                            created_at=time.time(),
                        )
                    )

    def _sleep_sql(self) -> str:
        if self.dialect == "postgresql":
            return "SELECT pg_sleep(:seconds)"
        if self.dialect in ("mysql", "mariadb"):
            return "SELECT SLEEP(:seconds)"
        return "SELECT sleep(:seconds)"

    def app(self) -> Callable[..., Any]:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path != "/v3/volumes":
                return _wsgi_json(start_response, 404, {"itemNotFound": {"code": 404}})
            if environ.get("REQUEST_METHOD") != "POST":
                return _wsgi_json(start_response, 405, {"message": "method not allowed"})
            return self.create(environ, start_response)

        return app

    def create(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        import sqlalchemy as sa
        from sqlalchemy.exc import IntegrityError

        ctx = self.seen()
        body = _read_json(environ)
        try:
            name = str(body["volume"]["name"])
            size = int(body["volume"].get("size", ROOT_VOLUME_GB))
        except (TypeError, KeyError, ValueError):
            return _wsgi_json(start_response, 400, {"badRequest": {"message": "invalid body"}})
        project = (ctx.project_id if ctx else None) or "-"
        with (
            self.kit.span(F.OP_VOLUME_QUERY, {"volume.project_id": project}),
            self.engine.connect() as conn,
        ):
            if self.fault(ctx) is FaultKind.VOLUME_DB_TIMEOUT:
                # Injected: the capacity query waits on a slow database.
                conn.execute(sa.text(self._sleep_sql()), {"seconds": self.timings.slow_query})
            used = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(self.volumes.c.size_gb), 0)).where(
                    self.volumes.c.project_id == project
                )
            ).scalar_one()
        volume_id = str(uuid.uuid4())
        try:
            with (
                self.kit.span(F.OP_VOLUME_INSERT, {"volume.name": name}),
                self.engine.begin() as conn,
            ):
                conn.execute(
                    self.volumes.insert().values(
                        id=volume_id,
                        project_id=project,
                        name=name,
                        size_gb=size,
                        status="available",
                        created_at=time.time(),
                    )
                )
        except IntegrityError as exc:
            message = f"Failed to create volume: duplicate volume name {name!r}"
            # Logged at WARNING only: the callers log the ERROR lines.
            self.log.warning("%s (%s)", message, type(exc).__name__)
            return _wsgi_json(start_response, 500, {"computeFault": {"message": message}})
        self.log.info(
            "Created volume %s (%s, %d GiB, project uses %s GiB)", volume_id, name, size, used
        )
        return _wsgi_json(
            start_response,
            202,
            {"volume": {"id": volume_id, "name": name, "size": size, "status": "available"}},
        )


def _sqlite_sleep(seconds: float) -> int:
    time.sleep(float(seconds))
    return 0


# -- scheduler worker (RPC) -------------------------------------------------


class SchedulerService(_Service):
    """nova-scheduler-like: ``select_destinations`` picks a compute host."""

    def select_destinations(self, request_spec: dict[str, Any]) -> dict[str, Any]:
        ctx = self.seen()
        with self.kit.span(F.OP_SELECT_DESTINATIONS, {"scheduler.hosts": len(COMPUTE_HOSTS)}):
            if self.fault(ctx) is FaultKind.SLOW_SCHEDULER:
                # Injected: the placement query behind the filters is slow.
                self.log.info("Waiting for host candidates from placement")
                time.sleep(self.timings.slow_scheduler)
            key = str(request_spec.get("instance_uuid", ""))
            digest = hashlib.sha256(key.encode()).digest()
            host = COMPUTE_HOSTS[digest[0] % len(COMPUTE_HOSTS)]
        self.log.info("Selected host %s for instance %s", host, key)
        return {"host": host}


# -- compute worker (RPC) ---------------------------------------------------


class ComputeService(_Service):
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
            headers = _identity_headers_from(ctx)
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
                message = _error_message(vresp, "Failed to create volume")
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


def _error_message(response: Any, default: str) -> str:
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


class ComputeApiService(_Service):
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
                status, body = self.create(_read_json(environ))
                return _wsgi_json(start_response, status, body)
            if path.startswith(prefix + "/") and method == "GET":
                status, body = self.show(path[len(prefix) + 1 :])
                return _wsgi_json(start_response, status, body)
            return _wsgi_json(start_response, 404, _nova_error(404, "not found"))

        return app

    def show(self, server_id: str) -> tuple[int, dict[str, Any]]:
        ctx = self.seen()
        server = self.servers.get(server_id)
        if server is None or (ctx is not None and server["tenant_id"] != ctx.project_id):
            return 404, _nova_error(404, f"Instance {server_id} could not be found.")
        return 200, {"server": server}

    def create(self, body: Any) -> tuple[int, dict[str, Any]]:
        ctx = self.seen()
        try:
            spec = body["server"]
            name = str(spec["name"])
            image_id = str(spec["imageRef"])
            flavor = str(spec.get("flavorRef", "1"))
        except (TypeError, KeyError):
            return 400, _nova_error(400, "Invalid server body")
        instance_uuid = str(uuid.uuid4())
        headers = _identity_headers_from(ctx)
        # 1. the image must exist
        try:
            response = self._session().get(
                f"{self.image_url}/v2/images/{image_id}",
                headers=headers,
                timeout=self.timings.http_timeout,
            )
        except Exception as exc:
            self.log.error("Error contacting the image service: %s", type(exc).__name__)
            return 500, _nova_error(500, "Image service unavailable")
        if response.status_code == 404:
            self.log.info("Image %s could not be found", image_id)
            return 400, _nova_error(400, f"Image {image_id} could not be found.")
        if response.status_code != 200:
            message = _error_message(response, "image service error")
            self.log.error("Error fetching image %s: %s", image_id, message)
            return 500, _nova_error(500, f"Error fetching image {image_id}: {message}")
        # 2. pick a host, 3. build there
        try:
            with self.kit.span(F.OP_RPC_CALL_SCHEDULE, _rpc_attrs("scheduler"), client=True):
                dest = self.rpc.call(
                    self._scheduler_topic,
                    "select_destinations",
                    timeout=self.timings.scheduler_timeout,
                    request_spec={"instance_uuid": instance_uuid, "flavor": flavor},
                )
            host = str(dest["host"])
            with self.kit.span(F.OP_RPC_CALL_BUILD, _rpc_attrs("compute", host), client=True):
                result = self.rpc.call(
                    self._topic + host,
                    "build_and_run_instance",
                    timeout=self.timings.build_timeout,
                    instance={"uuid": instance_uuid, "name": name, "image": image_id},
                )
        except MessagingTimeout as exc:
            self.log.error("[instance: %s] %s", instance_uuid, exc)
            return 504, _nova_error(504, str(exc))
        except RemoteError as exc:
            status = _STATUS_FOR_REMOTE.get(exc.exc_type, 500)
            self.log.error("[instance: %s] %s", instance_uuid, exc.message or exc.exc_type)
            return status, _nova_error(status, exc.message or exc.exc_type)
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

#: Demo service name → logger name (OpenStack's own, so the logs read familiar).
LOGGERS = {
    F.SVC_COMPUTE_API: "nova.api.openstack.compute.servers",
    F.SVC_IMAGE: "glance.api.v2.images",
    F.SVC_NETWORK: "neutron.api.v2.base",
    F.SVC_VOLUME: "cinder.api.v3.volumes",
    F.SVC_SCHEDULER: "nova.scheduler.manager",
    F.SVC_COMPUTE: "nova.compute.manager",
}


class Cloud:
    """Starts and stops every service of the miniature cloud."""

    def __init__(
        self,
        config: CloudConfig,
        kit_factory: Callable[[str, str, Path, LogRouter], ServiceKit] = ServiceKit,
    ) -> None:
        self.config = config
        if not config.namespace:
            config.namespace = f"demo-{uuid.uuid4().hex[:8]}."
        self._kit_factory = kit_factory
        self.kits: dict[str, ServiceKit] = {}
        self.http: dict[str, HttpServer] = {}
        self._rpc_servers: list[RpcServer] = []
        self._rpc_client: RpcClient | None = None
        self._stop = threading.Event()
        self._router = LogRouter()
        self._router_loggers: list[logging.Logger] = []
        self._saved_level: int | None = None
        self.volume: VolumeService | None = None
        self.compute_api: ComputeApiService | None = None

    @property
    def log_dir(self) -> Path:
        return self.config.data_dir / "logs"

    @property
    def compute_url(self) -> str:
        return self.http[F.SVC_COMPUTE_API].url

    @property
    def log_files(self) -> dict[str, Path]:
        return {name: kit.log_path for name, kit in self.kits.items()}

    def _kit(self, name: str) -> ServiceKit:
        kit = self._kit_factory(name, LOGGERS[name], self.log_dir, self._router)
        self.kits[name] = kit
        return kit

    def start(self) -> None:
        """Start every service; on failure, stop what was started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._router.fallback = file_handler(self.log_dir / "demo.log")
        self._router.fallback.setLevel(logging.INFO)
        # Library records (crosstrace's integrations log each callee's request id
        # at debug, like keystoneauth) go to the file of the service that logged them.
        for name in ("crosstrace", "sqlalchemy", "uvicorn", "kombu", "amqp"):
            logger = logging.getLogger(name)
            logger.addHandler(self._router)
            self._router_loggers.append(logger)
        integrations = logging.getLogger("crosstrace.integrations")
        self._saved_level = integrations.level
        integrations.setLevel(logging.DEBUG)
        ns = cfg.namespace
        exchange = f"{ns}rpc"

        image = ImageService(self._kit(F.SVC_IMAGE), cfg)
        self.http[F.SVC_IMAGE] = serve_asgi(image.kit.asgi(image.app()), F.SVC_IMAGE)
        network = NetworkService(self._kit(F.SVC_NETWORK), cfg)
        self.http[F.SVC_NETWORK] = serve_asgi(network.kit.asgi(network.app()), F.SVC_NETWORK)

        db_url = cfg.volume_db_url or f"sqlite:///{cfg.data_dir / 'volume.sqlite3'}"
        volume = VolumeService(self._kit(F.SVC_VOLUME), cfg, db_url)
        volume.create_schema()
        self.volume = volume
        self.http[F.SVC_VOLUME] = serve_wsgi(volume.kit.wsgi(volume.app()), F.SVC_VOLUME)

        scheduler = SchedulerService(self._kit(F.SVC_SCHEDULER), cfg)
        self._serve_rpc(scheduler, f"{ns}scheduler", exchange, ("select_destinations",))
        compute_kit = self._kit(F.SVC_COMPUTE)
        for host in COMPUTE_HOSTS:
            worker = ComputeService(
                compute_kit,
                cfg,
                host,
                self.http[F.SVC_NETWORK].url,
                self.http[F.SVC_VOLUME].url,
                self._stop,
            )
            self._serve_rpc(worker, f"{ns}compute.{host}", exchange, ("build_and_run_instance",))

        api_kit = self._kit(F.SVC_COMPUTE_API)
        client = RpcClient(
            cfg.broker_url, exchange, publish=api_kit.rpc_publish, name="rpc-client-compute-api"
        )
        client.start()
        self._rpc_client = client
        api = ComputeApiService(api_kit, cfg, self.http[F.SVC_IMAGE].url, client)
        self.compute_api = api
        self.http[F.SVC_COMPUTE_API] = serve_wsgi(api.kit.wsgi(api.app()), F.SVC_COMPUTE_API)

    def _serve_rpc(
        self, endpoint: _Service, topic: str, exchange: str, methods: tuple[str, ...]
    ) -> None:
        server = RpcServer(
            self.config.broker_url,
            exchange,
            topic,
            endpoint,
            methods=methods,
            publish=endpoint.kit.rpc_publish,
            wrap_callback=endpoint.kit.rpc_callback,
            max_workers=16,
        )
        server.start()
        self._rpc_servers.append(server)

    def stop(self) -> None:
        """Stop every service (stuck workers are released) and close log files."""
        self._stop.set()
        for server in self.http.values():
            server.stop()
        if self._rpc_client is not None:
            self._rpc_client.stop()
        for rpc in self._rpc_servers:
            rpc.stop()
        if self.volume is not None:
            self.volume.engine.dispose()
        for logger in self._router_loggers:
            logger.removeHandler(self._router)
        self._router_loggers.clear()
        if self._router.fallback is not None:
            self._router.fallback.close()
            self._router.fallback = None
        if self._saved_level is not None:
            logging.getLogger("crosstrace.integrations").setLevel(self._saved_level)
            self._saved_level = None
        for kit in _unique(self.kits.values()):
            kit.close()


def _unique(kits: Iterable[ServiceKit]) -> list[ServiceKit]:
    out: list[ServiceKit] = []
    for kit in kits:
        if all(kit is not k for k in out):
            out.append(kit)
    return out
