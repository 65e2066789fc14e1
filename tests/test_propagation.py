"""crosstrace.propagation: inject/extract round trips, untrusted carriers, counters."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from crosstrace.context import RequestContext, get_current, use_context
from crosstrace.ids import is_valid_request_id
from crosstrace.propagation import (
    CONTEXT_KEY,
    HEADER_REQUEST_ID,
    extract,
    inject,
    record_invalid,
    stats,
)

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
LID = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"


def test_inject_writes_global_id_and_json_safe_context() -> None:
    ctx = RequestContext(
        request_id=LID, global_request_id=GID, user_id="u", project_id="p", roles=["reader"]
    )
    carrier: dict[str, object] = {"other": 1}
    with use_context(ctx):
        inject(carrier)
    assert carrier[HEADER_REQUEST_ID] == GID
    assert carrier["other"] == 1
    values = carrier[CONTEXT_KEY]
    assert isinstance(values, dict)
    assert values["user_id"] == "u"
    assert values["roles"] == ["reader"]
    assert None not in values.values()
    assert json.loads(json.dumps(carrier)) == carrier


def test_inject_sends_local_id_when_there_is_no_global_id() -> None:
    carrier: dict[str, object] = {}
    inject(carrier, RequestContext(request_id=LID))
    assert carrier[HEADER_REQUEST_ID] == LID


def test_inject_without_context_writes_nothing() -> None:
    carrier: dict[str, object] = {}
    inject(carrier)
    assert carrier == {}


def test_extract_adopts_sender_global_id_with_new_local_id() -> None:
    sender = RequestContext(request_id=LID, global_request_id=GID, user_id="u", is_admin=True)
    carrier: dict[str, object] = {}
    inject(carrier, sender)
    receiver = extract(carrier)
    assert receiver is not None
    assert receiver.global_request_id == GID
    assert is_valid_request_id(receiver.request_id)
    assert receiver.request_id not in (LID, GID)
    assert receiver.user_id == "u"
    assert receiver.is_admin is True
    assert get_current() is None  # extract does not make it current


def test_sender_local_id_becomes_receiver_global_id() -> None:
    carrier: dict[str, object] = {}
    inject(carrier, RequestContext(request_id=LID))
    receiver = extract(carrier)
    assert receiver is not None
    assert receiver.global_request_id == LID


def test_extract_reads_lowercase_header_and_dict_only_carriers() -> None:
    lower = extract({"x-openstack-request-id": GID})
    assert lower is not None
    assert lower.global_request_id == GID
    dict_only = extract({CONTEXT_KEY: {"request_id": LID, "project_id": "p"}})
    assert dict_only is not None
    assert dict_only.global_request_id == LID
    assert dict_only.project_id == "p"


@pytest.mark.parametrize("carrier", [None, {}, {"unrelated": "x"}])
def test_extract_returns_none_without_context_fields(carrier: dict[str, object] | None) -> None:
    assert extract(carrier) is None


@pytest.mark.parametrize(
    "bad",
    [
        GID.upper(),
        GID + "\n",
        GID + "\r\nX: y",
        "req-" + "a" * 10000,
        b"req-3f1e2d4c-5b6a-4789-8abc-def012345678",
        12345,
        ["req-3f1e2d4c-5b6a-4789-8abc-def012345678"],
        "",
    ],
)
def test_extract_drops_and_counts_invalid_ids(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    before = stats()["invalid_message_request_id"]
    with caplog.at_level(logging.DEBUG, logger="crosstrace.propagation"):
        ctx = extract({HEADER_REQUEST_ID: bad, CONTEXT_KEY: {"user_id": "u"}})
    assert ctx is not None
    assert ctx.global_request_id is None
    assert ctx.user_id == "u"
    assert stats()["invalid_message_request_id"] == before + 1
    assert caplog.messages
    if isinstance(bad, str) and bad:
        assert all(bad.strip() not in message for message in caplog.messages)


def test_extract_ignores_malformed_context_dict() -> None:
    ctx = extract(
        {
            HEADER_REQUEST_ID: GID,
            CONTEXT_KEY: {"user_id": 5, "roles": "admin", "is_admin": "yes", "x": object()},
        }
    )
    assert ctx is not None
    assert ctx.global_request_id == GID
    assert ctx.user_id is None
    assert ctx.roles == ()
    assert ctx.is_admin is False
    not_a_dict = extract({HEADER_REQUEST_ID: GID, CONTEXT_KEY: "garbage"})
    assert not_a_dict is not None
    assert not_a_dict.global_request_id == GID


def test_counters_are_exact_across_threads() -> None:
    before = stats()["invalid_http_request_id"]

    def work() -> None:
        for _ in range(2000):
            record_invalid("test", "x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert stats()["invalid_http_request_id"] == before + 8000
