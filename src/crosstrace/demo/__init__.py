"""``crosstrace demo``: a miniature cloud with injected faults, traced end to end.

A compute API, image, network and volume services (real HTTP servers on
loopback) and scheduler and compute workers (reached over kombu RPC) boot
servers; a seeded fault injector makes some boots fail for documented reasons,
and the ground truth of every fault is written to a JSON file. Everything is
instrumented only through crosstrace's public API.
"""
