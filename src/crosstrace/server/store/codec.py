"""Compact encodings shared by the SQLite and PostgreSQL stores.

Spans are not stored one row each: every (trace, batch) group of spans becomes one
*chunk*: the spans' OTLP protobuf bytes as they arrived, with their resource,
scope and service, their ids and times in columns (``columns.py``), compressed
with zstd, using a dictionary trained on the store's first chunks once it has one
(chunks are small, ~1-30 spans, so a dictionary halves them). The zstd frame
leaves out what the chunk's first bytes already say (its magic number and
dictionary id). Fetching a trace reads its few chunks by trace id. Chunks of the
forms crosstrace wrote before are still read: the spans' bytes as they came, in a
standard zstd frame (told apart by its magic number, which no frame without one
starts with: that byte would set a reserved bit of the frame header); before
that, a msgpack array of compact span tuples.

Also here: the 16-byte key form of request ids, the 64-bit hash used by the
attribute index, the posting form of index entries (one row for every chunk of a
batch that has a key) and the opaque search cursor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack
import zstandard

from crosstrace.ids import REQUEST_ID_PREFIX, REQUEST_ID_RE
from crosstrace.server.batch.spanbatch import decode_payload
from crosstrace.server.model import SpanRecord
from crosstrace.server.store.columns import decode_columns

__all__ = [
    "CHUNK_FORMAT",
    "CHUNK_FORMAT_DICT",
    "CHUNK_FORMAT_PB",
    "CHUNK_FORMAT_PB_DICT",
    "HASH_WIDTH",
    "KEY_WIDTH",
    "MERGED_ZSTD_LEVEL",
    "attr_hash",
    "attr_text",
    "chunk_compressor",
    "chunk_payload",
    "compress_chunk",
    "decode_chunk",
    "decode_cursor",
    "decode_rid",
    "encode_chunk",
    "encode_cursor",
    "encode_rid",
    "pack_blob",
    "pack_ints",
    "pack_keys",
    "pack_posting",
    "pack_rids",
    "posting_from_bytes",
    "posting_has",
    "posting_ids",
    "posting_last",
    "rid_term",
    "unpack_blob",
    "unpack_ints",
    "unpack_keys",
    "unpack_rids",
]

#: First byte of a chunk of span tuples compressed without a dictionary (older)...
CHUNK_FORMAT = 1
#: ... and with one of the store's trained zstd dictionaries (id in the next 4 bytes).
CHUNK_FORMAT_DICT = 2
#: The same two for chunks of protobuf spans: ``columns.py`` in a zstd frame
#: without magic number and dictionary id (earlier: ``spanbatch.encode_payload``
#: in a standard frame).
CHUNK_FORMAT_PB = 3
CHUNK_FORMAT_PB_DICT = 4
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: zstd level: 3 is zstd's default, close to level 1 in speed and smaller.
ZSTD_LEVEL = 3
#: zstd level of the chunks the writer merges (``merge.py``), which it compresses
#: again anyway: 5 (lazy matching) takes ~5 % off them for ~2 us more per span.
MERGED_ZSTD_LEVEL = 5
#: Longest request id or attribute value that is indexed (longer ones are skipped).
MAX_INDEXED_TEXT = 512

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # zstd (de)compressor objects are not safe to share between threads.
    c: zstandard.ZstdCompressor | None = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


_CHUNK_PARAMS = zstandard.ZstdCompressionParameters.from_level(
    ZSTD_LEVEL, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_dict_id=False
)


def chunk_compressor(
    zdict: zstandard.ZstdCompressionDict | None = None, level: int = ZSTD_LEVEL
) -> zstandard.ZstdCompressor:
    """A compressor for span chunks (with the store's dictionary *zdict*); one per
    thread, as zstd compressors are not safe to share."""
    params = (
        _CHUNK_PARAMS
        if level == ZSTD_LEVEL
        else zstandard.ZstdCompressionParameters.from_level(
            level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_dict_id=False
        )
    )
    return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)


def _chunk_compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "cc", None)
    if c is None:
        c = _local.cc = chunk_compressor()
    return c


def _chunk_decompressor(zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdDecompressor:
    cache: dict[int, tuple[Any, zstandard.ZstdDecompressor]] | None
    cache = getattr(_local, "cd", None)
    if cache is None:
        cache = _local.cd = {}
    hit = cache.get(id(zdict))
    if hit is None or hit[0] is not zdict:
        if len(cache) > 64:
            cache.clear()
        d = zstandard.ZstdDecompressor(dict_data=zdict, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
        hit = cache[id(zdict)] = (zdict, d)
    return hit[1]


def _sanitize(value: Any) -> Any:
    """Make *value* packable: ints outside 64 bits and unknown types become text."""
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, bool | float | str | bytes) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    return str(value)


def _packb(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (OverflowError, TypeError, ValueError):
        return msgpack.packb(_sanitize(obj), use_bin_type=True)  # type: ignore[no-any-return]


def pack_blob(obj: Any) -> bytes:
    """msgpack + zstd of any JSON-like value (bytes kept as bytes)."""
    return _compressor().compress(_packb(obj))


def unpack_blob(data: bytes) -> Any:
    """Inverse of :func:`pack_blob`."""
    return msgpack.unpackb(
        _decompressor().decompress(data), raw=False, strict_map_key=False, use_list=True
    )


def encode_chunk(spans: Sequence[SpanRecord], intern: Callable[[str], int]) -> bytes:
    """Encode the spans of ONE trace into a chunk payload (msgpack, not yet
    compressed: see :func:`compress_chunk`).

    *intern* maps a service or operation name to its id in the names table. Each
    distinct resource dict is stored once per chunk.
    """
    base = min(s.start_ns for s in spans)
    resources: list[dict[str, Any]] = []
    res_index: dict[int, int] = {}
    rows = []
    for s in spans:
        res = s.resource
        ri = res_index.get(id(res))
        if ri is None:
            try:
                ri = resources.index(res)
            except ValueError:
                ri = len(resources)
                resources.append(res)
            res_index[id(res)] = ri
        rows.append(
            (
                s.span_id,
                s.parent_span_id,
                intern(s.service),
                intern(s.name),
                s.kind,
                s.start_ns - base,
                s.end_ns - s.start_ns,
                s.status_code,
                s.status_message,
                s.attributes,
                s.events,
                s.links,
                ri,
                s.scope,
                s.trace_state,
            )
        )
    return _packb((base, resources, rows))


def compress_chunk(raw: bytes, zdict: tuple[int, zstandard.ZstdCompressor] | None) -> bytes:
    """Frame a ``columns.encode_columns`` payload: format byte, then zstd, with
    the store's trained dictionary (its id in 4 bytes) when it has one (the
    compressor from :func:`chunk_compressor`)."""
    if zdict is None:
        return bytes((CHUNK_FORMAT_PB,)) + _chunk_compressor().compress(raw)
    dict_id, compressor = zdict
    return bytes((CHUNK_FORMAT_PB_DICT,)) + dict_id.to_bytes(4, "big") + compressor.compress(raw)


def chunk_payload(
    data: bytes, zdict: Callable[[int], zstandard.ZstdCompressionDict] | None
) -> bytes | None:
    """The ``columns.encode_columns`` payload of a chunk framed by
    :func:`compress_chunk`, or ``None`` for a chunk of an older form (or one
    framed with a dictionary when *zdict* is ``None``)."""
    fmt = data[:1]
    if (
        fmt == bytes((CHUNK_FORMAT_PB_DICT,))
        and zdict is not None
        and len(data) > 9
        and data[5:9] != _ZSTD_MAGIC
    ):
        d = zdict(int.from_bytes(data[1:5], "big"))
        return _chunk_decompressor(d).decompress(data[5:])
    if fmt == bytes((CHUNK_FORMAT_PB,)) and data[1:5] != _ZSTD_MAGIC:
        return _chunk_decompressor(None).decompress(data[1:])
    return None


def _dict_decompressor(zdict: zstandard.ZstdCompressionDict) -> zstandard.ZstdDecompressor:
    cache: dict[int, tuple[zstandard.ZstdCompressionDict, zstandard.ZstdDecompressor]] | None
    cache = getattr(_local, "dd", None)
    if cache is None:
        cache = _local.dd = {}
    hit = cache.get(id(zdict))
    if hit is None or hit[0] is not zdict:
        if len(cache) > 64:
            cache.clear()
        hit = cache[id(zdict)] = (zdict, zstandard.ZstdDecompressor(dict_data=zdict))
    return hit[1]


def decode_chunk(
    trace_id: bytes,
    data: bytes,
    name: Callable[[int], str],
    zdict: Callable[[int], zstandard.ZstdCompressionDict] | None = None,
) -> list[SpanRecord]:
    """Decode a chunk framed by :func:`compress_chunk` (or an older one); *name*
    maps ids back to names, *zdict* dictionary ids to dictionaries. An empty chunk
    (index entries carried over from an older schema) holds no spans."""
    if not data:
        return []
    payload = chunk_payload(data, zdict)
    if payload is not None:
        return decode_columns(trace_id, payload)
    fmt = data[0]
    if fmt in (CHUNK_FORMAT, CHUNK_FORMAT_PB):
        raw = _decompressor().decompress(data[1:])
    elif fmt in (CHUNK_FORMAT_DICT, CHUNK_FORMAT_PB_DICT) and zdict is not None and len(data) > 5:
        d = zdict(int.from_bytes(data[1:5], "big"))
        raw = _dict_decompressor(d).decompress(data[5:])
    else:
        raise ValueError(f"unknown span chunk format {data[:1]!r}")
    if fmt >= CHUNK_FORMAT_PB:
        return decode_payload(trace_id, raw, name)
    base, resources, rows = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    out = []
    for (
        span_id,
        parent,
        svc,
        op,
        kind,
        start,
        dur,
        status,
        message,
        attrs,
        events,
        links,
        ri,
        scope,
        state,
    ) in rows:
        start_ns = base + start
        out.append(
            SpanRecord(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=parent,
                name=name(op),
                kind=kind,
                start_ns=start_ns,
                end_ns=start_ns + dur,
                service=name(svc),
                status_code=status,
                status_message=message,
                attributes=attrs,
                events=events,
                links=links,
                resource=resources[ri],
                scope=scope,
                trace_state=state,
            )
        )
    return out


_RID_PREFIX_LEN = len(REQUEST_ID_PREFIX)


def encode_rid(request_id: str) -> bytes | None:
    """Index key of a request id: the 16 UUID bytes of a ``req-<uuid>`` id, else a
    NUL byte and the UTF-8 text (never 16 bytes long); ``None`` if unindexable."""
    if REQUEST_ID_RE.fullmatch(request_id):
        return uuid.UUID(request_id[_RID_PREFIX_LEN:]).bytes
    if not request_id or len(request_id) > MAX_INDEXED_TEXT or "\x00" in request_id:
        return None
    raw = b"\x00" + request_id.encode("utf-8", "surrogatepass")
    return raw + b"\x00" if len(raw) == 16 else raw


def decode_rid(key: bytes) -> str:
    """Inverse of :func:`encode_rid`."""
    if len(key) == 16:  # str(uuid.UUID(bytes=key)), four times faster
        h = key.hex()
        return f"{REQUEST_ID_PREFIX}{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    raw = key[1:-1] if len(key) == 17 and key.endswith(b"\x00") else key[1:]
    return raw.decode("utf-8", "surrogatepass")


def rid_term(key: bytes) -> int:
    """Signed 64-bit search term of a request id key (:func:`encode_rid`) in the
    PostgreSQL attribute array: the first 8 bytes of its MD5, which SQL computes
    too (the schema migration does)."""
    digest = hashlib.md5(key, usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def pack_rids(rids: dict[bytes, int]) -> bytes:
    """Request id keys with their kind bits, packed: kind, 2-byte length, key, ..."""
    return b"".join(
        bytes((kind,)) + len(key).to_bytes(2, "big") + key for key, kind in rids.items()
    )


#: Bytes per entry of a chunk's packed keys (service id, -operation id) and
#: attribute hashes (:func:`pack_ints`).
KEY_WIDTH = 4
HASH_WIDTH = 8


def pack_ints(values: Iterable[int], width: int) -> bytes:
    """Signed integers as *width* bytes each (big-endian)."""
    return b"".join(v.to_bytes(width, "big", signed=True) for v in values)


def unpack_ints(data: bytes, width: int) -> list[int]:
    """Inverse of :func:`pack_ints`."""
    return [
        int.from_bytes(data[i : i + width], "big", signed=True) for i in range(0, len(data), width)
    ]


#: First byte of a chunk's keys packed as varints (:func:`pack_keys`). Keys of
#: the earlier form are 4 bytes each and could only start with it for an
#: operation id above 2^31 - 2^24, which that form never held.
_VARINT_KEYS = 0x80


def pack_keys(keys: Iterable[int]) -> bytes:
    """A chunk's keys (service ids, -operation ids) as a marker byte and
    zigzag varints (1-2 bytes for most ids)."""
    out = bytearray((_VARINT_KEYS,))
    for k in keys:
        z = k << 1 if k >= 0 else (-k << 1) - 1
        while z >= 0x80:
            out.append(z & 0x7F | 0x80)
            z >>= 7
        out.append(z)
    return bytes(out)


def unpack_keys(data: bytes) -> list[int]:
    """Inverse of :func:`pack_keys`; keys of the earlier form (:data:`KEY_WIDTH`
    bytes each) read too."""
    if not data or data[0] != _VARINT_KEYS:
        return unpack_ints(data, KEY_WIDTH)
    out = []
    z = shift = 0
    for b in data[1:]:
        z |= (b & 0x7F) << shift
        if b >= 0x80:
            shift += 7
            continue
        out.append(z >> 1 if not z & 1 else -((z + 1) >> 1))
        z = shift = 0
    return out


def pack_posting(ids: Sequence[int]) -> tuple[int, bytes | None]:
    """Chunk ids (ascending, distinct) as a posting: the first id, and a bitmap
    of the ids after it up to the last (bit ``d % 8`` of byte ``d // 8`` for id
    ``first + 1 + d``; ``None`` when there is only the first). SQL tests an id
    with ``substr`` and ``instr`` alone (``read.py``)."""
    first = ids[0]
    if len(ids) == 1:
        return first, None
    more = bytearray((ids[-1] - first + 7) // 8)
    for c in ids[1:]:
        d = c - first - 1
        more[d >> 3] |= 1 << (d & 7)
    return first, bytes(more)


def posting_ids(first: int, more: bytes | None) -> list[int]:
    """Inverse of :func:`pack_posting`."""
    if not more:
        return [first]
    return [
        first,
        *(
            first + 1 + 8 * i + b
            for i, byte in enumerate(more)
            if byte
            for b in range(8)
            if byte >> b & 1
        ),
    ]


def posting_has(first: int, more: bytes | None, chunk_id: int) -> bool:
    """Whether the posting (*first*, *more*) holds *chunk_id*."""
    if chunk_id == first:
        return True
    d = chunk_id - first - 1
    return (
        bool(more) and 0 <= d < 8 * len(more or b"") and bool((more or b"")[d >> 3] >> (d & 7) & 1)
    )


def posting_last(first: int, more: bytes | None) -> int:
    """The highest chunk id of the posting (*first*, *more*)."""
    if not more:
        return first
    return first + 8 * (len(more) - 1) + more[-1].bit_length()


def posting_from_bytes(more: bytes) -> bytes:
    """A posting's chunks after its first in the form of schema v8 (a byte per
    chunk, 1 = held) as the bitmap of :func:`pack_posting`."""
    held = [d for d, b in enumerate(more) if b]
    bits = bytearray((held[-1] + 8) // 8) if held else bytearray()
    for d in held:
        bits[d >> 3] |= 1 << (d & 7)
    return bytes(bits)


def unpack_rids(data: bytes) -> list[tuple[bytes, int]]:
    """Inverse of :func:`pack_rids`: (key, kind) pairs."""
    out = []
    i = 0
    while i + 3 <= len(data):
        kind, n = data[i], int.from_bytes(data[i + 1 : i + 3], "big")
        out.append((data[i + 3 : i + 3 + n], kind))
        i += 3 + n
    return out


def attr_text(value: Any) -> str | None:
    """The text an attribute value is searched by (``attr.KEY=VALUE``), or ``None``
    for values that are not indexed (lists, maps, very long text)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_INDEXED_TEXT else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        return value.hex() if len(value) <= MAX_INDEXED_TEXT // 2 else None
    return None


