"""The Scope object: visibility rule and its SQL condition."""

from __future__ import annotations

from crosstrace.server.scope import Scope


def test_cloud_wide_scope_sees_everything_including_unowned() -> None:
    assert Scope.of().everything
    assert Scope.ALL.allows(None, None)
    assert Scope.ALL.sql("p", "d") == (None, [])


def test_project_and_domain_scope() -> None:
    s = Scope.of(projects=["p1"], domains=["d2"])
    assert s.allows("p1", "d9")
    assert s.allows("p7", "d2")
    assert not s.allows("p7", "d9")
    assert not s.allows(None, None)
    assert s.sql("t.p", "t.d") == ("(t.p IN (?) OR t.d IN (?))", ["p1", "d2"])


def test_empty_scope_sees_nothing() -> None:
    assert Scope.NOTHING.is_empty
    assert not Scope.NOTHING.allows("p", "d")
    assert Scope.NOTHING.sql("p", "d") == ("1 = 0", [])
