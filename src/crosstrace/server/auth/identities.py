"""Identities from the ``--auth-file`` TOML file, and the token lookup.

One ``[[identity]]`` table per identity::

    [[identity]]
    name = "acme-readers"            # shown in the audit log
    token_sha256 = "5e88...42"       # hex SHA-256 of the token; the token is not kept
    roles = ["reader"]               # reader, sensitive, admin, ingest, metrics
    domains = ["acme"]               # both lists empty: cloud-wide
    projects = []
    expires = 2026-12-31T00:00:00Z   # optional

:class:`IdentityFile` reloads the file when it changes (checked at most once a
second, on lookup) and keeps the last good contents when a new version is
invalid. A presented token is hashed once and compared with
:func:`hmac.compare_digest` against every identity's digest, without stopping
at a match, so a lookup takes the same time whether it succeeds or fails.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from crosstrace.server.auth.tokens import hash_token
from crosstrace.server.errors import BadRequest
from crosstrace.server.scope import Scope

__all__ = [
    "ALL_ROLES",
    "ENV_AUTH_FILE",
    "ROLE_ADMIN",
    "ROLE_INGEST",
    "ROLE_METRICS",
    "ROLE_READER",
    "ROLE_SENSITIVE",
    "TOKEN_PREFIX",
    "AuthFileError",
    "Identity",
    "IdentityEntry",
    "IdentityFile",
    "add_identity",
    "load_identities",
    "parse_expiry",
    "revoke_identity",
    "write_identities",
]

log = logging.getLogger(__name__)

ROLE_READER: Final = "reader"
ROLE_SENSITIVE: Final = "sensitive"
ROLE_ADMIN: Final = "admin"
ROLE_INGEST: Final = "ingest"
ROLE_METRICS: Final = "metrics"
ALL_ROLES: Final = (ROLE_READER, ROLE_SENSITIVE, ROLE_ADMIN, ROLE_INGEST, ROLE_METRICS)
#: Environment variable naming the auth file.
ENV_AUTH_FILE: Final = "CROSSTRACE_AUTH_FILE"
#: Prefix of the tokens ``crosstrace token create`` makes (easy to spot in a leak scan).
TOKEN_PREFIX: Final = "ctk_"  # noqa: S105 (a prefix, not a secret)
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}", re.ASCII)
_ID = re.compile(r"[A-Za-z0-9_.@:-]{1,255}", re.ASCII)
_EXPIRY = re.compile(r"(\d{1,5})\s*([hdw])", re.ASCII)
_EXPIRY_UNITS: Final = {"h": 3600, "d": 86400, "w": 7 * 86400}
_RELOAD_CHECK_S: Final = 1.0
_KEYS: Final = frozenset({"name", "token_sha256", "roles", "domains", "projects", "expires"})


class AuthFileError(BadRequest, ValueError):
    """The auth file cannot be read or is invalid."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: a name for the audit log, roles, and what they may read."""

    name: str
    roles: frozenset[str]
    scope: Scope
    source: str = "file"  # file, token (legacy --api-token), keystone, anonymous
    user_id: str | None = None

    def has(self, role: str) -> bool:
        return role in self.roles or ROLE_ADMIN in self.roles

    def credentials(self) -> dict[str, Any]:
        """The oslo.policy credentials of this identity."""
        return {
            "roles": sorted(self.roles),
            "user_id": self.user_id or self.name,
            "project_ids": sorted(self.scope.projects),
            "domain_ids": sorted(self.scope.domains),
            "cloud_wide": self.scope.everything,
        }


#: Everything, for a server whose auth is off (loopback with --no-auth or no tokens).
ANONYMOUS_ADMIN: Final = Identity("anonymous", frozenset(ALL_ROLES), Scope.ALL, source="anonymous")


