"""Keystone tokens as crosstrace identities (``serve --keystone-url``).

A request's ``X-Auth-Token`` is validated against Keystone's
``GET /v3/auth/tokens`` with keystoneauth1, authenticated as crosstrace's own
service user. The answer is cached, keyed by the token's SHA-256, for a short
time (:data:`DEFAULT_CACHE_TTL_S`, so a revoked token stops working within it)
and for a bounded number of tokens (:data:`DEFAULT_CACHE_SIZE`, least recently
used dropped first). Refusals are cached too, for a shorter time, so a flood of
bad tokens does not become a flood of Keystone calls.

Roles and scope:

- the token's scope is the crosstrace scope: a project-scoped token reads its
  project, a domain-scoped token its domain, a system-scoped token the cloud;
- ``reader`` and ``member`` on that scope give crosstrace ``reader``; ``admin``
  gives ``reader`` and ``sensitive`` in the scope, and crosstrace ``admin``
  (cloud-wide) only on the system scope or the cloud's admin project
  (``is_admin_project``); the roles named in :data:`DEFAULT_ROLE_MAP` or the
  operator's map add crosstrace roles one for one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from crosstrace.server.auth.identities import (
    ROLE_ADMIN,
    ROLE_INGEST,
    ROLE_METRICS,
    ROLE_READER,
    ROLE_SENSITIVE,
    Identity,
)
from crosstrace.server.auth.tokens import MAX_TOKEN_LENGTH, hash_token
from crosstrace.server.scope import Scope

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_CACHE_TTL_S",
    "DEFAULT_ROLE_MAP",
    "KeystoneValidator",
    "identity_from_token",
]

log = logging.getLogger(__name__)

#: Seconds a validated token is trusted without asking Keystone again.
DEFAULT_CACHE_TTL_S: Final = 30.0
#: Seconds a refused token is remembered.
REFUSED_TTL_S: Final = 5.0
#: Tokens remembered at most.
DEFAULT_CACHE_SIZE: Final = 4096
#: Keystone role name -> crosstrace roles, within the token's scope.
DEFAULT_ROLE_MAP: Final[Mapping[str, frozenset[str]]] = {
    "reader": frozenset({ROLE_READER}),
    "member": frozenset({ROLE_READER}),
    "admin": frozenset({ROLE_READER, ROLE_SENSITIVE}),
    "crosstrace_sensitive": frozenset({ROLE_SENSITIVE}),
    "crosstrace_metrics": frozenset({ROLE_METRICS}),
    "crosstrace_ingest": frozenset({ROLE_INGEST}),
}


def identity_from_token(
    body: Mapping[str, Any], role_map: Mapping[str, frozenset[str]] = DEFAULT_ROLE_MAP
) -> Identity | None:
    """The identity of a validated Keystone token body (``token`` of the
    answer), or ``None`` when it grants nothing here (unscoped, no known role)."""
    names = {str(r.get("name", "")) for r in body.get("roles") or () if isinstance(r, dict)}
    roles: set[str] = set()
    for name in names:
        roles |= role_map.get(name, frozenset())
    user = body.get("user") or {}
    user_id = str(user.get("id") or "") or None
    label = str(user.get("name") or user_id or "keystone")
    project = body.get("project")
    domain = body.get("domain")
    system = body.get("system")
    if isinstance(system, dict) and system.get("all"):
        scope = Scope.ALL
        if "admin" in names:
            roles.add(ROLE_ADMIN)
    elif isinstance(project, dict) and project.get("id"):
        if "admin" in names and body.get("is_admin_project"):
            scope = Scope.ALL
            roles.add(ROLE_ADMIN)
        else:
            scope = Scope(projects=frozenset({str(project["id"])}))
    elif isinstance(domain, dict) and domain.get("id"):
        scope = Scope(domains=frozenset({str(domain["id"])}))
    else:
        return None  # unscoped: no project, domain or system
    if not roles:
        return None
    return Identity(f"keystone:{label}", frozenset(roles), scope, "keystone", user_id)


class KeystoneValidator:
    """Validates Keystone tokens through a keystoneauth1 session, with a cache."""

    def __init__(
        self,
        auth_url: str,
        *,
        username: str,
        password: str,
        project_name: str | None = "service",
        user_domain_id: str = "default",
        project_domain_id: str = "default",
        system_scope: str | None = None,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
        role_map: Mapping[str, frozenset[str]] = DEFAULT_ROLE_MAP,
        clock: Callable[[], float] = time.monotonic,
        session: Any = None,
    ) -> None:
        """The service user (*username*, *password*) authenticates scoped to
        *project_name*, or to the system with *system_scope* (``"all"``); it needs
        the right to validate tokens (Keystone's ``service`` role, or ``reader``
        on the system). *session*: a keystoneauth1 session to use instead."""
        if cache_ttl_s < 0 or cache_size < 1:
            raise ValueError("cache_ttl_s must be >= 0 and cache_size >= 1")
        self.auth_url = auth_url.rstrip("/")
        if session is None:
            from keystoneauth1 import session as ks_session
            from keystoneauth1.identity import v3

            scope: dict[str, Any] = (
                {"system_scope": system_scope}
                if system_scope
                else {"project_name": project_name, "project_domain_id": project_domain_id}
            )
            plugin = v3.Password(
                auth_url=self.auth_url + "/v3",
                username=username,
                password=password,
                user_domain_id=user_domain_id,
                **scope,
            )
            session = ks_session.Session(auth=plugin)
        self.session = session
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self.role_map = role_map
        self.clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Identity | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0

    def validate(self, token: str) -> Identity | None:
        """The identity of *token*, or ``None`` (invalid, expired, revoked, no role
        here, or Keystone unreachable)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        key = hash_token(token)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
        identity, cacheable = self._ask(token)
        if cacheable:
            ttl = self.cache_ttl_s if identity is not None else min(self.cache_ttl_s, REFUSED_TTL_S)
            with self._lock:
                self._cache[key] = (now + ttl, identity)
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return identity

    def _ask(self, token: str) -> tuple[Identity | None, bool]:
        """Keystone's answer for *token*, and whether it may be cached (an outage
        is not: the next request asks again)."""
        self.calls += 1
        try:
            resp = self.session.get(
                self.auth_url + "/v3/auth/tokens",
                headers={"X-Subject-Token": token},
                authenticated=True,
                raise_exc=False,
            )
        except Exception as exc:  # keystoneauth1 connection and auth failures
            self.failures += 1
            log.warning("keystone token validation failed: %s", exc)
            return None, False
        if resp.status_code in (401, 403, 404):
            return None, True
        if resp.status_code != 200:
            self.failures += 1
            log.warning("keystone answered %s to a token validation", resp.status_code)
            return None, False
        try:
            body = resp.json()["token"]
        except (ValueError, KeyError, TypeError):
            self.failures += 1
            return None, False
        return identity_from_token(body, self.role_map), True
