"""Trusted triggers: who may force a trace to be recorded and exported.

An incoming ``sampled`` flag is only a hint (anyone can send it, and honouring
it would let any caller make every service record and export). Two signed forms
force recording and sampling instead:

crosstrace trigger
    ``X-Crosstrace-Trigger: <unix-seconds>:<hex HMAC-SHA256>``, the HMAC taken
    with the shared trigger key over ``"<trace-id hex>:<unix-seconds>"``. It is
    bound to the trace id, not to the whole ``traceparent``, so the same trace
    may be triggered across hops; each service re-signs it with a fresh time
    when it calls the next one (:func:`make_trigger`). A trigger older or newer
    than :data:`MAX_TRIGGER_SKEW_S` is refused, which bounds replay.

OSProfiler (compatibility with OpenStack services that already use it)
    ``X-Trace-Info`` is ``urlsafe_base64(JSON {"base_id", "parent_id"})`` and
    ``X-Trace-HMAC`` is the hex HMAC-SHA1 of that base64 text, with one of the
    operator's keys (``CROSSTRACE_OSPROFILER_KEYS``; each is tried, compared in
    constant time), exactly as ``osprofiler.web`` sends them. A valid pair forces
    sampling, and ``base_id`` (a UUID) *is* the trace id (its 16 bytes), so
    OSProfiler-instrumented services and crosstrace services share one trace id.
    ``base_id`` and ``parent_id`` are kept as span attributes
    (:data:`ATTR_OSPROFILER_BASE_ID`, :data:`ATTR_OSPROFILER_PARENT_ID`).

Both verifiers take untrusted header values, never raise, and refuse oversized,
non-ASCII or malformed input by returning ``None``/``False``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple

from crosstrace.headers import OSPROFILER_HMAC_HEADER, OSPROFILER_INFO_HEADER, TRIGGER_HEADER

__all__ = [
    "ATTR_OSPROFILER_BASE_ID",
    "ATTR_OSPROFILER_PARENT_ID",
    "MAX_TRACE_INFO_LENGTH",
    "MAX_TRIGGER_SKEW_S",
    "OSPROFILER_HMAC_HEADER",
    "OSPROFILER_INFO_HEADER",
    "TRIGGER_HEADER",
    "OsprofilerTrace",
    "make_osprofiler_headers",
    "make_trigger",
    "verify_osprofiler",
    "verify_trigger",
]

#: Span attributes holding OSProfiler's ids.
ATTR_OSPROFILER_BASE_ID = "osprofiler.base_id"
ATTR_OSPROFILER_PARENT_ID = "osprofiler.parent_id"

#: Largest clock difference accepted for a trigger, seconds.
MAX_TRIGGER_SKEW_S = 300
#: Longest ``X-Trace-Info`` value even decoded.
MAX_TRACE_INFO_LENGTH = 2048
_MAX_TRIGGER_LENGTH = 96
_MAX_HMAC_LENGTH = 128
_OSPROFILER_KEYS = frozenset({"base_id", "parent_id", "hmac_key"})


def _ascii(value: object, limit: int) -> str | None:
    if type(value) is bytes:
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if type(value) is not str or len(value) > limit or not value.isascii():
        return None
    return value


def make_trigger(key: str, trace_id: int, now: float | None = None) -> str:
    """The :data:`TRIGGER_HEADER` value that forces trace *trace_id*."""
    ts = int(time.time() if now is None else now)
    mac = hmac.new(key.encode(), f"{trace_id:032x}:{ts}".encode(), hashlib.sha256).hexdigest()
    return f"{ts}:{mac}"


def verify_trigger(
    value: object,
    trace_id: int,
    keys: Sequence[str],
    now: float | None = None,
    max_skew: float = MAX_TRIGGER_SKEW_S,
) -> bool:
    """Whether *value* is a valid trigger for *trace_id* under one of *keys*."""
    text = _ascii(value, _MAX_TRIGGER_LENGTH)
    if text is None or not keys:
        return False
    ts_text, sep, mac = text.strip().partition(":")
    if not sep or not ts_text.isdigit() or len(ts_text) > 12:
        return False
    ts = int(ts_text)
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew:
        return False
    message = f"{trace_id:032x}:{ts}".encode()
    provided = mac.strip().lower().encode()
    ok = False
    for key in keys:
        expected = hmac.new(key.encode(), message, hashlib.sha256).hexdigest().encode()
        ok |= hmac.compare_digest(expected, provided)
    return ok


class OsprofilerTrace(NamedTuple):
    """A verified OSProfiler trace header."""

    #: The trace id: the 16 bytes of ``base_id``.
    trace_id: int
    base_id: str
    parent_id: str | None


def make_osprofiler_headers(base_id: str, parent_id: str | None, key: str) -> dict[str, str]:
    """``X-Trace-Info`` / ``X-Trace-HMAC`` as ``osprofiler.web`` would send them."""
    data: dict[str, str] = {"base_id": base_id}
    if parent_id is not None:
        data["parent_id"] = parent_id
    info = base64.urlsafe_b64encode(json.dumps(data).encode()).decode("ascii")
    mac = hmac.new(key.encode(), info.encode("ascii"), hashlib.sha1).hexdigest()
    return {OSPROFILER_INFO_HEADER: info, OSPROFILER_HMAC_HEADER: mac}


def _uuid(value: object) -> uuid.UUID | None:
    if type(value) is not str or len(value) > 40:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def verify_osprofiler(info: object, mac: object, keys: Sequence[str]) -> OsprofilerTrace | None:
    """Verify OSProfiler's signed headers; ``None`` unless valid under one of *keys*.

    Mirrors ``osprofiler`` (``signed_unpack`` and the middleware's key check):
    no keys or no HMAC means untrusted; the HMAC-SHA1 is over the base64 text
    as sent; the JSON must be an object with a UUID ``base_id``, optionally a
    UUID ``parent_id``, and no other keys (``hmac_key`` is tolerated).
    """
    info_text = _ascii(info, MAX_TRACE_INFO_LENGTH)
    mac_text = _ascii(mac, _MAX_HMAC_LENGTH)
    if info_text is None or mac_text is None or not keys:
        return None
    mac_bytes = mac_text.strip().encode("ascii")
    if not mac_bytes:
        return None
    data = info_text.encode("ascii")
    ok = False
    for key in keys:
        if not key:
            continue
        expected = hmac.new(key.encode(), data, hashlib.sha1).hexdigest().encode("ascii")
        ok |= hmac.compare_digest(expected, mac_bytes)
    if not ok:
        return None
    try:
        decoded = base64.urlsafe_b64decode(data)
        contents = json.loads(decoded.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(contents, dict) or not set(contents) <= _OSPROFILER_KEYS:
        return None
    base = _uuid(contents.get("base_id"))
    if base is None or base.int == 0:
        return None
    parent_raw = contents.get("parent_id")
    parent: uuid.UUID | None = None
    if parent_raw is not None:
        parent = _uuid(parent_raw)
        if parent is None:
            return None
    return OsprofilerTrace(base.int, str(base), str(parent) if parent is not None else None)
