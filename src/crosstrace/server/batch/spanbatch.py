"""The span batch: spans of one request or write grouped by trace, each span
kept as the OTLP protobuf bytes it arrived in (see :mod:`crosstrace.server.batch`),
and the stored form of one trace's group (a chunk payload)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any, Final

import msgpack
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from crosstrace.server.batch.values import FLAG_RAW_BYTES, cap_name, clean_str, pb_attrs
from crosstrace.server.model import MAX_KIND, MAX_STATUS, ZERO_SPAN_ID, SpanRecord

__all__ = [
    "RID_GLOBAL",
    "RID_LOCAL",
    "Segment",
    "SpanBatch",
    "TraceGroup",
    "decode_payload",
    "encode_payload",
    "ids_digest",
    "segment_records",
]

log = logging.getLogger(__name__)

#: Kinds of a request id in :attr:`TraceGroup.rids` (bits: a trace may carry an id as both).
RID_LOCAL: Final = 1
RID_GLOBAL: Final = 2


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


def segment_records(
    trace_id: bytes,
    service: str,
    resource: bytes,
    scope: bytes,
    wire: Iterable[bytes],
    flags: int,
    columns: Iterable[tuple[bytes, int, int] | None] | None = None,
) -> list[SpanRecord]:
    """Stored spans of one segment as records, normalised as ingest promises:
    names and text cleaned, unknown enum values as 0, bytes as base64 text (or as
    bytes for batches with :data:`FLAG_RAW_BYTES`), values too deep as ``None``.

    *columns* gives, span by span, the ``(span id, start, end)`` that its bytes
    in *wire* lack (``None`` for a span whose bytes are whole)."""
    raw_bytes = bool(flags & FLAG_RAW_BYTES)
    res = pb_attrs(Resource.FromString(resource).attributes, raw_bytes=raw_bytes, strict=False)
    scope_name = clean_str(InstrumentationScope.FromString(scope).name) if scope else ""
    out = []
    for data, cols in zip(wire, columns if columns is not None else repeat(None), strict=False):
        try:
            sp = Span.FromString(data)
        except (DecodeError, RecursionError, ValueError):  # validated at ingest
            log.warning("skipped a stored span that does not parse (trace %s)", trace_id.hex())
            continue
        span_id, start, end = sp.span_id, sp.start_time_unix_nano, sp.end_time_unix_nano
        if cols is not None:
            # A field the rest repeats came after the columns' one: it wins, as
            # it did in the bytes the span arrived in.
            span_id, start, end = span_id or cols[0], start or cols[1], end or cols[2]
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
                span_id,
                parent if parent and parent != ZERO_SPAN_ID else None,
                cap_name(name),
                kind if 0 <= kind <= MAX_KIND else 0,
                start,
                end,
                service,
                code if 0 <= code <= MAX_STATUS else 0,
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
