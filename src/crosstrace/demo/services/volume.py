"""The volume service (WSGI): ``POST /v3/volumes`` into its own SQL database through
SQLAlchemy (SQLite by default, PostgreSQL or MariaDB by URL)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from crosstrace.demo import faults as F
from crosstrace.demo.faults import FaultKind
from crosstrace.demo.identity import IDENTITIES
from crosstrace.demo.instrument import ServiceKit
from crosstrace.demo.services.base import (
    ROOT_VOLUME_GB,
    CloudConfig,
    Service,
    read_json,
    wsgi_json,
)

__all__ = ["RESERVED_SERVER_NAME", "VolumeService"]


#: A server name whose root volume already exists in every project (seeded into
#: the volume DB), so booting a server with this name violates the volume
#: table's UNIQUE constraint: the ``volume_duplicate`` fault.
RESERVED_SERVER_NAME = "golden"


def _sqlalchemy_url(url: str) -> str:
    """Pick a driver SQLAlchemy can use from a bare URL (psycopg 3 for PostgreSQL)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    if url.startswith(("mariadb://", "mysql://")):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    return url


class VolumeService(Service):
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
                return wsgi_json(start_response, 404, {"itemNotFound": {"code": 404}})
            if environ.get("REQUEST_METHOD") != "POST":
                return wsgi_json(start_response, 405, {"message": "method not allowed"})
            return self.create(environ, start_response)

        return app

    def create(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        import sqlalchemy as sa
        from sqlalchemy.exc import IntegrityError

        ctx = self.seen()
        body = read_json(environ)
        try:
            name = str(body["volume"]["name"])
            size = int(body["volume"].get("size", ROOT_VOLUME_GB))
        except (TypeError, KeyError, ValueError):
            return wsgi_json(start_response, 400, {"badRequest": {"message": "invalid body"}})
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
            return wsgi_json(start_response, 500, {"computeFault": {"message": message}})
        self.log.info(
            "Created volume %s (%s, %d GiB, project uses %s GiB)", volume_id, name, size, used
        )
        return wsgi_json(
            start_response,
            202,
            {"volume": {"id": volume_id, "name": name, "size": size, "status": "available"}},
        )


def _sqlite_sleep(seconds: float) -> int:
    time.sleep(float(seconds))
    return 0


# -- scheduler worker (RPC) -------------------------------------------------
