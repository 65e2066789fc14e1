"""Bearer tokens: hashing, the legacy token sets and the Authorization header.

Tokens are kept only as SHA-256 digests: a configured token is hashed as soon as
it is read (or given directly as ``sha256:<hex>``, so a config file need not hold
the secret), and a presented token is hashed and compared with
:func:`hmac.compare_digest` against every configured digest, so the time taken
does not depend on which byte differs or which token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

__all__ = [
    "AUTH_HEADER",
    "BEARER_PREFIX",
    "HASH_PREFIX",
    "TokenSet",
    "bearer_token",
    "hash_token",
    "is_loopback",
]

#: Header carrying ``Bearer <token>``.
AUTH_HEADER = "authorization"
BEARER_PREFIX = "bearer "
#: Prefix of a token given as its digest in configuration.
HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
#: Longest Authorization header looked at; anything longer cannot be a token we issued.
MAX_TOKEN_LENGTH = 4096


def hash_token(token: str) -> bytes:
    """The SHA-256 digest of *token* (UTF-8)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _digest(spec: str) -> bytes:
    """Digest of a configured token: ``sha256:<hex>`` as given, else hashed."""
    if spec.startswith(HASH_PREFIX):
        hexdigest = spec[len(HASH_PREFIX) :].lower()
        if not _HEX64.fullmatch(hexdigest):
            raise ValueError("a sha256: token must be followed by 64 hex digits")
        return bytes.fromhex(hexdigest)
    if not spec or spec != spec.strip():
        raise ValueError("a token must be non-empty and have no surrounding spaces")
    return hash_token(spec)


class TokenSet:
    """The accepted tokens of one surface (ingest or API), as digests only."""

    __slots__ = ("_digests",)

    def __init__(self, specs: Iterable[str] = ()) -> None:
        """*specs*: tokens, or ``sha256:<hex>`` digests. Raises ``ValueError``."""
        self._digests = tuple(_digest(s) for s in specs)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, token: str | None) -> bool:
        """Whether *token* is one of the configured tokens (constant time per digest)."""
        if token is None or not self._digests:
            return False
        presented = hash_token(token)
        ok = False
        for digest in self._digests:
            ok |= hmac.compare_digest(presented, digest)
        return ok


def bearer_token(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not header_value or len(header_value) > MAX_TOKEN_LENGTH:
        return None
    if header_value[: len(BEARER_PREFIX)].lower() != BEARER_PREFIX:
        return None
    token = header_value[len(BEARER_PREFIX) :].strip()
    return token or None


def is_loopback(host: str) -> bool:
    """Whether binding to *host* keeps the server reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
