"""Attribute values of OTLP spans: the limits ingest enforces, cleaning text so
that it can be stored, and protobuf ``AnyValue`` to Python and back."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from typing import Any, Final

from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from crosstrace.server.errors import BadRequest
from crosstrace.server.model import ATTR_GLOBAL_REQUEST_ID, ATTR_REQUEST_ID

__all__ = [
    "FLAG_RAW_BYTES",
    "INDEXED_ATTRIBUTES",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_ID_LENGTH",
    "MAX_NAME_BYTES",
    "MAX_VALUE_DEPTH",
    "UNKNOWN_SERVICE",
    "BatchDecodeError",
    "Rejected",
    "any_value",
    "cap_name",
    "clean_float",
    "clean_str",
    "is_indexed",
    "key_values",
    "pb_attrs",
    "pb_value",
    "raw_value",
    "too_deep",
]

#: ``service.name`` used when a resource carries none (the OTel SDK default).
UNKNOWN_SERVICE: Final = "unknown_service"
#: Deepest nesting of array / kvlist attribute values accepted.
MAX_VALUE_DEPTH: Final = 16
#: Longest span / service name kept, in UTF-8 bytes; longer names are cut. Names
#: are indexed by the stores, and PostgreSQL refuses index rows beyond ~2.7 kB.
MAX_NAME_BYTES: Final = 1024
#: Longest project / domain / user id accepted; a record with a longer one is
#: rejected (these ids are indexed columns, and real ones are 32-64 characters).
MAX_ID_LENGTH: Final = 255
#: Batch flag: ``bytes`` attribute values were Python bytes (a ``SpanRecord``
#: writer) and read back as bytes; without it they read back as base64 text, the
#: way OTLP ingest has always presented them.
FLAG_RAW_BYTES: Final = 1

#: Attribute keys searchable through the index (plus every ``openstack.*`` key).
INDEXED_ATTRIBUTES: Final = frozenset(
    {
        "http.request.method",
        "http.response.status_code",
        "http.route",
        "db.system",
        "db.operation.name",
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "messaging.destination.name",
        "exception.type",
        "error.type",
        "peer.service",
    }
)
_NOT_INDEXED: Final = frozenset({ATTR_REQUEST_ID, ATTR_GLOBAL_REQUEST_ID})  # own index
INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
_INDEX_CACHE_MAX: Final = 10_000


class Rejected(BadRequest):
    """One record is invalid; it is counted and skipped."""


class BatchDecodeError(BadRequest, ValueError):
    """The body is not a readable OTLP protobuf request."""


# ------------------------------------------------------------------ value helpers


def clean_str(s: str) -> str:
    """Make *s* storable: no NUL, no lone surrogate."""
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def clean_float(d: float) -> float | str:
    """Non-finite doubles as the strings OTLP/JSON uses (JSON cannot hold them)."""
    if math.isfinite(d):
        return d
    if d != d:  # noqa: PLR0124 - NaN test
        return "NaN"
    return "Infinity" if d > 0 else "-Infinity"


def cap_name(name: str) -> str:
    """*name* cut to at most MAX_NAME_BYTES of UTF-8 (on a character boundary)."""
    if len(name) * 4 <= MAX_NAME_BYTES:
        return name
    raw = name.encode("utf-8")
    if len(raw) <= MAX_NAME_BYTES:
        return name
    return raw[:MAX_NAME_BYTES].decode("utf-8", "ignore")


def pb_value(v: Any, depth: int = 0, *, raw_bytes: bool = False, strict: bool = True) -> Any:
    """A protobuf ``AnyValue`` as a Python value. Values nested deeper than
    MAX_VALUE_DEPTH raise :class:`Rejected` when *strict*, else read as ``None``."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        s: str = v.string_value
        return s if s.isascii() and "\x00" not in s else clean_str(s)
    if kind == "int_value" or kind == "bool_value":  # noqa: PLR1714 - hot path
        return getattr(v, kind)
    if kind == "double_value":
        return clean_float(v.double_value)
    if kind is None:
        return None
    if kind == "bytes_value":
        return bytes(v.bytes_value) if raw_bytes else base64.b64encode(v.bytes_value).decode()
    if depth >= MAX_VALUE_DEPTH:
        if strict:
            raise Rejected(f"attribute value nested deeper than {MAX_VALUE_DEPTH}")
        return None
    if kind == "array_value":
        return [
            pb_value(x, depth + 1, raw_bytes=raw_bytes, strict=strict) for x in v.array_value.values
        ]
    if kind == "kvlist_value":
        return {
            clean_str(kv.key): pb_value(kv.value, depth + 1, raw_bytes=raw_bytes, strict=strict)
            for kv in v.kvlist_value.values
        }
    return None  # string_value_strindex: only meaningful inside profiles


def pb_attrs(kvs: Iterable[Any], *, raw_bytes: bool = False, strict: bool = True) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict (the last of duplicate keys wins)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        key: str = kv.key
        if "\x00" in key:
            key = clean_str(key)
        v = kv.value
        s: str = v.string_value
        if s and s.isascii() and "\x00" not in s:
            out[key] = s
        else:
            out[key] = pb_value(v, raw_bytes=raw_bytes, strict=strict)
    return out


def raw_value(raw: bytes, *, raw_bytes: bool = False) -> Any:
    """A raw ``AnyValue`` encoding as a Python value (never raises)."""
    if len(raw) >= 2 and raw[0] == 0x0A and raw[1] == len(raw) - 2:  # short string
        try:
            s = raw[2:].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return s if "\x00" not in s else clean_str(s)
    try:
        return pb_value(AnyValue.FromString(raw), raw_bytes=raw_bytes, strict=False)
    except (DecodeError, RecursionError, ValueError):
        return None


def too_deep(raw: bytes) -> bool:
    """Whether an attribute value (valid: the request was parsed whole) nests
    deeper than MAX_VALUE_DEPTH."""
    try:
        pb_value(AnyValue.FromString(raw))
    except Rejected:
        return True
    return False


_indexed_cache: dict[str, bool] = {}


def is_indexed(key: str) -> bool:
    """Whether ``attr.KEY=...`` searches go through the attribute index."""
    hit = _indexed_cache.get(key)
    if hit is None:
        hit = (key in INDEXED_ATTRIBUTES or key.startswith("openstack.")) and (
            key not in _NOT_INDEXED
        )
        if len(_indexed_cache) < _INDEX_CACHE_MAX:
            _indexed_cache[key] = hit
    return hit


def any_value(value: Any, depth: int = 0) -> AnyValue:
    """A Python value as a protobuf ``AnyValue`` (ints beyond int64 and unknown
    types as text, so that any record can be stored)."""
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes | bytearray | memoryview):
        return AnyValue(bytes_value=bytes(value))
    if value is None:
        return AnyValue()
    if depth < MAX_VALUE_DEPTH:
        if isinstance(value, list | tuple):
            return AnyValue(array_value=ArrayValue(values=[any_value(v, depth + 1) for v in value]))
        if isinstance(value, dict):
            return AnyValue(kvlist_value=KeyValueList(values=key_values(value, depth + 1)))
    return AnyValue(string_value=str(value))


def key_values(attrs: dict[str, Any], depth: int = 0) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=any_value(v, depth)) for k, v in attrs.items()]
