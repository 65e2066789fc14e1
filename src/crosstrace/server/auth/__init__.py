"""Access control of the backend: tokens, identities, roles (oslo.policy), scopes.

- :mod:`.tokens`: token hashing, the ``Authorization: Bearer`` header, the legacy
  ``--api-token`` / ``--ingest-token`` sets;
- :mod:`.identities`: the ``--auth-file`` identities and the token lookup;
- :mod:`.policy`: the rules, as oslo.policy defaults;
- :mod:`.audit`: the audit log.

The scope an identity reads in is :class:`crosstrace.server.scope.Scope`.
"""

from __future__ import annotations

from crosstrace.server.auth.tokens import (
    AUTH_HEADER,
    BEARER_PREFIX,
    HASH_PREFIX,
    MAX_TOKEN_LENGTH,
    TokenSet,
    bearer_token,
    hash_token,
    is_loopback,
)

__all__ = [
    "AUTH_HEADER",
    "BEARER_PREFIX",
    "HASH_PREFIX",
    "MAX_TOKEN_LENGTH",
    "TokenSet",
    "bearer_token",
    "hash_token",
    "is_loopback",
]
