"""Spans in the form the backend handles and stores them: grouped by trace, each
span kept as the OTLP protobuf bytes it arrived in.

Ingest is the hot path, and turning every span into Python objects only to turn it
into bytes again for the store cost most of it. So an OTLP protobuf request is read
twice by the upb parser, with two reduced schemas of the same wire format:

- one with each ``Span`` left as ``bytes``: the stored form of every span, cut out
  of the request in C, never re-encoded;
- one that reads only what the store's summary, indexes and checks need (ids,
  parent, name, kind, times, status code, and each attribute as the raw bytes of
  its ``KeyValue``).

What an attribute means to the store (indexed, a request or project id, a value
nested too deeply, or nothing) is worked out once per distinct ``KeyValue``
encoding and remembered, so the common attributes, which repeat from span to
span, cost one dictionary lookup each.

Both list the spans in wire order, so the two are zipped. The result is a
:class:`SpanBatch`: one :class:`TraceGroup` per trace, with the spans' bytes per
(resource, scope) :class:`Segment` and a small tuple of facts per span. The store
writes one chunk per group; fetching a trace turns its chunks back into
:class:`~crosstrace.server.model.SpanRecord` with :func:`segment_records`, which
normalises values the way the ingest contract says (see ``otlp.py``).

OTLP/JSON and the ``SpanRecord`` writers go the same way: :func:`from_records`
encodes records as an OTLP request and scans it like any other.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgpack
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from crosstrace.server.model import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
    STATUS_ERROR,
    SpanRecord,
)

__all__ = [
    "FLAG_RAW_BYTES",
    "INDEXED_ATTRIBUTES",
    "MAX_ID_LENGTH",
    "MAX_NAME_BYTES",
    "MAX_VALUE_DEPTH",
    "UNKNOWN_SERVICE",
    "BatchDecodeError",
    "Rejected",
    "Segment",
    "SpanBatch",
    "TraceGroup",
    "any_value",
    "cap_name",
    "clean_str",
    "decode_payload",
    "encode_payload",
    "from_records",
    "ids_digest",
    "is_indexed",
    "pb_attrs",
    "pb_value",
    "raw_value",
    "scan_traces",
    "segment_records",
]

log = logging.getLogger(__name__)

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
_ID_ATTRS: Final = (ATTR_PROJECT_ID, ATTR_DOMAIN_ID, ATTR_USER_ID)
_INT64_MAX: Final = 2**63 - 1
_ZERO_TRACE_ID: Final = bytes(16)
_ZERO_SPAN_ID: Final = bytes(8)
_MAX_KIND: Final = 5
_MAX_STATUS: Final = 2
_PARENT_KINDS: Final = (3, 4)  # CLIENT, PRODUCER: their children run elsewhere
#: First byte of an ``AnyValue`` whose value may nest (array, kvlist) or is bytes.
_TAG_NESTING: Final = 0x2A
_MISS: Final = object()
_RID_LOCAL: Final = 1
_RID_GLOBAL: Final = 2
_INDEX_CACHE_MAX: Final = 10_000


class Rejected(Exception):
    """One record is invalid; it is counted and skipped."""


class BatchDecodeError(ValueError):
    """The body is not a readable OTLP protobuf request."""


# ----------------------------------------------------------------- reduced schemas


def _build_schemas() -> dict[str, Any]:
    """Message classes of the reduced OTLP schemas (see the module docstring)."""
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    fd = descriptor_pb2.FileDescriptorProto(
        name="crosstrace_lean_otlp.proto", package="crosstrace.lean", syntax="proto3"
    )

    def message(
        name: str,
        fields: Sequence[tuple[str, int, int, int, str]],
        attrs_field: int | None = None,
    ) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, tname in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if tname:
                f.type_name = tname
        if attrs_field is not None:
            entry = m.nested_type.add(name="AttrsEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
            entry.field.add(name="value", number=2, type=F.TYPE_BYTES, label=opt)
            m.field.add(
                name="attrs",
                number=attrs_field,
                type=F.TYPE_MESSAGE,
                label=rep,
                type_name=f".crosstrace.lean.{name}.AttrsEntry",
            )

    # Spans as bytes.
    message("RawScope", [("scope", 1, F.TYPE_BYTES, opt, ""), ("spans", 2, F.TYPE_BYTES, rep, "")])
    message(
        "RawResource",
        [
            ("resource", 1, F.TYPE_BYTES, opt, ""),
            ("scopes", 2, F.TYPE_MESSAGE, rep, ".crosstrace.lean.RawScope"),
        ],
    )
    message("RawRequest", [("rs", 1, F.TYPE_MESSAGE, rep, ".crosstrace.lean.RawResource")])
    # Spans with the fields the store needs.
    message("Status", [("code", 3, F.TYPE_INT32, opt, "")])
    message("Event", [("time", 1, F.TYPE_FIXED64, opt, "")], attrs_field=3)
    message(
        "Link",
        [("trace_id", 1, F.TYPE_BYTES, opt, ""), ("span_id", 2, F.TYPE_BYTES, opt, "")],
        attrs_field=4,
    )
    message(
        "Span",
        [
            ("trace_id", 1, F.TYPE_BYTES, opt, ""),
            ("span_id", 2, F.TYPE_BYTES, opt, ""),
            ("parent", 4, F.TYPE_BYTES, opt, ""),
            ("name", 5, F.TYPE_STRING, opt, ""),
            ("kind", 6, F.TYPE_INT32, opt, ""),
            ("start", 7, F.TYPE_FIXED64, opt, ""),
            ("end", 8, F.TYPE_FIXED64, opt, ""),
            ("events", 11, F.TYPE_MESSAGE, rep, ".crosstrace.lean.Event"),
            ("links", 13, F.TYPE_MESSAGE, rep, ".crosstrace.lean.Link"),
            ("status", 15, F.TYPE_MESSAGE, opt, ".crosstrace.lean.Status"),
            ("attrs", 9, F.TYPE_BYTES, rep, ""),
        ],
    )
    message("Scope", [("spans", 2, F.TYPE_MESSAGE, rep, ".crosstrace.lean.Span")])
    message("Resource", [("scopes", 2, F.TYPE_MESSAGE, rep, ".crosstrace.lean.Scope")])
    message("Request", [("rs", 1, F.TYPE_MESSAGE, rep, ".crosstrace.lean.Resource")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"crosstrace.lean.{name}"))
        for name in ("RawRequest", "Request")
    }


_SCHEMAS: Final = _build_schemas()
_RawRequest: Final = _SCHEMAS["RawRequest"]
_LeanRequest: Final = _SCHEMAS["Request"]


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


def _too_deep(raw: bytes) -> bool:
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


# ------------------------------------------------------------------------ batches


class Segment:
    """Spans' shared context within a batch: service, resource and scope (as the
    protobuf bytes of ``Resource`` and ``InstrumentationScope``)."""

    __slots__ = ("resource", "scope", "service")

    def __init__(self, service: str, resource: bytes, scope: bytes) -> None:
        self.service = service
        self.resource = resource
        self.scope = scope


class TraceGroup:
    """The spans of one trace in one batch.

    ``facts`` holds one tuple per span: ``(span_id, parent_span_id or None,
    segment index, name, parent_kind, start_ns, end_ns, is_error, project_id,
    domain_id, position in the request)``, where ``parent_kind`` is true for
    CLIENT / PRODUCER spans that are not database calls (the spans whose children
    run in another service). ``pairs`` are the indexed ``(key, raw AnyValue)``
    pairs and ``rids`` the request ids (text -> 1 local | 2 global).
    """

    __slots__ = ("facts", "pairs", "rids", "trace_id", "wire")

    def __init__(self, trace_id: bytes) -> None:
        self.trace_id = trace_id
        self.wire: dict[int, list[bytes]] = {}
        self.facts: list[tuple[Any, ...]] = []
        self.pairs: set[tuple[str, bytes]] = set()
        self.rids: dict[str, int] = {}

    def span_ids(self) -> bytes:
        """The group's span ids in order, 8 bytes each."""
        return b"".join(f[0] for f in self.facts)


