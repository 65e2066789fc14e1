"""Who is calling a route of the query API, once a policy rule lets them in.

Each route names the rule it needs through its ``who`` parameter: :data:`Reader`
(traces, logs, names, analysis, error groups, the UI), :data:`MetricsReader`
(``/metrics``) or :data:`AuditReader` (the audit log). The app's
:class:`~crosstrace.server.auth.access.Access` is ``app.state.access``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from crosstrace.server.auth.access import IDENTITY_STATE, KEYSTONE_HEADER, Access
from crosstrace.server.auth.identities import Identity
from crosstrace.server.auth.policy import AUDIT, INGEST, METRICS, READ

__all__ = ["AuditReader", "MetricsReader", "Reader", "caller_dependency"]


def caller_dependency(*rules: str) -> Callable[[Request], Identity]:
    """A FastAPI dependency: the caller's identity once it passes one of *rules*
    (401 without valid credentials, 403 when every rule refuses). The app's
    :class:`Access` is ``app.state.access``; with the ingest rule among *rules*,
    an ingest token is recognised too."""
    if not rules:
        raise ValueError("name at least one rule")
    with_ingest = INGEST in rules

    def caller(request: Request) -> Identity:
        access: Access = request.app.state.access
        authorization = request.headers.get("authorization")
        keystone = request.headers.get(KEYSTONE_HEADER)
        who = access.identify(authorization, keystone)
        if who is None and with_ingest:
            who = access.identify(authorization, keystone, ingest=True)
        if who is None:
            access.refused += 1
            raise HTTPException(
                status_code=401,
                detail="a valid token is required (Authorization: Bearer ... or X-Auth-Token)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        setattr(request.state, IDENTITY_STATE, who)
        if not any(access.allows(rule, who) for rule in rules):
            access.refused += 1
            raise HTTPException(
                status_code=403, detail=f"{who.name} may not do this ({' or '.join(rules)})"
            )
        return who

    return caller


#: The caller, once it passes the read rule (traces, logs, names, analysis, UI).
Reader = Annotated[Identity, Depends(caller_dependency(READ))]
#: The caller, once it passes the metrics rule.
MetricsReader = Annotated[Identity, Depends(caller_dependency(METRICS))]
#: The caller, once it passes the audit rule.
AuditReader = Annotated[Identity, Depends(caller_dependency(AUDIT))]