@dataclass(frozen=True, slots=True)
class IdentityEntry:
    """One ``[[identity]]`` table."""

    name: str
    digest: bytes
    roles: tuple[str, ...]
    domains: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    expires: dt.datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def identity(self) -> Identity:
        return Identity(
            self.name, frozenset(self.roles), Scope.of(self.projects, self.domains), "file"
        )

    def expired(self, now: dt.datetime) -> bool:
        return self.expires is not None and now >= self.expires


def _strings(
    table: dict[str, Any], key: str, where: str, pattern: re.Pattern[str]
) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthFileError(f"{where}: {key} must be a list of strings")
    for v in value:
        if not pattern.fullmatch(v):
            raise AuthFileError(f"{where}: {key} has an invalid value {v!r}")
    return tuple(value)


def _entry(table: Any, index: int) -> IdentityEntry:
    where = f"identity #{index + 1}"
    if not isinstance(table, dict):
        raise AuthFileError(f"{where} must be a table")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AuthFileError(f"{where}: name must be 1-128 letters, digits or _.@:-")
    where = f"identity {name!r}"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise AuthFileError(f"{where}: unknown key(s) {', '.join(unknown)}")
    digest = table.get("token_sha256")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
        raise AuthFileError(f"{where}: token_sha256 must be 64 hex digits")
    roles = _strings(table, "roles", where, _NAME)
    bad = sorted(set(roles) - set(ALL_ROLES))
    if bad:
        raise AuthFileError(f"{where}: unknown role(s) {', '.join(bad)}; use {ALL_ROLES}")
    if not roles:
        raise AuthFileError(f"{where}: roles must name at least one role")
    expires = table.get("expires")
    if expires is not None:
        if isinstance(expires, dt.datetime):
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
        else:
            raise AuthFileError(f"{where}: expires must be a TOML date-time")
    return IdentityEntry(
        name,
        bytes.fromhex(digest.lower()),
        roles,
        _strings(table, "domains", where, _ID),
        _strings(table, "projects", where, _ID),
        expires,
    )


def load_identities(path: str | os.PathLike[str]) -> list[IdentityEntry]:
    """Every identity of the file at *path*. Raises :class:`AuthFileError`."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise AuthFileError(f"auth file {path} does not exist") from None
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuthFileError(f"auth file {path} is not valid TOML: {exc}") from None
    tables = doc.get("identity", [])
    if not isinstance(tables, list):
        raise AuthFileError(f"auth file {path}: use [[identity]] tables")
    entries = [_entry(t, i) for i, t in enumerate(tables)]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AuthFileError(f"auth file {path}: duplicate name(s) {', '.join(dupes)}")
    return entries


class IdentityFile:
    """The identities of an auth file, reloaded when the file changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[list[str], list[str]], None] | None = None,
    ) -> None:
        """Load *path* now; raises :class:`AuthFileError` if it is invalid.
        *on_change(added, removed)* is told the identity names a reload added and
        removed (token create / revoke), e.g. for the audit log."""
        self.path = Path(path)
        self.on_change = on_change
        self._lock = threading.Lock()
        self._entries: tuple[IdentityEntry, ...] = ()
        self._table: tuple[tuple[bytes, IdentityEntry, Identity], ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.reloads = 0
        self.reload_failures = 0
        self._load(self._file_stamp())

    def __len__(self) -> int:
        return len(self._entries)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, stamp: tuple[int, int, int] | None) -> None:
        entries = tuple(load_identities(self.path))
        # Identities are built here, not per lookup: a match costs no more than a miss.
        self._table = tuple((e.digest, e, e.identity()) for e in entries)
        self._entries = entries
        self._stamp = stamp

    def refresh(self, force: bool = False) -> None:
        """Reload the file if it changed (at most once a second unless *force*)."""
        now = time.monotonic()
        if not force and now - self._checked < _RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            before = {e.name for e in self._entries}
            try:
                self._load(stamp)
            except AuthFileError as exc:
                self.reload_failures += 1
                self._stamp = stamp  # do not retry until it changes again
                log.warning("auth file not reloaded, keeping the previous identities: %s", exc)
                return
            self.reloads += 1
            log.info("auth file reloaded: %d identities", len(self._entries))
            after = {e.name for e in self._entries}
            if self.on_change is not None and before != after:
                try:
                    self.on_change(sorted(after - before), sorted(before - after))
                except Exception:  # a failing listener must not stop the reload
                    log.exception("auth file change listener failed")

    def lookup(self, token: str | None) -> Identity | None:
        """The identity whose token is *token*, unless unknown or expired.

        Every digest is compared, whatever matches, in constant time each."""
        self.refresh()
        presented = hash_token(token if token is not None else "")
        now = dt.datetime.now(dt.UTC)
        found = _NO_MATCH
        for digest, entry, identity in self._table:
            if hmac.compare_digest(presented, digest):
                found = (digest, entry, identity)
        # The same steps whatever matched (or not), so the time tells nothing.
        _, entry, identity = found
        expired = entry.expired(now)
        if token is None or entry is _NOBODY or expired:
            return None
        return identity

    def entries(self) -> tuple[IdentityEntry, ...]:
        self.refresh(force=True)
        return self._entries