def ids_digest(span_ids: bytes) -> int:
    """Signed 64-bit identity of a group's spans from :meth:`TraceGroup.span_ids`:
    a batch delivered twice gives the same digest, so it is stored once."""
    return int.from_bytes(hashlib.blake2b(span_ids, digest_size=8).digest(), "big", signed=True)


class SpanBatch:
    """Spans of one request or write, grouped by trace (see the module docstring)."""

    __slots__ = ("count", "flags", "groups", "segments")

    def __init__(self, flags: int = 0) -> None:
        self.segments: list[Segment] = []
        self.groups: dict[bytes, TraceGroup] = {}
        self.count = 0
        self.flags = flags

    def __len__(self) -> int:
        return self.count

    def records(self) -> list[SpanRecord]:
        """The spans as records, in request order."""
        out: list[tuple[int, SpanRecord]] = []
        for g in self.groups.values():
            order = [f[10] for f in g.facts]
            seq = iter(order)
            for seg, wire in g.wire.items():
                s = self.segments[seg]
                for rec in segment_records(
                    g.trace_id, s.service, s.resource, s.scope, wire, self.flags
                ):
                    out.append((next(seq), rec))
        out.sort(key=lambda p: p[0])
        return [r for _, r in out]


def _text(raw: bytes) -> str | None:
    """A raw ``AnyValue`` holding a string, as the string; else ``None``."""
    if len(raw) >= 2 and raw[0] == 0x0A and raw[1] == len(raw) - 2:
        try:
            s = raw[2:].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return s if "\x00" not in s else clean_str(s)
    v = raw_value(raw)
    return v if isinstance(v, str) else None


