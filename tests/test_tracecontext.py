"""W3C Trace Context levels 1 and 2: traceparent and tracestate parsing and mutation."""

from __future__ import annotations

import pytest

from crosstrace.tracecontext import (
    FLAG_RANDOM,
    FLAG_SAMPLED,
    TraceState,
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


# -- traceparent ---------------------------------------------------------------------


def test_valid_v00_parses_into_integers() -> None:
    assert parse_traceparent(VALID) == (int(TRACE, 16), int(SPAN, 16), 1)


def test_flags_sampled_and_random_bits_are_read() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{SPAN}-03")
    assert parsed is not None
    assert parsed[2] & FLAG_SAMPLED
    assert parsed[2] & FLAG_RANDOM


def test_unknown_flag_bits_are_accepted_on_input() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{SPAN}-ff")
    assert parsed is not None
    assert parsed[2] == 0xFF


def test_unknown_flag_bits_are_zeroed_when_sending() -> None:
    assert format_traceparent(int(TRACE, 16), int(SPAN, 16), 0xFF).endswith("-03")


def test_format_round_trips() -> None:
    assert format_traceparent(int(TRACE, 16), int(SPAN, 16), 1) == VALID


def test_format_pads_small_ids() -> None:
    assert format_traceparent(1, 2, 0) == "00-" + "0" * 31 + "1-" + "0" * 15 + "2-00"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"00-{TRACE}-{SPAN}-01-extra", "extra field on version 00"),
        (f"00-{TRACE}-{SPAN}-01-", "trailing dash on version 00"),
        (f"00-{TRACE.upper()}-{SPAN}-01", "uppercase trace id"),
        (f"00-{TRACE}-{SPAN.upper()}-01", "uppercase span id"),
        (f"00-{TRACE}-{SPAN}-0A", "uppercase flags"),
        (f"0A-{TRACE}-{SPAN}-01", "uppercase version"),
        (f"ff-{TRACE}-{SPAN}-01", "version ff is forbidden"),
        (f"00-{'0' * 32}-{SPAN}-01", "all-zero trace id"),
        (f"00-{TRACE}-{'0' * 16}-01", "all-zero parent id"),
        (f"00-{TRACE[:-1]}-{SPAN}-01", "trace id too short"),
        (f"00-{TRACE}0-{SPAN}-01", "trace id too long"),
        (f"00-{TRACE}-{SPAN[:-1]}-01", "span id too short"),
        (f"00-{TRACE}-{SPAN}0-01", "span id too long"),
        (f"00-{TRACE}-{SPAN}-1", "flags too short"),
        (f"00-{TRACE}-{SPAN}-001", "flags too long"),
        (f"00-{TRACE[:-1]}g-{SPAN}-01", "non-hex trace id"),
        (f"00-{TRACE}-{SPAN[:-1]}x-01", "non-hex span id"),
        (f"00-{TRACE}-{SPAN}-0x", "non-hex flags"),
        (f"0-{TRACE}-{SPAN}-01", "short version"),
        (f"00_{TRACE}_{SPAN}_01", "wrong delimiter"),
        (f"00-{TRACE}-{SPAN}-01\n", "trailing newline"),
        ("", "empty"),
        ("00", "truncated"),
        (f"00-{TRACE}-{SPAN}", "missing flags"),
    ],
)
def test_invalid_traceparent_is_refused(value: str, why: str) -> None:
    assert parse_traceparent(value) is None, why


def test_non_string_traceparent_is_refused() -> None:
    assert parse_traceparent(None) is None
    assert parse_traceparent(VALID.encode()) is None
    assert parse_traceparent(12) is None


def test_surrounding_optional_whitespace_is_ignored() -> None:
    assert parse_traceparent(f" \t{VALID} ") is not None


def test_higher_version_parses_first_four_fields() -> None:
    parsed = parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-holds")
    assert parsed == (int(TRACE, 16), int(SPAN, 16), 1)


def test_higher_version_without_extra_fields_parses() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-00") == (int(TRACE, 16), int(SPAN, 16), 0)


def test_higher_version_needs_dash_after_flags() -> None:
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01x") is None
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01.abc") is None


def test_higher_version_shorter_than_55_is_refused() -> None:
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-1") is None


def test_higher_version_still_rejects_zero_ids() -> None:
    assert parse_traceparent(f"cc-{'0' * 32}-{SPAN}-01-x") is None


