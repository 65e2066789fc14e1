"""Span chunks with ids and times in columns (``store/columns.py``), their zstd
frames, and the chunks written in the earlier form."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import assume, given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from crosstrace.server.batch.scan import from_records, scan_traces
from crosstrace.server.batch.spanbatch import encode_payload
from crosstrace.server.model import SpanRecord
from crosstrace.server.store.codec import (
    CHUNK_FORMAT_PB,
    CHUNK_FORMAT_PB_DICT,
    attr_needles,
    chunk_compressor,
    compress_chunk,
    decode_chunk,
    decode_rid,
    encode_rid,
)
from crosstrace.server.store.columns import decode_columns, encode_columns, unpack_columns

NOW = time.time_ns()
MS = 10**6
TRACE = bytes(range(1, 17))


def records() -> list[SpanRecord]:
    def rec(n: int, parent: int | None, service: str, **kw: Any) -> SpanRecord:
        fields: dict[str, Any] = {
            "trace_id": TRACE,
            "span_id": n.to_bytes(8, "big"),
            "parent_span_id": parent.to_bytes(8, "big") if parent else None,
            "name": f"op {n}" * (n % 3 + 1),
            "kind": n % 6,
            "start_ns": NOW + n * MS,
            "end_ns": NOW + n * MS + 7 * n,
            "service": service,
            "attributes": {"n": n, "url.path": f"/v2/{n}"},
            "resource": {"service.name": service},
        }
        return SpanRecord(**(fields | kw))

    return [
        rec(1, None, "nova-api", trace_state="a=1"),
        rec(2, 1, "nova-api", status_code=2, status_message="bad"),
        rec(3, 2, "glance-api", events=[{"time_ns": NOW, "name": "e", "attributes": {}}]),
        rec(4, 3, "glance-api", end_ns=NOW),  # ends before it starts
        rec(5, None, "glance-api", name="x" * 300),  # a name longer than 127 bytes
    ]


def test_columns_give_back_each_span_byte_for_byte() -> None:
    """Every span's bytes come back exactly as they arrived, whatever its
    optional fields, and read as the same records as the earlier form."""
    batch = from_records(records())
    (group,) = batch.groups.values()
    payload = encode_columns(group, batch)
    _, _, _, _, _, _, _, rests, whole = msgpack.unpackb(payload)
    assert whole == []  # all in the usual field order: ids and times in columns
    assert all(TRACE not in rest for rest in rests)
    flags, segments = unpack_columns(TRACE, payload)
    assert flags == batch.flags
    assert [wire for *_, wire in segments] == list(group.wire.values())
    restored = decode_columns(TRACE, payload)
    assert restored == batch.records()
    earlier = bytes((CHUNK_FORMAT_PB,)) + zstandard.ZstdCompressor().compress(
        encode_payload(group, batch)
    )
    assert restored == decode_chunk(TRACE, earlier, str)


def test_decoding_only_the_spans_holding_a_needle() -> None:
    """With *holding*, exactly the spans whose own bytes hold one of the needles
    are decoded, across segments of several services; none when no span does."""
    batch = from_records(records())
    (group,) = batch.groups.values()
    payload = encode_columns(group, batch)
    every = decode_columns(TRACE, payload)
    picked = decode_columns(TRACE, payload, [b"/v2/2", b"/v2/4"])
    assert picked == [s for s in every if s.attributes["url.path"] in ("/v2/2", "/v2/4")]
    assert [s.service for s in picked] == ["nova-api", "glance-api"]
    # The resource's bytes are not the span's: its service name picks nothing.
    assert decode_columns(TRACE, payload, [b"glance-api"]) == []


def test_spans_in_another_field_order_are_kept_whole() -> None:
    """A span whose fields come in another order than the usual one is stored
    as it came and reads back the same."""
    sp = Span(
        trace_id=TRACE,
        span_id=b"\x00" * 7 + b"\x09",
        name="late fields",
        start_time_unix_nano=NOW,
        end_time_unix_nano=NOW + MS,
    )
    late = Span(name=sp.name, start_time_unix_nano=NOW, end_time_unix_nano=NOW + MS)
    reordered = (
        late.SerializeToString() + Span(trace_id=TRACE, span_id=sp.span_id).SerializeToString()
    )
    req = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[sp])])]
    ).SerializeToString()
    batch = scan_traces(req, lambda reason: None)
    (group,) = batch.groups.values()
    group.wire = {seg: [reordered] for seg in group.wire}
    payload = encode_columns(group, batch)
    assert msgpack.unpackb(payload)[-1] == [0]
    assert unpack_columns(TRACE, payload)[1][0][3] == [reordered]
    (back,) = decode_columns(TRACE, payload)
    assert (back.span_id, back.name, back.start_ns, back.end_ns) == (
        sp.span_id,
        "late fields",
        NOW,
        NOW + MS,
    )


def test_chunk_frames_with_and_without_a_dictionary() -> None:
    """Chunks are framed without zstd's magic number, with and without the
    store's dictionary; chunks in standard frames (written before) still read."""
    batch = from_records(records())
    (group,) = batch.groups.values()
    want = batch.records()
    samples = [encode_columns(group, batch) + bytes([i]) * i for i in range(200)]
    zdict = zstandard.train_dictionary(4096, samples)
    plain = compress_chunk(encode_columns(group, batch), None)
    framed = compress_chunk(encode_columns(group, batch), (7, chunk_compressor(zdict)))
    assert plain[0] == CHUNK_FORMAT_PB
    assert framed[0] == CHUNK_FORMAT_PB_DICT
    assert framed[1:5] == (7).to_bytes(4, "big")
    for chunk in (plain, framed):
        assert b"\x28\xb5\x2f\xfd" not in chunk[:9]
        assert decode_chunk(TRACE, chunk, str, lambda did: zdict) == want
    earlier = bytes((CHUNK_FORMAT_PB_DICT,)) + (7).to_bytes(4, "big")
    earlier += zstandard.ZstdCompressor(dict_data=zdict).compress(encode_payload(group, batch))
    assert decode_chunk(TRACE, earlier, str, lambda did: zdict) == want


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("compute-7.ctl", (b"compute-7.ctl",)),
        ("quotas", (b"quotas",)),  # letters, but not base64 (length) nor hex
        (
            "req-5f1c0c7e-2c5b-4c53-9c4e-6d9b0a7e2f11",
            (b"req-5f1c0c7e-2c5b-4c53-9c4e-6d9b0a7e2f11",),
        ),
        ("café au lait", ("café au lait".encode(),)),
        ("test", (b"test", b"\xb5\xeb-")),  # a string, or bytes as base64
        ("AQI=", (b"AQI=", b"\x01\x02")),
        ("deadbeef", (b"deadbeef", b"u\xe6\x9dm\xe7\x9f", b"\xde\xad\xbe\xef")),
        ("0102", None),  # a number's text too
        ("42", None),  # an int could have this text
        ("-1.5e3", None),  # a double
        ("nan", None),
        ("false", None),  # a bool
        ("a\ufffdb", None),  # made by cleaning a NUL
    ],
)
def test_attr_needles_are_the_bytes_a_matching_value_is_stored_as(
    text: str, needles: tuple[bytes, ...] | None
) -> None:
    assert attr_needles(text) == needles


@given(st.uuids(), st.text(max_size=40))
def test_request_id_keys_give_back_the_id(u: uuid.UUID, text: str) -> None:
    rid = f"req-{u}"
    key = encode_rid(rid)
    assert key == u.bytes
    assert decode_rid(key) == rid
    assume(not text.startswith("req-"))
    other = encode_rid(text)
    if other is not None:  # any other text is kept as text (never 16 bytes)
        assert len(other) != 16
        assert decode_rid(other) == text