def _resource(raw: bytes) -> tuple[str, str | None]:
    """Service name of a resource and a rejection reason (or ``None``)."""
    try:
        attrs = pb_attrs(Resource.FromString(raw).attributes)
    except Rejected as exc:
        return UNKNOWN_SERVICE, str(exc)
    except (DecodeError, RecursionError, ValueError):
        return UNKNOWN_SERVICE, "invalid resource"
    service = attrs.get("service.name")
    if not isinstance(service, str) or not service:
        service = UNKNOWN_SERVICE
    for key in _ID_ATTRS:
        value = attrs.get(key)
        if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
            return service, f"{key} longer than {MAX_ID_LENGTH} characters"
    return cap_name(service), None


def _check_extras(sp: Any) -> None:
    """Checks of the rare parts of a span: events, links, nested values."""
    for ev in sp.events:
        if ev.time > _INT64_MAX:
            raise Rejected("event time beyond int64")
        for raw in ev.attrs.values():
            if raw and raw[0] >= _TAG_NESTING and _too_deep(raw):
                raise Rejected(f"attribute value nested deeper than {MAX_VALUE_DEPTH}")
    for ln in sp.links:
        if len(ln.trace_id) != 16 or len(ln.span_id) != 8:
            raise Rejected("invalid link id")
        for raw in ln.attrs.values():
            if raw and raw[0] >= _TAG_NESTING and _too_deep(raw):
                raise Rejected(f"attribute value nested deeper than {MAX_VALUE_DEPTH}")


# What an attribute is to the store; see _classify.
_LIFT_NONE: Final = 0
_LIFT_PROJECT: Final = 1
_LIFT_DOMAIN: Final = 2
_LIFT_LOCAL: Final = 3
_LIFT_GLOBAL: Final = 4
_LIFT_DB: Final = 5
_LIFTS: Final = {
    ATTR_PROJECT_ID: _LIFT_PROJECT,
    ATTR_DOMAIN_ID: _LIFT_DOMAIN,
    ATTR_REQUEST_ID: _LIFT_LOCAL,
    ATTR_GLOBAL_REQUEST_ID: _LIFT_GLOBAL,
    "db.system": _LIFT_DB,
}
_KV_CACHE_MAX: Final = 50_000
_kv_cache: dict[bytes, Any] = {}
_plain_keys: dict[bytes, bool] = {}


def _plain(kv: bytes) -> bool:
    """Whether the ``KeyValue`` bytes *kv* are an attribute the store ignores: a
    canonical encoding, a key neither indexed nor lifted, a scalar value."""
    n = len(kv)
    if n < 2 or kv[0] != 0x0A or kv[1] >= 0x80:
        return False
    p = 2 + kv[1]
    key = kv[2:p]
    plain = _plain_keys.get(key)
    if plain is None:
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            return False
        plain = not is_indexed(text) and text not in _LIFTS and "\x00" not in text
        if len(_plain_keys) < _INDEX_CACHE_MAX:
            _plain_keys[key] = plain
    if not plain:
        return False
    if p == n:
        return True
    if kv[p] != 0x12:
        return False
    q = p + 1
    while q < n and kv[q] >= 0x80:
        q += 1
    q += 1
    return q >= n or kv[q] < _TAG_NESTING


