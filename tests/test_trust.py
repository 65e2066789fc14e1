"""Trusted triggers: the signed crosstrace trigger and OSProfiler's signed headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid

import pytest

from crosstrace.trust import (
    OSPROFILER_HMAC_HEADER,
    OSPROFILER_INFO_HEADER,
    make_osprofiler_headers,
    make_trigger,
    verify_osprofiler,
    verify_trigger,
)

KEY = "s3cr3t-key"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
BASE_ID = "7a1c2f0e-9b5d-4c3e-8f61-2d4b6a8c0e13"
PARENT_ID = "0b1c2d3e-4f50-4617-8a9b-0c1d2e3f4a5b"


def _osprofiler_pack(data: object, key: str) -> tuple[str, str]:
    """The exact bytes osprofiler's ``signed_pack`` produces (json.dumps, urlsafe b64)."""
    raw = base64.urlsafe_b64encode(json.dumps(data).encode())
    return raw.decode(), hmac.new(key.encode(), raw, hashlib.sha1).hexdigest()


# -- crosstrace trigger -------------------------------------------------------------------


def test_trigger_round_trips() -> None:
    value = make_trigger(KEY, TRACE_ID, now=1_000_000)
    assert verify_trigger(value, TRACE_ID, [KEY], now=1_000_010)


def test_trigger_with_wrong_key_is_refused() -> None:
    value = make_trigger("other", TRACE_ID, now=1_000_000)
    assert not verify_trigger(value, TRACE_ID, [KEY], now=1_000_000)


def test_trigger_for_another_trace_is_refused() -> None:
    value = make_trigger(KEY, TRACE_ID, now=1_000_000)
    assert not verify_trigger(value, TRACE_ID + 1, [KEY], now=1_000_000)


def test_trigger_outside_clock_skew_is_refused() -> None:
    value = make_trigger(KEY, TRACE_ID, now=1_000_000)
    assert not verify_trigger(value, TRACE_ID, [KEY], now=1_000_000 + 301)
    assert not verify_trigger(value, TRACE_ID, [KEY], now=1_000_000 - 301)


def test_trigger_with_tampered_timestamp_is_refused() -> None:
    ts, mac = make_trigger(KEY, TRACE_ID, now=1_000_000).split(":")
    assert not verify_trigger(f"{int(ts) + 1}:{mac}", TRACE_ID, [KEY], now=1_000_000)


@pytest.mark.parametrize(
    "value", ["", "garbage", "12:", ":abc", "-5:abc", "x" * 500, "1000000:zz", None, 12]
)
def test_malformed_trigger_is_refused(value: object) -> None:
    assert not verify_trigger(value, TRACE_ID, [KEY], now=1_000_000)


def test_trigger_needs_a_configured_key() -> None:
    value = make_trigger(KEY, TRACE_ID, now=1_000_000)
    assert not verify_trigger(value, TRACE_ID, [], now=1_000_000)


def test_trigger_accepts_any_of_several_keys() -> None:
    value = make_trigger(KEY, TRACE_ID, now=1_000_000)
    assert verify_trigger(value, TRACE_ID, ["old", KEY], now=1_000_000)


# -- OSProfiler ---------------------------------------------------------------------------


def test_osprofiler_valid_headers_verify_and_map_base_id_to_trace_id() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID, "parent_id": PARENT_ID}, KEY)
    got = verify_osprofiler(info, mac, [KEY])
    assert got is not None
    assert got.trace_id == uuid.UUID(BASE_ID).int
    assert got.trace_id.to_bytes(16, "big") == uuid.UUID(BASE_ID).bytes
    assert got.base_id == BASE_ID
    assert got.parent_id == PARENT_ID


def test_osprofiler_headers_made_here_match_osprofiler_format() -> None:
    headers = make_osprofiler_headers(BASE_ID, PARENT_ID, KEY)
    assert (headers[OSPROFILER_INFO_HEADER], headers[OSPROFILER_HMAC_HEADER]) == _osprofiler_pack(
        {"base_id": BASE_ID, "parent_id": PARENT_ID}, KEY
    )


def test_osprofiler_wrong_key_is_refused() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID}, "not-the-key")
    assert verify_osprofiler(info, mac, [KEY]) is None


def test_osprofiler_second_configured_key_is_tried() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID}, KEY)
    assert verify_osprofiler(info, mac, ["first", KEY]) is not None


def test_osprofiler_tampered_data_is_refused() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID}, KEY)
    other, _ = _osprofiler_pack({"base_id": str(uuid.uuid4())}, KEY)
    assert verify_osprofiler(other, mac, [KEY]) is None
    assert (
        verify_osprofiler(info[:-2] + ("A" if info[-2] != "A" else "B") + info[-1], mac, [KEY])
        is None
    )


def test_osprofiler_tampered_hmac_is_refused() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID}, KEY)
    bad = ("0" if mac[0] != "0" else "1") + mac[1:]
    assert verify_osprofiler(info, bad, [KEY]) is None


def test_osprofiler_missing_hmac_is_refused() -> None:
    info, _ = _osprofiler_pack({"base_id": BASE_ID}, KEY)
    assert verify_osprofiler(info, None, [KEY]) is None
    assert verify_osprofiler(info, "", [KEY]) is None
    assert verify_osprofiler(info, "   ", [KEY]) is None


def test_osprofiler_without_configured_keys_is_refused() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID}, KEY)
    assert verify_osprofiler(info, mac, []) is None


def test_osprofiler_garbage_base64_with_valid_hmac_is_refused() -> None:
    info = "!!!not-base64!!!"
    mac = hmac.new(KEY.encode(), info.encode(), hashlib.sha1).hexdigest()
    assert verify_osprofiler(info, mac, [KEY]) is None


def test_osprofiler_garbage_json_with_valid_hmac_is_refused() -> None:
    info = base64.urlsafe_b64encode(b"{not json").decode()
    mac = hmac.new(KEY.encode(), info.encode(), hashlib.sha1).hexdigest()
    assert verify_osprofiler(info, mac, [KEY]) is None


@pytest.mark.parametrize(
    "data",
    [
        ["base_id", BASE_ID],
        {"parent_id": PARENT_ID},
        {"base_id": "not-a-uuid"},
        {"base_id": BASE_ID, "parent_id": "nope"},
        {"base_id": BASE_ID, "extra": 1},
        {"base_id": "00000000-0000-0000-0000-000000000000"},
        {"base_id": 12345},
    ],
)
def test_osprofiler_signed_but_invalid_contents_are_refused(data: object) -> None:
    info, mac = _osprofiler_pack(data, KEY)
    assert verify_osprofiler(info, mac, [KEY]) is None


def test_osprofiler_hmac_key_field_is_tolerated() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID, "hmac_key": "x"}, KEY)
    assert verify_osprofiler(info, mac, [KEY]) is not None


def test_osprofiler_oversized_header_is_refused_before_hmac() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID, "parent_id": "x" * 5000}, KEY)
    assert len(info) > 2048
    assert verify_osprofiler(info, mac, [KEY]) is None


def test_osprofiler_non_ascii_header_is_refused() -> None:
    assert verify_osprofiler("é" * 10, "ab", [KEY]) is None
    assert verify_osprofiler("abc", "é", [KEY]) is None


def test_osprofiler_bytes_headers_are_accepted() -> None:
    info, mac = _osprofiler_pack({"base_id": BASE_ID}, KEY)
    assert verify_osprofiler(info.encode(), mac.encode(), [KEY]) is not None
