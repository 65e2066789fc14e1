"""The --auth-file identities: parsing, lookup, expiry, reload, token create/revoke."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from crosstrace.server.auth.identities import (
    AuthFileError,
    IdentityFile,
    add_identity,
    load_identities,
    parse_expiry,
    revoke_identity,
)
from crosstrace.server.auth.tokens import hash_token
from crosstrace.server.scope import Scope


def _write(path: Path, body: str) -> None:
    path.write_text(body, encoding="utf-8")


def _identity(name: str, token: str, extra: str = "") -> str:
    return f'[[identity]]\nname = "{name}"\ntoken_sha256 = "{hash_token(token).hex()}"\n{extra}\n'


def test_lookup_finds_identity_with_roles_and_scope(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    _write(
        path,
        _identity("acme", "t-acme", 'roles = ["reader"]\ndomains = ["d1"]\nprojects = ["p9"]')
        + _identity("ops", "t-ops", 'roles = ["admin"]'),
    )
    ids = IdentityFile(path)
    acme = ids.lookup("t-acme")
    assert acme is not None
    assert acme.name == "acme"
    assert acme.roles == {"reader"}
    assert acme.scope == Scope(frozenset({"p9"}), frozenset({"d1"}))
    ops = ids.lookup("t-ops")
    assert ops is not None
    assert ops.scope.everything


@pytest.mark.parametrize("token", [None, "", "t-acmE", "t-acm", "t-acme ", "x" * 5000])
def test_wrong_tokens_are_refused(tmp_path: Path, token: str | None) -> None:
    path = tmp_path / "auth.toml"
    _write(path, _identity("acme", "t-acme", 'roles = ["reader"]'))
    assert IdentityFile(path).lookup(token) is None


def test_expired_identity_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    _write(
        path,
        _identity("old", "t-old", 'roles = ["reader"]\nexpires = 2020-01-01T00:00:00Z')
        + _identity("new", "t-new", 'roles = ["reader"]\nexpires = 2999-01-01T00:00:00Z'),
    )
    ids = IdentityFile(path)
    assert ids.lookup("t-old") is None
    assert ids.lookup("t-new") is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[identity]]\nname = "a"\ntoken_sha256 = "zz"\nroles = ["reader"]\n', "64 hex"),
        (_identity("a", "t", 'roles = ["root"]'), "unknown role"),
        (_identity("a", "t", "roles = []"), "at least one role"),
        (_identity("a", "t", 'roles = ["reader"]\ncolour = "red"'), "unknown key"),
        (_identity("a", "t", 'roles = ["reader"]') * 2, "duplicate"),
        (_identity("a", "t", 'roles = ["reader"]\nprojects = ["a b"]'), "invalid value"),
        ("identity = 3\n", r"use \[\[identity\]\] tables"),
        ("[[identity\n", "not valid TOML"),
    ],
)
def test_invalid_files_are_refused_with_a_reason(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "auth.toml"
    _write(path, body)
    with pytest.raises(AuthFileError, match=message):
        load_identities(path)


def test_file_is_reloaded_when_changed_and_kept_when_broken(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    _write(path, _identity("a", "t-a", 'roles = ["reader"]'))
    ids = IdentityFile(path)
    assert ids.lookup("t-b") is None
    _write(path, _identity("b", "t-b", 'roles = ["reader"]'))
    os.utime(path, ns=(1, 1))  # a different stamp even within the same tick
    ids.refresh(force=True)
    assert ids.lookup("t-b") is not None
    assert ids.lookup("t-a") is None
    _write(path, "[[identity\n")
    os.utime(path, ns=(2, 2))
    ids.refresh(force=True)
    assert ids.reload_failures == 1
    assert ids.lookup("t-b") is not None  # the last good contents stay


def test_token_create_list_revoke(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    expires = parse_expiry("30d", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert expires == dt.datetime(2026, 1, 31, tzinfo=dt.UTC)
    token = add_identity(path, "acme", ["reader"], domains=["d1"], expires=expires)
    other = add_identity(path, "ops", ["admin"])
    assert token != other
    text = path.read_text()
    assert token not in text  # only the digest is kept
    assert hash_token(token).hex() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = load_identities(path)
    assert [(e.name, e.domains, e.expires) for e in entries] == [
        ("acme", ("d1",), expires),
        ("ops", (), None),
    ]
    with pytest.raises(AuthFileError, match="already exists"):
        add_identity(path, "ops", ["admin"])
    ids = IdentityFile(path)
    assert ids.lookup(other) is not None
    assert revoke_identity(path, "ops")
    assert not revoke_identity(path, "ops")
    ids.refresh(force=True)
    assert ids.lookup(other) is None
    assert ids.lookup(token) is None  # expires 2026-01-31, before today's clock
    assert [e.name for e in load_identities(path)] == ["acme"]


@pytest.mark.parametrize("text", ["0d", "3y", "d", "-1d"])
def test_bad_expiry_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expiry"):
        parse_expiry(text)


def test_never_expires() -> None:
    assert parse_expiry("never") is None
    assert parse_expiry(None) is None


def test_reload_reports_created_and_revoked_identities(tmp_path: Path) -> None:
    """Token create / revoke reach the listener (the server's audit log) on reload."""
    path = tmp_path / "auth.toml"
    add_identity(path, "a", ["reader"])
    changes: list[tuple[list[str], list[str]]] = []
    ids = IdentityFile(path, on_change=lambda added, removed: changes.append((added, removed)))
    add_identity(path, "b", ["reader"])
    os.utime(path, ns=(1, 1))
    ids.refresh(force=True)
    revoke_identity(path, "a")
    os.utime(path, ns=(2, 2))
    ids.refresh(force=True)
    assert changes == [(["b"], []), ([], ["a"])]
