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
:class:`~crosstrace.server.batch.spanbatch.SpanBatch`: one ``TraceGroup`` per
trace, with the spans' bytes per (resource, scope) ``Segment`` and a small tuple
of facts per span. The store
writes one chunk per group; fetching a trace turns its chunks back into
:class:`~crosstrace.server.model.SpanRecord` with :func:`segment_records`, which
normalises values the way the ingest contract says (see ``otlp.py``).

OTLP/JSON and the ``SpanRecord`` writers go the same way: :func:`from_records`
encodes records as an OTLP request and scans it like any other.

Given a *secret_key* predicate, the scan also looks at every attribute key (of the
resources, spans, events and links, nested ones included) and stops with
:class:`SecretKeySeen` at the first the predicate calls secret, so that ingest
redacts the request before it is scanned again. A key is looked at once per
distinct encoding, like the rest, so asking costs nothing on the usual request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from crosstrace.server.batch.spanbatch import RID_GLOBAL, RID_LOCAL, Segment, SpanBatch, TraceGroup
from crosstrace.server.batch.values import (
    FLAG_RAW_BYTES,
    INT64_MAX,
    MAX_ID_LENGTH,
    MAX_NAME_BYTES,
    MAX_VALUE_DEPTH,
    UNKNOWN_SERVICE,
    BatchDecodeError,
    Rejected,
    cap_name,
    clean_str,
    is_indexed,
    key_values,
    pb_attrs,
    pb_value,
    raw_value,
    too_deep,
)
from crosstrace.server.model import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ID_ATTRS,
    STATUS_ERROR,
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    SpanRecord,
)

__all__ = ["SecretKeySeen", "from_records", "scan_traces"]

_PARENT_KINDS: Final = (3, 4)  # CLIENT, PRODUCER: their children run elsewhere
#: First byte of an ``AnyValue`` whose value may nest (array, kvlist) or is bytes.
_TAG_NESTING: Final = 0x2A
_MISS: Final = object()
_INDEX_CACHE_MAX: Final = 10_000


class SecretKeySeen(Exception):
    """A scan given *secret_key* met an attribute key it calls secret."""


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


def _secret_kvs(kvs: Any, secret: Callable[[str], bool]) -> bool:
    """Whether a repeated protobuf ``KeyValue`` has a key *secret* calls secret,
    at any depth."""
    return any(secret(kv.key) or _secret_value(kv.value, secret) for kv in kvs)


def _secret_value(v: Any, secret: Callable[[str], bool]) -> bool:
    kind = v.WhichOneof("value")
    if kind == "kvlist_value":
        return _secret_kvs(v.kvlist_value.values, secret)
    if kind == "array_value":
        return any(_secret_value(x, secret) for x in v.array_value.values)
    return False


def _secret_raw(raw: bytes, secret: Callable[[str], bool]) -> bool:
    """Whether the raw ``AnyValue`` *raw* nests a secret key."""
    if not raw or raw[0] < _TAG_NESTING:
        return False
    try:
        return _secret_value(AnyValue.FromString(raw), secret)
    except (DecodeError, RecursionError, ValueError):
        return False  # not reached: the request was parsed whole before


def _resource(raw: bytes, secret: Callable[[str], bool] | None) -> tuple[str, str | None]:
    """Service name of a resource and a rejection reason (or ``None``);
    :class:`SecretKeySeen` if *secret* calls one of its keys secret."""
    try:
        res = Resource.FromString(raw)
        if secret is not None and _secret_kvs(res.attributes, secret):
            raise SecretKeySeen
        attrs = pb_attrs(res.attributes)
    except Rejected as exc:
        return UNKNOWN_SERVICE, str(exc)
    except (DecodeError, RecursionError, ValueError):
        return UNKNOWN_SERVICE, "invalid resource"
    service = attrs.get("service.name")
    if not isinstance(service, str) or not service:
        service = UNKNOWN_SERVICE
    for key in ID_ATTRS:
        value = attrs.get(key)
        if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
            return service, f"{key} longer than {MAX_ID_LENGTH} characters"
    return cap_name(service), None


def _check_extras(sp: Any, secret: Callable[[str], bool] | None) -> None:
    """Checks of the rare parts of a span: events, links, nested values (and
    their keys, given *secret*)."""
    for ev in sp.events:
        if ev.time > INT64_MAX:
            raise Rejected("event time beyond int64")
        _check_attrs(ev.attrs, secret)
    for ln in sp.links:
        if len(ln.trace_id) != 16 or len(ln.span_id) != 8:
            raise Rejected("invalid link id")
        _check_attrs(ln.attrs, secret)


def _check_attrs(attrs: Any, secret: Callable[[str], bool] | None) -> None:
    for key, raw in attrs.items():
        if secret is not None and (secret(key) or _secret_raw(raw, secret)):
            raise SecretKeySeen
        if raw and raw[0] >= _TAG_NESTING and too_deep(raw):
            raise Rejected(f"attribute value nested deeper than {MAX_VALUE_DEPTH}")


# What an attribute is to the store; see _classify.
_LIFT_NONE: Final = 0
_LIFT_PROJECT: Final = 1
_LIFT_DOMAIN: Final = 2
_LIFT_LOCAL: Final = 3
_LIFT_GLOBAL: Final = 4
_LIFT_DB: Final = 5
_LIFT_PROJECT_DOMAIN: Final = 6  # wins over openstack.domain_id
_LIFTS: Final = {
    ATTR_PROJECT_ID: _LIFT_PROJECT,
    ATTR_DOMAIN_ID: _LIFT_DOMAIN,
    ATTR_PROJECT_DOMAIN_ID: _LIFT_PROJECT_DOMAIN,
    ATTR_REQUEST_ID: _LIFT_LOCAL,
    ATTR_GLOBAL_REQUEST_ID: _LIFT_GLOBAL,
    "db.system": _LIFT_DB,
}
_KV_CACHE_MAX: Final = 50_000
_kv_cache: dict[bytes, Any] = {}
_plain_keys: dict[bytes, bool] = {}
#: The secret-key predicate the caches were filled under (a secret key is never
#: plain, so that every scan asking about secrets classifies it).
_plain_for: Callable[[str], bool] | None = None