def _classify(kv: bytes) -> Any:
    """What the ``KeyValue`` bytes *kv* are to the store: ``None`` (nothing), a
    rejection reason (``str``), or ``((key, raw AnyValue) or None, lift, text)``."""
    try:
        m = KeyValue.FromString(kv)
    except (DecodeError, RecursionError, ValueError):
        return None  # not reached: the request was parsed whole before
    key: str = m.key
    if "\x00" in key:
        return None
    v = m.value
    kind = v.WhichOneof("value")
    if kind in ("array_value", "kvlist_value"):
        try:
            pb_value(v)
        except Rejected as exc:
            return str(exc)
    lift = _LIFTS.get(key, _LIFT_NONE)
    pair = None
    if is_indexed(key):
        pair = (key, v.SerializeToString())
    if not lift and pair is None:
        return None
    text = None
    if kind == "string_value":
        text = clean_str(v.string_value)
        if key in _ID_ATTRS and len(text) > MAX_ID_LENGTH:
            return f"{key} longer than {MAX_ID_LENGTH} characters"
    return (pair, lift, text)


def scan_traces(
    body: bytes,
    reject: Callable[[str], None],
    service_of: Sequence[str] | None = None,
    *,
    zero_ids: bool = False,
) -> SpanBatch:
    """Read an OTLP protobuf ``ExportTraceServiceRequest`` into a :class:`SpanBatch`.

    Invalid spans are passed to *reject* (with the reason) and left out.
    *service_of* overrides the service of each ``ResourceSpans`` in order (used by
    :func:`from_records`), and *zero_ids* accepts all-zero trace and span ids
    (which OTLP calls invalid; records written directly have always been kept).
    :class:`BatchDecodeError` if *body* is not protobuf.
    """
    zero_trace = b"" if zero_ids else _ZERO_TRACE_ID
    zero_span = b"" if zero_ids else _ZERO_SPAN_ID
    try:
        # The full schema once, in C, only to refuse what is not valid OTLP (bad
        # UTF-8 anywhere, nesting beyond protobuf's limit) as a whole, as before.
        ExportTraceServiceRequest.FromString(body)
        raw_req = _RawRequest.FromString(body)
        req = _LeanRequest.FromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BatchDecodeError(f"body is not a valid OTLP protobuf message: {exc}") from None
    batch = SpanBatch()
    segments = batch.segments
    groups = batch.groups
    count = 0
    seq = 0
    kv_cache = _kv_cache
    for ri, (raw_rs, rs) in enumerate(zip(raw_req.rs, req.rs, strict=True)):
        service, bad = _resource(raw_rs.resource)
        if service_of is not None:
            service = service_of[ri]
        for raw_ss, ss in zip(raw_rs.scopes, rs.scopes, strict=True):
            if bad is not None:
                for _ in raw_ss.spans:
                    reject(bad)
                continue
            seg = len(segments)
            segments.append(Segment(service, raw_rs.resource, raw_ss.scope))
            for wire, sp in zip(raw_ss.spans, ss.spans, strict=True):
                seq += 1
                trace_id = sp.trace_id
                span_id = sp.span_id
                if len(trace_id) != 16 or trace_id == zero_trace:
                    reject("invalid trace id")
                    continue
                if len(span_id) != 8 or span_id == zero_span:
                    reject("invalid span id")
                    continue
                parent = sp.parent
                if not parent or parent == _ZERO_SPAN_ID:
                    parent = None
                elif len(parent) != 8:
                    reject("invalid parent span id")
                    continue
                start = sp.start
                end = sp.end
                if start > _INT64_MAX or end > _INT64_MAX:
                    reject("timestamp beyond int64")
                    continue
                name: str = sp.name
                if not name.isascii() or "\x00" in name:
                    name = clean_str(name)
                if len(name) > MAX_NAME_BYTES // 4:
                    name = cap_name(name)
                project = domain = None
                pairs: list[tuple[str, bytes]] = []
                rids: list[tuple[str, int]] = []
                is_db = False
                try:
                    for kv in sp.attrs:
                        r = kv_cache.get(kv, _MISS)
                        if r is _MISS:
                            if _plain(kv):
                                continue
                            r = _classify(kv)
                            if r is not None:
                                if len(kv_cache) >= _KV_CACHE_MAX:
                                    kv_cache.clear()
                                kv_cache[kv] = r
                        if r is None:
                            continue
                        if r.__class__ is str:
                            raise Rejected(r)
                        pair, lift, text = r
                        if pair is not None:
                            pairs.append(pair)
                        if lift:
                            if lift == _LIFT_DB:
                                is_db = True
                            elif text is None:
                                pass
                            elif lift == _LIFT_PROJECT:
                                project = text
                            elif lift == _LIFT_DOMAIN:
                                domain = text
                            elif text:
                                rids.append(
                                    (text, _RID_LOCAL if lift == _LIFT_LOCAL else _RID_GLOBAL)
                                )
                    if sp.events or sp.links:
                        _check_extras(sp)
                except Rejected as exc:
                    reject(str(exc))
                    continue
                kind = sp.kind
                status = sp.status.code if sp.HasField("status") else 0
                g = groups.get(trace_id)
                if g is None:
                    g = groups[trace_id] = TraceGroup(trace_id)
                w = g.wire.get(seg)
                if w is None:
                    g.wire[seg] = [wire]
                else:
                    w.append(wire)
                g.facts.append(
                    (
                        span_id,
                        parent,
                        seg,
                        name,
                        kind in _PARENT_KINDS and not is_db,
                        start,
                        end,
                        status == STATUS_ERROR,
                        project,
                        domain,
                        seq,
                    )
                )
                if pairs:
                    g.pairs.update(pairs)
                for text, bit in rids:
                    g.rids[text] = g.rids.get(text, 0) | bit
                count += 1
    batch.count = count
    return batch


