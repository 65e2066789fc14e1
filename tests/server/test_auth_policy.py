"""The oslo.policy rules: defaults per role, a policy file overriding them."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosstrace.server.auth.identities import Identity
from crosstrace.server.auth.policy import (
    ADMIN,
    AUDIT,
    INGEST,
    METRICS,
    READ,
    SENSITIVE,
    Policy,
    render_defaults,
)
from crosstrace.server.scope import Scope

RULES = (READ, SENSITIVE, METRICS, AUDIT, INGEST, ADMIN)
EXPECTED = {
    "reader": {READ},
    "sensitive": {SENSITIVE},
    "metrics": {METRICS},
    "ingest": {INGEST},
    "admin": set(RULES),
}


@pytest.fixture(scope="module")
def defaults() -> Policy:
    return Policy()


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_default_rules_per_role(defaults: Policy, role: str) -> None:
    who = Identity("x", frozenset({role}), Scope.of(["p1"]))
    allowed = {rule for rule in RULES if defaults.allows(rule, who)}
    assert allowed == EXPECTED[role]


def test_no_role_passes_nothing(defaults: Policy) -> None:
    who = Identity("x", frozenset(), Scope.ALL)
    assert not any(defaults.allows(rule, who) for rule in RULES)


def test_policy_file_overrides_a_default(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(f'"{METRICS}": "role:reader or role:metrics"\n')
    policy = Policy(path)
    reader = Identity("x", frozenset({"reader"}), Scope.ALL)
    assert policy.allows(METRICS, reader)
    assert not policy.allows(AUDIT, reader)


def test_missing_policy_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Policy(tmp_path / "nope.yaml")


def test_rendered_defaults_name_every_rule() -> None:
    text = render_defaults()
    for rule in RULES:
        assert f'#"{rule}":' in text
