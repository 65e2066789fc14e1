"""W3C Trace Context (levels 1 and 2): ``traceparent`` and ``tracestate``.

Parsing follows the specification's processing model exactly, so that any
malformed value is refused instead of half-used:

``traceparent``
    ``version "-" trace-id "-" parent-id "-" trace-flags``, lowercase hex only.
    Version ``00`` must be exactly 55 characters (extra fields make it invalid);
    a higher version is parsed by its first four fields (the header must be at
    least 55 characters, and anything after the flags must start with ``-``);
    version ``ff`` is invalid. All-zero trace ids and parent ids are invalid.
    Flags: bit 0 ``sampled`` (level 1), bit 1 ``random`` (level 2: the right-most
    7 bytes of the trace id are random). Unknown flag bits are accepted on input
    and zeroed when this process sends its own ``traceparent``.
    An invalid ``traceparent`` restarts the trace: the caller gets ``None`` and
    makes a new trace id.

``tracestate``
    A comma-separated list of ``key=value`` members, at most 32, with optional
    spaces and tabs around members; empty members are tolerated. Several
    ``tracestate`` header lines are one list, combined in order, and every
    limit applies to each member of the combined list. Keys follow the level 2
    grammar: 1 to 256 characters, the first a lowercase letter or a digit, the
    rest lowercase letters, digits, ``_ - * /`` and ``@`` (so a vendor key such
    as ``tenant@system`` or ``foo@`` is valid; only a key starting with ``@`` or
    holding another character is not). Values are 1 to 256 printable ASCII
    characters other than ``,`` and ``=``, not ending in a space. A bad member
    or more than 32 members makes the whole header invalid, and it is dropped
    (never partly propagated). A key that appears again keeps its left-most
    (first) member and the later ones are dropped: the list still propagates,
    as the specification allows for duplicated keys.

Mutation (:meth:`TraceState.update`) moves the updated key to the front (left)
of the list; when the list would exceed 32 members the right-most member is
removed. :meth:`TraceState.to_header` truncates a header longer than 512
characters by first removing members longer than 128 characters, then members
from the right, as the specification recommends.

Everything here is pure and allocation-light; ids are integers inside the
process and become hex only in :func:`format_traceparent`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from crosstrace.headers import TRACEPARENT_HEADER, TRACESTATE_HEADER

__all__ = [
    "FLAG_RANDOM",
    "FLAG_SAMPLED",
    "KNOWN_FLAGS",
    "MAX_TRACESTATE_MEMBERS",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TraceState",
    "format_span_id",
    "format_trace_id",
    "format_traceparent",
    "parse_traceparent",
    "parse_tracestate",
]


#: Level 1: the caller may have recorded this trace.
FLAG_SAMPLED = 0x01
#: Level 2: the right-most 7 bytes of the trace id are random.
FLAG_RANDOM = 0x02
#: The flag bits this implementation knows; others are zeroed when sending.
KNOWN_FLAGS = FLAG_SAMPLED | FLAG_RANDOM

#: Most list members a tracestate may hold.
MAX_TRACESTATE_MEMBERS = 32
#: A combined tracestate header longer than this is truncated when sent.
TRACESTATE_TRUNCATE_LENGTH = 512
#: Members longer than this are the first removed when truncating.
TRACESTATE_LONG_MEMBER = 128
#: Longest tracestate header value even looked at (32 members of 256+256+1).
MAX_TRACESTATE_LENGTH = 32 * 514

_TRACEPARENT_LENGTH = 55
_VERSION_RE = re.compile(r"[0-9a-f]{2}", re.ASCII)
_V00_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", re.ASCII)
# Higher versions: the first four fields, then either the end or "-" + anything.
_VFUTURE_RE = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?", re.ASCII | re.DOTALL
)

# key = ( lcalpha / DIGIT ) 0*255( keychar ); keychar adds "_" "-" "*" "/" "@".
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}", re.ASCII)
# nblk-chr = %x21-2B / %x2D-3C / %x3E-7E ; chr = %x20 / nblk-chr
_VALUE_RE = re.compile(
    r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]", re.ASCII
)
_OWS = " \t"


def format_trace_id(trace_id: int) -> str:
    """A 128-bit trace id as 32 lowercase hex characters."""
    return f"{trace_id:032x}"


def format_span_id(span_id: int) -> str:
    """A 64-bit span id as 16 lowercase hex characters."""
    return f"{span_id:016x}"


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """A version-00 ``traceparent`` value; unknown flag bits are zeroed."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & KNOWN_FLAGS:02x}"