# ------------------------------------------------------------- editing the file


_NOBODY: Final = IdentityEntry("-", b"", ())
_NO_MATCH: Final = (b"", _NOBODY, Identity("-", frozenset(), Scope.NOTHING))


def parse_expiry(text: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """``30d``, ``12h``, ``2w`` from *now*; ``None``/``never`` for no expiry."""
    if text is None or text.strip().lower() in ("", "never"):
        return None
    match = _EXPIRY.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not an expiry like 12h, 30d or 2w (or 'never')")
    now = now or dt.datetime.now(dt.UTC)
    seconds = int(match.group(1)) * _EXPIRY_UNITS[match.group(2)]
    return (now + dt.timedelta(seconds=seconds)).replace(microsecond=0)


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def write_identities(path: str | os.PathLike[str], entries: Iterable[IdentityEntry]) -> None:
    """Write *entries* to *path* atomically, readable by the owner only (0600)."""
    lines = [
        "# crosstrace identities: edit with `crosstrace token create|revoke`.",
        "# Only SHA-256 digests of the tokens are kept here.",
    ]
    for e in entries:
        lines += [
            "",
            "[[identity]]",
            f"name = {_toml_str(e.name)}",
            f"token_sha256 = {_toml_str(e.digest.hex())}",
            f"roles = {_toml_list(e.roles)}",
            f"domains = {_toml_list(e.domains)}",
            f"projects = {_toml_list(e.projects)}",
        ]
        if e.expires is not None:
            lines.append(f"expires = {e.expires.astimezone(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def add_identity(
    path: str | os.PathLike[str],
    name: str,
    roles: Sequence[str],
    domains: Sequence[str] = (),
    projects: Sequence[str] = (),
    expires: dt.datetime | None = None,
) -> str:
    """Add an identity with a new random token to the auth file (created if
    missing) and return the token, which is stored nowhere."""
    existing = load_identities(path) if Path(path).exists() else []
    if any(e.name == name for e in existing):
        raise AuthFileError(f"an identity named {name!r} already exists; revoke it first")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry = _entry(
        {
            "name": name,
            "token_sha256": hash_token(token).hex(),
            "roles": list(roles),
            "domains": list(domains),
            "projects": list(projects),
            **({"expires": expires} if expires is not None else {}),
        },
        len(existing),
    )
    write_identities(path, [*existing, entry])
    return token


def revoke_identity(path: str | os.PathLike[str], name: str) -> bool:
    """Remove the identity *name*; whether it was there."""
    existing = load_identities(path)
    kept = [e for e in existing if e.name != name]
    if len(kept) == len(existing):
        return False
    write_identities(path, kept)
    return True