def _caches_for(secret: Callable[[str], bool] | None) -> None:
    """Forget what was worked out under another secret-key predicate."""
    global _plain_for
    if secret is not None and secret != _plain_for:
        _plain_keys.clear()
        _kv_cache.clear()
        _plain_for = secret


def _plain(kv: bytes) -> bool:
    """Whether the ``KeyValue`` bytes *kv* are an attribute the store ignores: a
    canonical encoding, a key neither indexed nor lifted nor secret, a scalar value."""
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
        if plain and _plain_for is not None:
            plain = not _plain_for(text)
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


def _classify(kv: bytes, secret: Callable[[str], bool] | None) -> tuple[Any, bool]:
    """What the ``KeyValue`` bytes *kv* are to the store, and whether that may be
    remembered. The meaning is ``None`` (nothing), a rejection reason (``str``), or
    ``((key, raw AnyValue) or None, lift, text)``. :class:`SecretKeySeen` if
    *secret* calls its key (or a nested one) secret; a secret key's meaning is
    never remembered, so that a later scan asking about secrets looks at it again."""
    try:
        m = KeyValue.FromString(kv)
    except (DecodeError, RecursionError, ValueError):
        return None, False  # not reached: the request was parsed whole before
    key: str = m.key
    v = m.value
    kind = v.WhichOneof("value")
    known = _plain_for
    if known is not None and (known(key) or (kind in _NESTING_KINDS and _secret_value(v, known))):
        if secret is not None:
            raise SecretKeySeen
        return _meaning(key, v, kind), False
    return _meaning(key, v, kind), True


_NESTING_KINDS: Final = ("array_value", "kvlist_value")


def _meaning(key: str, v: Any, kind: str | None) -> Any:
    if "\x00" in key:
        return None
    if kind in _NESTING_KINDS:
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
        if key in ID_ATTRS and len(text) > MAX_ID_LENGTH:
            return f"{key} longer than {MAX_ID_LENGTH} characters"
    return (pair, lift, text)


def scan_traces(
    body: bytes,
    reject: Callable[[str], None],
    service_of: Sequence[str] | None = None,
    *,
    zero_ids: bool = False,
    secret_key: Callable[[str], bool] | None = None,
) -> SpanBatch:
    """Read an OTLP protobuf ``ExportTraceServiceRequest`` into a :class:`SpanBatch`.

    Invalid spans are passed to *reject* (with the reason) and left out.
    *service_of* overrides the service of each ``ResourceSpans`` in order (used by
    :func:`from_records`), and *zero_ids* accepts all-zero trace and span ids
    (which OTLP calls invalid; records written directly have always been kept).
    :class:`BatchDecodeError` if *body* is not protobuf; :class:`SecretKeySeen` if
    *secret_key* calls an attribute key secret.
    """
    _caches_for(secret_key)
    zero_trace = b"" if zero_ids else ZERO_TRACE_ID
    zero_span = b"" if zero_ids else ZERO_SPAN_ID
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
        service, bad = _resource(raw_rs.resource, secret_key)
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
                if not parent or parent == ZERO_SPAN_ID:
                    parent = None
                elif len(parent) != 8:
                    reject("invalid parent span id")
                    continue
                start = sp.start
                end = sp.end
                if start > INT64_MAX or end > INT64_MAX:
                    reject("timestamp beyond int64")
                    continue
                name: str = sp.name
                if not name.isascii() or "\x00" in name:
                    name = clean_str(name)
                if len(name) > MAX_NAME_BYTES // 4:
                    name = cap_name(name)
                project = domain = None
                project_domain = False
                pairs: list[tuple[str, bytes]] = []
                rids: list[tuple[str, int]] = []
                is_db = False
                try:
                    for kv in sp.attrs:
                        r = kv_cache.get(kv, _MISS)
                        if r is _MISS:
                            if _plain(kv):
                                continue
                            r, keep = _classify(kv, secret_key)
                            if r is not None and keep:
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
                                if not project_domain:
                                    domain = text
                            elif lift == _LIFT_PROJECT_DOMAIN:
                                domain = text
                                project_domain = True
                            elif text:
                                rids.append(
                                    (text, RID_LOCAL if lift == _LIFT_LOCAL else RID_GLOBAL)
                                )
                    if sp.events or sp.links:
                        _check_extras(sp, secret_key)
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


# ------------------------------------------------------------------ from records


def _link(link: dict[str, Any]) -> Span.Link:
    try:
        tid = bytes.fromhex(str(link.get("trace_id", "")))
        sid = bytes.fromhex(str(link.get("span_id", "")))
    except ValueError:
        tid = sid = b""
    return Span.Link(trace_id=tid, span_id=sid, attributes=key_values(link.get("attributes") or {}))


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
            rs = ResourceSpans(resource=Resource(attributes=key_values(s.resource)))
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
                attributes=key_values(s.attributes),
                events=[
                    Span.Event(
                        time_unix_nano=max(0, int(e.get("time_ns", 0))),
                        name=str(e.get("name", "")),
                        attributes=key_values(e.get("attributes") or {}),
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