# -- tracestate ----------------------------------------------------------------------


def test_tracestate_parses_members_in_order() -> None:
    ts = parse_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    assert ts is not None
    assert ts.items() == (("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"))


def test_tracestate_tolerates_ows_and_empty_members() -> None:
    ts = parse_tracestate(" a=1 ,\t, ,b=2,")
    assert ts is not None
    assert ts.items() == (("a", "1"), ("b", "2"))


def test_tracestate_combines_multiple_header_lines() -> None:
    ts = parse_tracestate(["a=1", "b=2"])
    assert ts is not None
    assert ts.items() == (("a", "1"), ("b", "2"))


def test_multi_tenant_key_is_valid() -> None:
    ts = parse_tracestate("fw529a3039@dt=abc,0tenant@sys-1=v")
    assert ts is not None
    assert ts.get("fw529a3039@dt") == "abc"


@pytest.mark.parametrize(
    "key",
    ["foo@", "foo@@bar", "foo@bar@baz", "1a", "tenant@1sys", "t" * 242 + "@v", "t@" + "v" * 15],
)
def test_level_2_key_grammar_allows_at_signs_after_the_first_character(key: str) -> None:
    """Level 2: ``@`` is an ordinary key character; only the first must be a-z or 0-9."""
    ts = parse_tracestate(f"{key}=1,bar=2")
    assert ts is not None
    assert ts.get(key) == "1"
    assert ts.get("bar") == "2"


def test_every_allowed_key_and_value_character_propagates() -> None:
    key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
    vendor_key = key + "@a-z0-9_-*/"
    value = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
    for k in (key, vendor_key):
        ts = parse_tracestate(f"{k}={value}")
        assert ts is not None
        assert ts.get(k) == value
        assert ts.to_header() == f"{k}={value}"


@pytest.mark.parametrize(
    "headers",
    [["foo=1,foo=1"], ["foo=1,foo=2"], ["foo=1", "foo=1"], ["foo=1", "foo=2"]],
)
def test_duplicated_key_still_propagates_its_first_member(headers: list[str]) -> None:
    ts = parse_tracestate(headers)
    assert ts is not None
    assert ts.items() == (("foo", "1"),)
    assert ts.to_header() == "foo=1"


def test_duplicates_count_towards_the_32_member_limit() -> None:
    assert parse_tracestate(",".join(["a=1"] * 32)) is not None
    assert parse_tracestate(",".join(["a=1"] * 33)) is None


@pytest.mark.parametrize(
    ("second", "kept"),
    [
        ("z" * 256 + "=1", True),
        ("z" * 257 + "=1", False),
        ("t" * 241 + "@" + "v" * 14 + "=1", True),
        ("t" * 242 + "@" + "v" * 14 + "=1", False),
        ("0" * 256 + "=1", True),
    ],
)
def test_key_length_limit_applies_to_each_key_across_header_lines(second: str, kept: bool) -> None:
    """A key over 256 characters in a later header line drops the whole combined list."""
    ts = parse_tracestate(["foo=1", second])
    if kept:
        assert ts is not None
        assert ts.get("foo") == "1"
    else:
        assert ts is None


def test_member_limit_applies_across_header_lines() -> None:
    lines = [",".join(f"bar{i:02d}={i:02d}" for i in range(s, s + 10)) for s in (1, 11, 21)]
    ok = [*lines, "bar31=31,bar32=32"]
    ts = parse_tracestate(ok)
    assert ts is not None
    assert len(ts) == 32
    assert ts.get("bar01") == "01"
    assert parse_tracestate([*lines, "bar31=31,bar32=32,bar33=33"]) is None


def test_empty_header_line_does_not_hide_the_others() -> None:
    for lines in (["foo=1", ""], ["", "foo=1"]):
        ts = parse_tracestate(lines)
        assert ts is not None
        assert ts.get("foo") == "1"


def test_value_may_contain_inner_spaces_and_punctuation() -> None:
    ts = parse_tracestate("k=a b:c;d!~")
    assert ts is not None
    assert ts.get("k") == "a b:c;d!~"


