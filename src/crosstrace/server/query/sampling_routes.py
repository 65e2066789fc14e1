"""``/api/v1/sampling`` and ``/api/v1/overhead``: central tracing settings.

* ``GET /api/v1/sampling``: every service's own settings (``_default`` too).
* ``GET /api/v1/sampling/{service}``: the settings a tracer of *service* uses
  (its own over ``_default``), with an ``ETag``; ``If-None-Match`` gives ``304``.
  Tracers read it with their ingest token (or an API token).
* ``PUT /api/v1/sampling/{service}``: set ``ratio``, ``budget``,
  ``rate_limit``, ``slow_threshold`` (``null`` unsets one); needs an API token
  (the admin role, once roles guard the API).
* ``POST /api/v1/overhead``: a tracer's report of what it spends.
* ``GET /api/v1/overhead``: budget against the reported overhead, per service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Request, Response
from fastapi.params import Depends

from crosstrace.server.sampling import SamplingRegistry, check_service, parse_settings

__all__ = ["sampling_router"]


def sampling_router(
    registry: SamplingRegistry,
    api_auth: Sequence[Depends],
    reader_auth: Sequence[Depends],
) -> APIRouter:
    """The routes; *api_auth* guards changes and listings, *reader_auth* (an
    ingest or API token) what tracers call."""
    router = APIRouter()

    def _service(name: str) -> str:
        try:
            return check_service(name)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    @router.get("/api/v1/sampling", dependencies=list(api_auth))
    def all_sampling() -> dict[str, Any]:
        """Every service's own settings; ``_default`` applies to the others."""
        return {"services": registry.all()}

    @router.get("/api/v1/sampling/{service}", dependencies=list(reader_auth))
    def service_sampling(
        service: str,
        response: Response,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Any:
        """The settings a tracer of *service* follows (ETag; 304 when unchanged)."""
        doc, etag = registry.effective(_service(service))
        if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
            return Response(status_code=304, headers={"ETag": etag})
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = "no-cache"
        return doc

    @router.put("/api/v1/sampling/{service}", dependencies=list(api_auth))
    def set_sampling(service: str, body: Annotated[Any, Body()]) -> dict[str, Any]:
        """Set a service's settings (``_default`` for every service without its own)."""
        name = _service(service)
        try:
            own = registry.update(name, parse_settings(body))
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        doc, _ = registry.effective(name)
        return {"service": name, "own": own, "settings": doc["settings"]}

    @router.post("/api/v1/overhead", status_code=204, dependencies=list(reader_auth))
    def report_overhead(body: Annotated[Any, Body()]) -> Response:
        """A tracer's report: overhead fraction, effective ratio, record fraction, drops."""
        try:
            registry.report(body)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return Response(status_code=204)

    @router.get("/api/v1/overhead", dependencies=list(api_auth))
    def overhead() -> dict[str, Any]:
        """Per service: the central budget beside the overhead its tracer reports."""
        return {"services": registry.overhead()}

    return router


def auth_either(*checks: Callable[[Request], None]) -> Callable[[Request], None]:
    """A dependency passing when any of *checks* passes (raises the last error)."""

    def check(request: Request) -> None:
        error: HTTPException | None = None
        for c in checks:
            try:
                c(request)
                return
            except HTTPException as exc:
                error = exc
        if error is not None:
            raise error

    return check