def segment_records(
    trace_id: bytes,
    service: str,
    resource: bytes,
    scope: bytes,
    wire: Iterable[bytes],
    flags: int,
) -> list[SpanRecord]:
    """Stored spans of one segment as records, normalised as ingest promises:
    names and text cleaned, unknown enum values as 0, bytes as base64 text (or as
    bytes for batches with :data:`FLAG_RAW_BYTES`), values too deep as ``None``."""
    raw_bytes = bool(flags & FLAG_RAW_BYTES)
    res = pb_attrs(Resource.FromString(resource).attributes, raw_bytes=raw_bytes, strict=False)
    scope_name = clean_str(InstrumentationScope.FromString(scope).name) if scope else ""
    out = []
    for data in wire:
        try:
            sp = Span.FromString(data)
        except (DecodeError, RecursionError, ValueError):  # validated at ingest
            log.warning("skipped a stored span that does not parse (trace %s)", trace_id.hex())
            continue
        parent = sp.parent_span_id
        name: str = sp.name
        if not name.isascii() or "\x00" in name:
            name = clean_str(name)
        kind = sp.kind
        status = sp.status
        code = status.code
        events = sp.events
        links = sp.links
        state = sp.trace_state
        out.append(
            SpanRecord(
                trace_id,
                sp.span_id,
                parent if parent and parent != _ZERO_SPAN_ID else None,
                cap_name(name),
                kind if 0 <= kind <= _MAX_KIND else 0,
                sp.start_time_unix_nano,
                sp.end_time_unix_nano,
                service,
                code if 0 <= code <= _MAX_STATUS else 0,
                clean_str(status.message) if status.message else "",
                pb_attrs(sp.attributes, raw_bytes=raw_bytes, strict=False),
                [
                    {
                        "time_ns": ev.time_unix_nano,
                        "name": clean_str(ev.name),
                        "attributes": pb_attrs(ev.attributes, raw_bytes=raw_bytes, strict=False),
                    }
                    for ev in events
                ]
                if events
                else [],
                [
                    {
                        "trace_id": ln.trace_id.hex(),
                        "span_id": ln.span_id.hex(),
                        "attributes": pb_attrs(ln.attributes, raw_bytes=raw_bytes, strict=False),
                    }
                    for ln in links
                ]
                if links
                else [],
                dict(res),
                scope_name,
                clean_str(state) if state else "",
            )
        )
    return out


