"""crosstrace's RequestContext <-> oslo.context's RequestContext, both ways."""

from __future__ import annotations

from oslo_context import context as oslo_context

from crosstrace.context import RequestContext, use_context
from crosstrace.ids import is_valid_request_id
from crosstrace.integrations.oslo_context import (
    from_oslo,
    from_oslo_dict,
    to_oslo,
    to_oslo_dict,
)

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
LID = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"
IDENTITY = {
    "user_id": "u1",
    "project_id": "p1",
    "domain_id": "d1",
    "user_domain_id": "ud1",
    "project_domain_id": "pd1",
}


def test_round_trip_keeps_both_ids_and_the_identity() -> None:
    ours = RequestContext(LID, GID, roles=("reader", "member"), is_admin=True, **IDENTITY)
    theirs = to_oslo(ours)
    assert isinstance(theirs, oslo_context.RequestContext)
    assert (theirs.request_id, theirs.global_request_id) == (LID, GID)
    assert theirs.user_id == "u1"
    assert theirs.project_domain_id == "pd1"
    assert theirs.roles == ["reader", "member"]
    assert from_oslo(theirs) == ours


def test_to_oslo_uses_the_current_context_and_does_not_replace_oslos_current() -> None:
    existing = oslo_context.RequestContext()  # oslo's thread-local current one
    with use_context(RequestContext(LID, GID)):
        theirs = to_oslo()
    assert theirs.global_id == GID
    assert oslo_context.get_current() is existing


def test_from_oslo_refuses_malformed_ids() -> None:
    theirs = oslo_context.RequestContext(
        request_id="req-not-a-uuid", global_request_id=GID + "\n", overwrite=False
    )
    ours = from_oslo(theirs)
    assert is_valid_request_id(ours.request_id)
    assert ours.request_id != "req-not-a-uuid"
    assert ours.global_request_id is None


def test_from_oslo_dict_reads_oslos_dict_keys() -> None:
    values = oslo_context.RequestContext(
        request_id=LID, global_request_id=GID, roles=["admin"], overwrite=False, **IDENTITY
    ).to_dict()
    ours = from_oslo_dict(values)
    assert (ours.request_id, ours.global_request_id) == (LID, GID)
    assert (ours.user_id, ours.project_id, ours.domain_id) == ("u1", "p1", "d1")
    assert (ours.user_domain_id, ours.project_domain_id) == ("ud1", "pd1")
    assert ours.roles == ("admin",)


def test_dict_form_matches_oslos_own_and_reads_back() -> None:
    ours = RequestContext(LID, GID, roles=("reader",), **IDENTITY)
    theirs = to_oslo(ours).to_dict()
    mine = to_oslo_dict(ours)
    assert {k: theirs[k] for k in mine} == mine
    assert from_oslo_dict(mine) == ours
    assert to_oslo_dict(None) == {}