def parse_traceparent(value: object) -> tuple[int, int, int] | None:
    """Parse a ``traceparent`` value into ``(trace_id, parent_id, flags)``.

    Returns ``None`` for anything invalid (the caller then restarts the trace).
    Leading and trailing spaces/tabs (HTTP optional whitespace) are ignored.
    """
    if type(value) is not str:
        return None
    value = value.strip(_OWS)
    if len(value) < _TRACEPARENT_LENGTH:
        return None
    version = value[:2]
    if _VERSION_RE.fullmatch(version) is None or version == "ff":
        return None
    if version == "00":
        m = _V00_RE.fullmatch(value)
        if m is None:
            return None
        trace_hex, span_hex, flags_hex = m.group(1, 2, 3)
    else:
        m = _VFUTURE_RE.fullmatch(value)
        if m is None:
            return None
        trace_hex, span_hex, flags_hex = m.group(2, 3, 4)
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(flags_hex, 16)


class TraceState:
    """An immutable, validated ``tracestate`` list (left-most is the newest).

    Build one with :func:`parse_tracestate` (from a header) or ``TraceState()``
    and :meth:`update`. Mutators return a new object.
    """

    __slots__ = ("_members",)

    def __init__(self, members: Iterable[tuple[str, str]] = ()) -> None:
        items = tuple(members)
        seen: set[str] = set()
        for key, value in items:
            if not is_valid_key(key) or not is_valid_value(value):
                raise ValueError(f"invalid tracestate member {key!r}")
            if key in seen:
                raise ValueError(f"duplicate tracestate key {key!r}")
            seen.add(key)
        if len(items) > MAX_TRACESTATE_MEMBERS:
            raise ValueError("tracestate holds at most 32 members")
        self._members: tuple[tuple[str, str], ...] = items

    @classmethod
    def _trusted(cls, members: tuple[tuple[str, str], ...]) -> TraceState:
        obj = cls.__new__(cls)
        obj._members = members
        return obj

    def get(self, key: str) -> str | None:
        """The value for *key*, or ``None``."""
        for k, v in self._members:
            if k == key:
                return v
        return None

    def update(self, key: str, value: str) -> TraceState:
        """Set *key* to *value* and move it to the front (left) of the list.

        When the list would grow past 32 members, the right-most member is
        removed. Raises :class:`ValueError` for an invalid key or value.
        """
        if not is_valid_key(key) or not is_valid_value(value):
            raise ValueError(f"invalid tracestate member {key!r}")
        rest = tuple(m for m in self._members if m[0] != key)
        members = ((key, value), *rest)
        return TraceState._trusted(members[:MAX_TRACESTATE_MEMBERS])

    def delete(self, key: str) -> TraceState:
        """A copy without *key*."""
        return TraceState._trusted(tuple(m for m in self._members if m[0] != key))

    def to_header(self) -> str:
        """The header value, truncated to 512 characters by the spec's rules."""
        members = [f"{k}={v}" for k, v in self._members]
        header = ",".join(members)
        if len(header) <= TRACESTATE_TRUNCATE_LENGTH:
            return header
        members = [m for m in members if len(m) <= TRACESTATE_LONG_MEMBER]
        while members and len(",".join(members)) > TRACESTATE_TRUNCATE_LENGTH:
            members.pop()
        return ",".join(members)

    def items(self) -> tuple[tuple[str, str], ...]:
        """The members, left to right."""
        return self._members

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __bool__(self) -> bool:
        return bool(self._members)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TraceState):
            return NotImplemented
        return self._members == other._members

    def __hash__(self) -> int:
        return hash(self._members)

    def __repr__(self) -> str:
        return f"TraceState({list(self._members)!r})"


def is_valid_key(key: object) -> bool:
    """Whether *key* matches the level 2 tracestate key grammar."""
    return type(key) is str and _KEY_RE.fullmatch(key) is not None


def is_valid_value(value: object) -> bool:
    """Whether *value* matches the tracestate value grammar."""
    return type(value) is str and _VALUE_RE.fullmatch(value) is not None


def parse_tracestate(value: str | Iterable[str] | None) -> TraceState | None:
    """Parse one or more ``tracestate`` header values (combined in order).

    Returns ``None`` when the header is absent or invalid in any way (the whole
    header is then dropped), and an empty :class:`TraceState` never: an absent or
    all-empty header gives ``None`` as well.
    """
    if value is None:
        return None
    if isinstance(value, str):
        combined = value
    else:
        parts = [v for v in value if isinstance(v, str)]
        combined = ",".join(parts)
    if len(combined) > MAX_TRACESTATE_LENGTH:
        return None
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    count = 0
    for raw in combined.split(","):
        member = raw.strip(_OWS)
        if not member:
            continue  # empty list members are allowed
        key, sep, val = member.partition("=")
        if not sep or _KEY_RE.fullmatch(key) is None or _VALUE_RE.fullmatch(val) is None:
            return None
        count += 1
        if count > MAX_TRACESTATE_MEMBERS:
            return None
        if key in seen:
            continue  # a duplicated key keeps its first (left-most) member
        seen.add(key)
        members.append((key, val))
    if not members:
        return None
    return TraceState._trusted(tuple(members))
