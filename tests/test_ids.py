"""Request id generation and strict validation of inbound ids."""

from __future__ import annotations

import uuid

import pytest

from crosstrace.ids import MAX_REQUEST_ID_LENGTH, generate_request_id, is_valid_request_id

VALID = "req-" + str(uuid.UUID("0f8e6c1c-1a1e-4b0b-9a39-5d1f43c2a7b1"))


def test_generated_ids_are_valid_and_unique() -> None:
    ids = {generate_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in ids:
        assert is_valid_request_id(rid)
        assert len(rid) == MAX_REQUEST_ID_LENGTH
        assert uuid.UUID(rid[4:]).version == 4


def test_canonical_lowercase_id_is_valid() -> None:
    assert is_valid_request_id(VALID)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("req-", id="prefix-only"),
        pytest.param(VALID[4:], id="no-prefix"),
        pytest.param("rq-" + VALID[4:], id="wrong-prefix"),
        pytest.param("REQ-" + VALID[4:], id="uppercase-prefix"),
        pytest.param(VALID.upper().replace("REQ-", "req-"), id="uppercase-hex"),
        pytest.param(VALID + "0", id="uuid-with-suffix"),
        pytest.param(VALID + "-extra", id="uuid-with-word-suffix"),
        pytest.param(VALID + "\n", id="trailing-newline"),
        pytest.param(VALID + "\r\nX-Evil: 1", id="crlf-injection"),
        pytest.param(" " + VALID, id="leading-space"),
        pytest.param(VALID[:-1] + "\x00", id="control-character"),
        pytest.param(VALID[:-1] + "é", id="non-ascii"),
        pytest.param(VALID[:-1] + "\uff10", id="fullwidth-digit"),
        pytest.param("req-" + uuid.UUID(VALID[4:]).hex, id="uuid-without-dashes"),
        pytest.param("req-{" + VALID[4:] + "}", id="braced-uuid"),
        pytest.param("req-" + "a" * 10_000, id="10kB"),
        pytest.param(VALID + "," + VALID, id="repeated-header-joined"),
        pytest.param(VALID.encode(), id="bytes"),
        pytest.param(None, id="none"),
        pytest.param([VALID], id="list"),
    ],
)
def test_bad_inbound_values_are_refused(value: object) -> None:
    assert not is_valid_request_id(value)
