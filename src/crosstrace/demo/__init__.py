"""``crosstrace demo``: a miniature cloud with injected faults, traced end to end.

A compute API, image, network and volume services (real HTTP servers on
loopback) and scheduler and compute workers (reached over oslo.messaging RPC) boot
servers; a seeded fault injector makes some boots fail for documented reasons,
and the ground truth of every fault is written to a JSON file. Everything is
instrumented only through crosstrace's public API.
"""

import warnings

# oslo.messaging (the demo's RPC) imports oslo.service, which imports eventlet,
# which warns on import that it is deprecated; the demo uses oslo.messaging's
# threading executor, so the warning is only noise on the demo's console.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
