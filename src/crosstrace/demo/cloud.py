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
network are ASGI apps (uvicorn), so both middlewares are exercised. RPC runs on
oslo.messaging with crosstrace's serializer and traced endpoints: its in-process
``fake://`` driver by default (``memory://``), RabbitMQ with an ``amqp://`` URL.
The volume service keeps its volumes in its own SQL database through SQLAlchemy:
SQLite by default, PostgreSQL or MariaDB by URL.

Each service has its module under :mod:`crosstrace.demo.services`; this module
wires them together and runs them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from crosstrace.demo import faults as F
from crosstrace.demo.instrument import LogRouter, ServiceKit, file_handler
from crosstrace.demo.rpc import RpcClient, RpcServer
from crosstrace.demo.servers import HttpServer, serve_asgi, serve_wsgi
from crosstrace.demo.services.base import CloudConfig, Service, Timings
from crosstrace.demo.services.compute import ComputeService
from crosstrace.demo.services.compute_api import ComputeApiService
from crosstrace.demo.services.image import IMAGES, ImageService
from crosstrace.demo.services.network import NetworkService
from crosstrace.demo.services.scheduler import COMPUTE_HOSTS, SchedulerService
from crosstrace.demo.services.volume import RESERVED_SERVER_NAME, VolumeService

__all__ = ["IMAGES", "RESERVED_SERVER_NAME", "Cloud", "CloudConfig", "Timings"]


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
        for name in ("crosstrace", "sqlalchemy", "uvicorn", "kombu", "amqp", "oslo_messaging"):
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
        client = RpcClient(cfg.broker_url, exchange, name="rpc-client-compute-api")
        client.start()
        self._rpc_client = client
        api = ComputeApiService(api_kit, cfg, self.http[F.SVC_IMAGE].url, client)
        self.compute_api = api
        self.http[F.SVC_COMPUTE_API] = serve_wsgi(api.kit.wsgi(api.app()), F.SVC_COMPUTE_API)

    def _serve_rpc(
        self, endpoint: Service, topic: str, exchange: str, methods: tuple[str, ...]
    ) -> None:
        server = RpcServer(
            self.config.broker_url,
            exchange,
            topic,
            endpoint,
            methods=methods,
            max_workers=16,
            tracer=endpoint.kit.tracer,
            service=endpoint.kit.name,
            scope=endpoint.kit.rpc_scope,
            name=topic,
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
