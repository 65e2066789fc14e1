"""The real-Keystone fixture: admin bootstrap, and users with roles and scoped tokens."""

from __future__ import annotations

from keystone_support import Keystone


def test_admin_token_is_scoped_to_the_admin_project(keystone: Keystone) -> None:
    body = keystone.validate(keystone.admin_token())
    assert body["project"]["name"] == "admin"
    assert {"admin", "member", "reader"} <= {r["name"] for r in body["roles"]}


def test_reader_user_in_a_new_domain_gets_a_token_for_its_project(keystone: Keystone) -> None:
    domain = keystone.create_domain()
    project = keystone.create_project(domain)
    user = keystone.make_user(domain, project, roles=("reader",))
    body = keystone.validate(user.token)
    assert body["user"]["id"] == user.id
    assert body["project"]["id"] == project
    assert body["project"]["domain"]["id"] == domain
    assert [r["name"] for r in body["roles"]] == ["reader"]


def test_admin_role_on_a_project_implies_member_and_reader(keystone: Keystone) -> None:
    domain = keystone.create_domain()
    project = keystone.create_project(domain)
    user = keystone.make_user(domain, project, roles=("admin",))
    roles = {r["name"] for r in keystone.validate(user.token)["roles"]}
    assert roles >= {"admin", "member", "reader"}
