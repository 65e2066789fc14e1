"""The image service (ASGI): ``GET /v2/images/{id}`` from a fixed catalogue."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from crosstrace.demo import faults as F
from crosstrace.demo.faults import FaultKind
from crosstrace.demo.services.base import (
    ROOT_VOLUME_GB,
    ImageNotFound,
    Service,
    StoreUnavailable,
)

__all__ = ["IMAGES", "ImageService"]


_NS = uuid.UUID("0b8f9a52-8f0e-4b7e-a1f6-5c7f3f8e2d11")

#: The image service's catalogue: id → name.
IMAGES: dict[str, str] = {
    uuid.uuid5(_NS, name).hex: name
    for name in ("cirros-0.6.2", "ubuntu-24.04", "debian-12", "fedora-41", "rocky-9")
}


class ImageService(Service):
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