# ------------------------------------------------------------- chunk payloads


def encode_payload(group: TraceGroup, batch: SpanBatch) -> bytes:
    """The stored form of one group (before compression): msgpack of
    ``[flags, [[service, resource bytes, scope bytes, [span bytes, ...]], ...]]``.
    (Chunks written before names were stored carry an interned service id.)"""
    segs = batch.segments
    return msgpack.packb(  # type: ignore[no-any-return]
        (
            batch.flags,
            [
                (segs[seg].service, segs[seg].resource, segs[seg].scope, wire)
                for seg, wire in group.wire.items()
            ],
        ),
        use_bin_type=True,
    )


def decode_payload(trace_id: bytes, payload: bytes, name: Callable[[int], str]) -> list[SpanRecord]:
    """Inverse of :func:`encode_payload`; *name* maps an interned service id (in
    older chunks) to its name."""
    flags, segments = msgpack.unpackb(payload, raw=False, use_list=True)
    out: list[SpanRecord] = []
    for svc, resource, scope, wire in segments:
        service = name(svc) if svc.__class__ is int else svc
        out.extend(segment_records(trace_id, service, resource, scope, wire, flags))
    return out


# ------------------------------------------------------------------ from records

_INT64_MIN: Final = -(2**63)


def any_value(value: Any, depth: int = 0) -> AnyValue:
    """A Python value as a protobuf ``AnyValue`` (ints beyond int64 and unknown
    types as text, so that any record can be stored)."""
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
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
            return AnyValue(kvlist_value=KeyValueList(values=_kvs(value, depth + 1)))
    return AnyValue(string_value=str(value))


def _kvs(attrs: dict[str, Any], depth: int = 0) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=any_value(v, depth)) for k, v in attrs.items()]


def _link(link: dict[str, Any]) -> Span.Link:
    try:
        tid = bytes.fromhex(str(link.get("trace_id", "")))
        sid = bytes.fromhex(str(link.get("span_id", "")))
    except ValueError:
        tid = sid = b""
    return Span.Link(trace_id=tid, span_id=sid, attributes=_kvs(link.get("attributes") or {}))


def from_records(
    spans: Sequence[SpanRecord], reject: Callable[[str], None] | None = None
) -> SpanBatch:
    """Records as a :class:`SpanBatch` (encoded as OTLP, then scanned like a
    request). Records the store cannot keep (invalid ids) go to *reject*; without
    it, ``ValueError``."""
    req = ExportTraceServiceRequest()
    services: list[str] = []
    index: dict[tuple[str, int, str], ScopeSpans] = {}
    for s in spans:
        key = (s.service, id(s.resource), s.scope)
        ss = index.get(key)
        if ss is None:
            rs = ResourceSpans(resource=Resource(attributes=_kvs(s.resource)))
            ss = rs.scope_spans.add()
            if s.scope:
                ss.scope.name = s.scope
            req.resource_spans.append(rs)
            ss = req.resource_spans[-1].scope_spans[0]
            index[key] = ss
            services.append(cap_name(s.service) if s.service else UNKNOWN_SERVICE)
        ss.spans.append(
            Span(
                trace_id=s.trace_id,
                span_id=s.span_id,
                parent_span_id=s.parent_span_id or b"",
                name=s.name,
                kind=s.kind,  # type: ignore[arg-type]
                start_time_unix_nano=max(0, s.start_ns),
                end_time_unix_nano=max(0, s.end_ns),
                attributes=_kvs(s.attributes),
                events=[
                    Span.Event(
                        time_unix_nano=max(0, int(e.get("time_ns", 0))),
                        name=str(e.get("name", "")),
                        attributes=_kvs(e.get("attributes") or {}),
                    )
                    for e in s.events
                ],
                links=[_link(ln) for ln in s.links],
                status=Status(code=s.status_code, message=s.status_message),  # type: ignore[arg-type]
                trace_state=s.trace_state,
            )
        )

    def fail(reason: str) -> None:
        raise ValueError(f"span cannot be stored: {reason}")

    batch = scan_traces(req.SerializeToString(), reject or fail, services, zero_ids=True)
    batch.flags |= FLAG_RAW_BYTES
    return batch