_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def attr_needles(text: str) -> tuple[bytes, ...] | None:
    """Bytes of which the payload of every chunk holding an attribute value of
    search text *text* (:func:`attr_text`) contains one, so that a chunk with
    none of them need not be decoded: the text itself, and the bytes a bytes
    value with that text (base64 or hex) holds. ``None`` when no such bytes are
    known: a text a number or a boolean could have, or one made by cleaning."""
    if "\ufffd" in text or text in ("true", "false"):
        return None
    try:
        float(text)
    except ValueError:
        pass
    else:
        return None
    try:
        needles = [text.encode("utf-8")]
    except UnicodeEncodeError:
        return None
    if _BASE64.fullmatch(text):
        needles.append(base64.b64decode(text))
    if _HEX.fullmatch(text):
        needles.append(bytes.fromhex(text))
    return tuple(needles)


def attr_hash(key: str, text: str) -> int:
    """Signed 64-bit hash of ``key=text`` for the attribute index (a collision
    between two different pairs has probability ~2^-64 per pair)."""
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass") + b"\x00" + text.encode("utf-8", "surrogatepass"),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def encode_cursor(start_ns: int, trace_id: bytes) -> str:
    """Opaque search cursor: base64 of the last returned (start, trace id)."""
    raw = msgpack.packb((start_ns, trace_id), use_bin_type=True)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, bytes]:
    """Inverse of :func:`encode_cursor`; ``ValueError`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        start_ns, trace_id = msgpack.unpackb(raw, raw=False)
    except (binascii.Error, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError("invalid cursor") from exc
    if type(start_ns) is not int or type(trace_id) is not bytes:
        raise ValueError("invalid cursor")
    return start_ns, trace_id
