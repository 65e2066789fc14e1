"""Secret redaction for span and log-record attributes.

Secrets never leave the process: before a kept segment (or a log record) is
queued for export, every attribute whose key looks secret gets the value
``"***"``, and secret-looking query parameters and passwords inside URL values
are masked the same way. This runs once per *kept* segment, on the thread that
ends the local root span; spans of dropped segments are never looked at.

A key looks secret when, lowercased, it contains one of :data:`DEFAULT_PATTERNS`
(``token``, ``password``, ``secret``, ``auth``, ``credential``, ``api_key`` ...)
or one of the operator's extra keys (``CROSSTRACE_REDACT_KEYS``), also matched as
lowercase substrings. Matching errs on the side of hiding: ``author`` is hidden
too. Decisions are cached per key, so the usual handful of attribute names costs
one dict lookup each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["DEFAULT_PATTERNS", "MASK", "Redactor", "mask_password"]

#: What a secret value becomes.
MASK = "***"

#: Lowercase substrings that mark a key as secret.
DEFAULT_PATTERNS: tuple[str, ...] = (
    "token",
    "password",
    "passwd",
    "secret",
    "auth",
    "credential",
    "api_key",
    "api-key",
    "apikey",
    "private_key",
    "cookie",
    "session_id",
    "signature",
    "hmac",
)

# Attribute keys whose values are URLs or query strings.
_URL_KEYS = frozenset({"url.full", "url.query", "http.url", "http.target", "db.connection_string"})
_MAX_CACHE = 4096


def _mask_userinfo(netloc: str) -> str:
    """*netloc* with the password of its user info (if any) as :data:`MASK`."""
    if "@" not in netloc:
        return netloc
    userinfo, _, host = netloc.rpartition("@")
    if ":" not in userinfo:
        return netloc
    return userinfo.split(":", 1)[0] + ":" + MASK + "@" + host


def mask_password(url: str) -> str:
    """*url* with the password in its user info shown as :data:`MASK` (for logs and
    banners: ``amqp://guest:***@host/``); a URL that does not parse is all masked."""
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = _mask_userinfo(parts.netloc)
    return url if netloc == parts.netloc else urlunsplit(parts._replace(netloc=netloc))


class Redactor:
    """Masks secret attribute values in place. One per tracer configuration."""

    __slots__ = ("_cache", "_pattern")

    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        words = [*DEFAULT_PATTERNS, *(k.strip().lower() for k in extra_keys if k and k.strip())]
        self._pattern = re.compile("|".join(re.escape(w) for w in words))
        self._cache: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        """Whether attribute *key* looks secret."""
        hit = self._cache.get(key)
        if hit is None:
            hit = self._pattern.search(key.lower()) is not None
            if len(self._cache) < _MAX_CACHE:
                self._cache[key] = hit
        return hit

    def redact_attributes(self, attributes: MutableMapping[str, Any]) -> None:
        """Mask secret values of *attributes* in place."""
        for key, value in attributes.items():
            if self.is_secret(key):
                attributes[key] = MASK
            elif key in _URL_KEYS and isinstance(value, str):
                attributes[key] = self.redact_url(value)

    def redact_url(self, url: str) -> str:
        """*url* (or a bare query string) with secret query values and passwords masked."""
        if "?" not in url and "@" not in url and "=" not in url:
            return url
        try:
            parts = urlsplit(url)
        except ValueError:
            return MASK  # unparsable: hide it rather than risk leaking
        query = parts.query
        path = parts.path
        if not parts.scheme and not parts.netloc and "?" not in url:
            # A bare query string such as ``url.query``.
            query, path = url, ""
        netloc = _mask_userinfo(parts.netloc)
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(self.is_secret(k) for k, _ in pairs):
                query = "&".join(
                    quote(k, safe="") + "=" + (MASK if self.is_secret(k) else quote(v, safe=""))
                    for k, v in pairs
                )
        if not parts.scheme and not parts.netloc and path == "" and "?" not in url:
            return query
        return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))