def test_32_members_are_allowed() -> None:
    header = ",".join(f"k{i}=v" for i in range(32))
    ts = parse_tracestate(header)
    assert ts is not None
    assert len(ts) == 32


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (",".join(f"k{i}=v" for i in range(33)), "more than 32 members"),
        ("A=1", "uppercase key"),
        ("foo.bar=1", "dot in key"),
        ("foo =1", "space inside the member before '='"),
        ("@foo=1,bar=2", "key starting with @"),
        ("_a=1", "key starting with an underscore"),
        ("a=", "empty value"),
        ("a", "no equals sign"),
        ("a=b=c", "equals sign in value"),
        ("a=\x7f", "DEL in value"),
        ("a=é", "non-ASCII value"),
        ("k" + "x" * 256 + "=1", "key longer than 256"),
        ("t" * 242 + "@" + "v" * 14 + "=1", "vendor key longer than 256"),
        ("foo=,bar=3", "empty value invalidates the whole list"),
        ("k=" + "v" * 257, "value longer than 256"),
        ("a=1,bad key=2", "one bad member invalidates all"),
    ],
)
def test_invalid_tracestate_is_dropped(value: str, why: str) -> None:
    assert parse_tracestate(value) is None, why


def test_whitespace_around_members_is_not_part_of_the_value() -> None:
    ts = parse_tracestate("a=1 ,b=x ")
    assert ts is not None
    assert ts.get("a") == "1"
    assert ts.get("b") == "x"


def test_value_with_trailing_space_inside_member_is_invalid() -> None:
    # OWS around a member is stripped, so a value ending in a space can only
    # appear when built programmatically.
    with pytest.raises(ValueError, match="invalid"):
        TraceState([("a", "x ")])


def test_longest_valid_key_and_value() -> None:
    key = "k" + "x" * 255
    ts = parse_tracestate(f"{key}={'v' * 256}")
    assert ts is not None
    assert ts.get(key) == "v" * 256


def test_absent_or_all_empty_tracestate_is_none() -> None:
    assert parse_tracestate(None) is None
    assert parse_tracestate(" , ,") is None


def test_update_moves_the_key_to_the_left() -> None:
    ts = parse_tracestate("a=1,b=2,c=3")
    assert ts is not None
    assert ts.update("c", "9").items() == (("c", "9"), ("a", "1"), ("b", "2"))


def test_update_adds_a_new_key_on_the_left() -> None:
    ts = parse_tracestate("a=1")
    assert ts is not None
    assert ts.update("z", "0").items() == (("z", "0"), ("a", "1"))


def test_update_over_32_removes_the_rightmost_member() -> None:
    ts = parse_tracestate(",".join(f"k{i}=v" for i in range(32)))
    assert ts is not None
    updated = ts.update("new", "x")
    assert len(updated) == 32
    assert updated.items()[0] == ("new", "x")
    assert updated.get("k31") is None
    assert updated.get("k30") == "v"


def test_update_refuses_invalid_members() -> None:
    with pytest.raises(ValueError, match="invalid"):
        TraceState().update("Bad", "x")
    with pytest.raises(ValueError, match="invalid"):
        TraceState().update("ok", "a,b")


def test_delete_removes_a_key() -> None:
    ts = parse_tracestate("a=1,b=2")
    assert ts is not None
    assert ts.delete("a").items() == (("b", "2"),)


def test_to_header_round_trips() -> None:
    ts = parse_tracestate("a=1,b=2")
    assert ts is not None
    assert ts.to_header() == "a=1,b=2"


def test_to_header_truncates_long_members_first() -> None:
    long_member = ("big", "x" * 200)
    small = [(f"k{i}", "v" * 20) for i in range(15)]  # 15 * 24 = 360 chars
    ts = TraceState([small[0], long_member, *small[1:], ("last", "y" * 100)])
    header = ts.to_header()
    assert len(header) <= 512
    assert "big=" not in header
    assert header.startswith("k0=")
    assert "last=" in header


def test_to_header_truncates_from_the_right_after_long_members() -> None:
    ts = TraceState([(f"k{i:02d}", "v" * 100) for i in range(10)])  # 104 chars each
    header = ts.to_header()
    assert len(header) <= 512
    assert header.split(",")[0].startswith("k00=")
    assert "k09=" not in header
    assert header.count(",") == 3  # four members fit into 512


def test_constructor_refuses_duplicates_and_more_than_32() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        TraceState([("a", "1"), ("a", "2")])
    with pytest.raises(ValueError, match="32"):
        TraceState([(f"k{i}", "v") for i in range(33)])
