"""Who is calling, and may they: the request side of access control.

:class:`Access` turns a request's credentials into an
:class:`~crosstrace.server.auth.identities.Identity`:

- no auth configured at all (loopback, ``--no-auth`` or no tokens): everyone is
  the cloud-wide anonymous administrator, as before;
- ``Authorization: Bearer <token>``: an ``--auth-file`` identity, else a legacy
  ``--api-token`` (cloud-wide reader with ``sensitive`` and ``metrics``) or
  ``--ingest-token`` (``ingest``);
- ``X-Auth-Token: <keystone token>`` with ``--keystone-url``: the Keystone token's
  roles and scope (:mod:`.keystone`).

It then checks a policy rule (:mod:`.policy`) and records the decision in the
audit log. Sensitive attribute values are masked for identities without the
``sensitive`` rule (:meth:`Access.masker`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from crosstrace.server.auth.audit import Auditor
from crosstrace.server.auth.identities import (
    ANONYMOUS_ADMIN,
    ROLE_ADMIN,
    ROLE_INGEST,
    ROLE_METRICS,
    ROLE_READER,
    ROLE_SENSITIVE,
    Identity,
    IdentityFile,
)
from crosstrace.server.auth.policy import INGEST, SENSITIVE, Policy
from crosstrace.server.auth.tokens import TokenSet, bearer_token
from crosstrace.server.redaction import mask
from crosstrace.server.scope import Scope

__all__ = [
    "DEFAULT_SENSITIVE_ATTRIBUTES",
    "KEYSTONE_HEADER",
    "Access",
    "Masker",
    "TokenValidator",
]

log = logging.getLogger(__name__)

#: Header carrying a Keystone token.
KEYSTONE_HEADER: Final = "x-auth-token"
#: Attribute values hidden from identities without the ``sensitive`` role.
DEFAULT_SENSITIVE_ATTRIBUTES: Final = frozenset(
    {
        "db.query.text",
        "db.statement",
        "exception.stacktrace",
        "host.name",
        "server.address",
        "net.peer.name",
        "url.full",
    }
)
# A legacy --api-token could do everything the API offered: it still can.
_LEGACY_API: Final = Identity(
    "api-token",
    frozenset({ROLE_READER, ROLE_SENSITIVE, ROLE_METRICS, ROLE_ADMIN}),
    Scope.ALL,
    "token",
)
_LEGACY_INGEST: Final = Identity("ingest-token", frozenset({ROLE_INGEST}), Scope.ALL, "token")


class TokenValidator(Protocol):
    """Validates an external (Keystone) token: its identity, or ``None``."""

    def validate(self, token: str) -> Identity | None: ...


class Masker:
    """Masks the values of sensitive attribute keys in response dictionaries."""

    __slots__ = ("keys",)

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys

    def attributes(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of *attributes* with sensitive values masked."""
        keys = self.keys
        if not keys or keys.isdisjoint(attributes):
            return dict(attributes)
        return {
            k: (mask(v if isinstance(v, str) else str(v)) if k in keys else v)
            for k, v in attributes.items()
        }

    def items(self, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Events or links: each with its ``attributes`` masked."""
        out = []
        for item in items:
            copy = dict(item)
            attrs = copy.get("attributes")
            if isinstance(attrs, Mapping):
                copy["attributes"] = self.attributes(attrs)
            out.append(copy)
        return out


NO_MASK: Final = Masker(frozenset())


class Access:
    """Identifies callers, checks rules, audits; one per server."""

    def __init__(
        self,
        *,
        identities: IdentityFile | None = None,
        api_tokens: TokenSet | None = None,
        ingest_tokens: TokenSet | None = None,
        policy: Policy | None = None,
        keystone: TokenValidator | None = None,
        auditor: Auditor | None = None,
        sensitive_attributes: Iterable[str] = DEFAULT_SENSITIVE_ATTRIBUTES,
    ) -> None:
        self.identities = identities
        self.api_tokens = api_tokens or TokenSet()
        self.ingest_tokens = ingest_tokens or TokenSet()
        self.policy = policy or Policy()
        self.keystone = keystone
        self.auditor = auditor or Auditor(None)
        self.masker_for_all = Masker(frozenset(sensitive_attributes))
        self.refused = 0

    @property
    def api_open(self) -> bool:
        """Whether the query API needs no credentials (auth off)."""
        return self.identities is None and not self.api_tokens and self.keystone is None

    @property
    def ingest_open(self) -> bool:
        return self.identities is None and not self.ingest_tokens and self.keystone is None

    def identify(
        self, authorization: str | None, keystone_token: str | None, *, ingest: bool = False
    ) -> Identity | None:
        """The caller of a request with these header values, or ``None``."""
        if self.ingest_open if ingest else self.api_open:
            return ANONYMOUS_ADMIN  # auth is off: a token, if any, means nothing
        token = bearer_token(authorization)
        if token is not None:
            who = self.identities.lookup(token) if self.identities is not None else None
            if who is not None:
                return who
            legacy = self.ingest_tokens if ingest else self.api_tokens
            if legacy.check(token):
                return _LEGACY_INGEST if ingest else _LEGACY_API
            return None
        if keystone_token and self.keystone is not None:
            return self.keystone.validate(keystone_token)
        return None

    def allows(self, rule: str, identity: Identity) -> bool:
        return self.policy.allows(rule, identity)

    def may_ingest_as(self, identity: Identity) -> bool:
        return self.allows(INGEST, identity)

    def masker(self, identity: Identity) -> Masker:
        """What to mask in responses to *identity*."""
        return NO_MASK if self.allows(SENSITIVE, identity) else self.masker_for_all

    def audit(self, identity: Identity | None, action: str, target: str, outcome: int) -> None:
        if identity is None:
            self.auditor.record("-", "-", action, target, "-", outcome)
        else:
            self.auditor.record(
                identity.name, identity.source, action, target, identity.scope.describe(), outcome
            )


def header_getter(headers: Iterable[tuple[bytes, bytes]]) -> Callable[[bytes], str | None]:
    """A lookup of raw ASGI headers by lowercase name (first value)."""
    table: dict[bytes, str] = {}
    for name, value in headers:
        table.setdefault(bytes(name).lower(), bytes(value).decode("latin-1"))
    return table.get


#: Paths that are not audited (health checks, the API's own documentation).
UNAUDITED_PATHS: Final = frozenset({"/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
#: Request state key under which the API keeps the caller's identity.
IDENTITY_STATE: Final = "crosstrace_identity"

_Scope = dict[str, Any]


class AuditMiddleware:
    """Plain ASGI middleware recording every answered request (who, what, status)."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUDITED_PATHS:
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope.get("state") or {}
            who = state.get(IDENTITY_STATE) if isinstance(state, dict) else None
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + ("?" + query if query else "")
            self.access.audit(
                who if isinstance(who, Identity) else None,
                f"{scope.get('method', 'GET')} {scope['path']}",
                target,
                status,
            )
