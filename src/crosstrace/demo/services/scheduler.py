"""The scheduler worker (RPC): ``select_destinations`` picks a compute host."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from crosstrace.demo import faults as F
from crosstrace.demo.faults import FaultKind
from crosstrace.demo.services.base import (
    Service,
)

__all__ = ["COMPUTE_HOSTS", "SchedulerService"]


#: Hosts the scheduler chooses between; one compute worker each.
COMPUTE_HOSTS = ("compute-1", "compute-2")


class SchedulerService(Service):
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
