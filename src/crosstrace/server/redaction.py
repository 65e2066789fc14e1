"""Secrets masked at ingest, in the server, before anything is stored.

Tracers redact before export (:mod:`crosstrace.redact`), but the backend also
takes telemetry from other senders and log files, so it redacts again:

- an attribute whose key looks secret (``token``, ``password``, ``secret``,
  ``auth``, ... and ``CROSSTRACE_REDACT_KEYS``) loses its value;
- in every text (string attribute values, span names, status and exception
  messages, event attributes, log bodies): the values of ``X-Auth-Token:``,
  ``X-Subject-Token:``, ``Authorization:`` and cookie headers; ``password=``,
  ``key=``, ``sig=``, ``temp_url_sig=``, ``access_token=`` (and similar) in query
  strings and fragments; ``"password": "..."`` in JSON or Python reprs; and every
  match of the operator's patterns (``CROSSTRACE_REDACT_PATTERNS``, one regular
  expression per line; a pattern with a group masks the group, else the match).

A masked value becomes stars whose number tells its length class (``***`` up to 8
characters, ``******`` up to 32, ``*********`` beyond), never the secret.

OTLP protobuf trace bodies are rewritten only when they may hold a secret: when
operator patterns are set, when the body's bytes match the text forms above
(:meth:`ServerRedactor.may_hold_secrets`, looser than the masking patterns, so
that it never misses one), or when an attribute key looks secret (which the
ingest scan tells, as it reads every key anyway). Only such a body is decoded,
redacted and encoded again; an OpenStack URL such as ``/v3/auth/tokens`` alone
does not make one suspect.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, MutableMapping
from typing import Any, Final

from crosstrace.redact import Redactor

__all__ = [
    "ENV_REDACT_KEYS",
    "ENV_REDACT_PATTERNS",
    "ServerRedactor",
    "default_redactor",
    "mask",
]

ENV_REDACT_KEYS: Final = "CROSSTRACE_REDACT_KEYS"
ENV_REDACT_PATTERNS: Final = "CROSSTRACE_REDACT_PATTERNS"

# Names of secret headers and parameters (not secrets), lowercase.
_HEADERS: Final = (
    "x-auth-token",
    "x-subject-token",
    "x-service-token",
    "x-storage-token",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
)
_PARAMS: Final = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "key",
    "sig",
    "temp_url_sig",
    "signature",
    "credential",
    "private_key",
    "client_secret",
)
#: Words that make a quoted name (``"admin_password": ...``) secret.
_QUOTED_WORDS: Final = ("password", "passwd", "secret", "token", "credential", "api_key", "apikey")


def _either(words: tuple[str, ...], *, reverse: bool = False) -> str:
    return "|".join(re.escape(w[::-1] if reverse else w) for w in words)


_HEADER_RE = re.compile(
    rf"\b({_either(_HEADERS)})(\s*[:=]\s*[\"']?)"
    r"((?:(?:bearer|basic|negotiate|digest|token)\s+)?[^\s\"',;}&]+)",
    re.IGNORECASE | re.ASCII,
)
_PARAM_RE = re.compile(
    rf"(?<![A-Za-z0-9])({_either(_PARAMS)})(=)([^&\s#\"';,]+)", re.IGNORECASE | re.ASCII
)
_QUOTED_RE = re.compile(
    rf"([\"'][A-Za-z0-9_.-]*(?:{_either(_QUOTED_WORDS)})"
    r"[A-Za-z0-9_.-]*[\"']\s*[:=]\s*)([\"'])((?:\\.|(?!\2).)*)\2",
    re.IGNORECASE | re.ASCII,
)
# What a protobuf body holds, read lowercased and backwards, wherever the three
# patterns above would mask something: each cut after its separator, without its
# word-boundary check (the byte before a string in a body is its length). Read
# backwards, each starts with a separator, which the regular expression engine
# finds fast; read forwards, it would try every word at every byte.
_NAME_BEFORE: Final = (
    rf"\s*(?:[\"'][a-z0-9_.-]*(?:{_either(_QUOTED_WORDS, reverse=True)})"
    rf"|{_either(_HEADERS, reverse=True)})"
)
_SUSPECT_EQ: Final = re.compile(rf"=(?:{_either(_PARAMS, reverse=True)}|{_NAME_BEFORE})".encode())
_SUSPECT_COLON: Final = re.compile(rf":{_NAME_BEFORE}".encode())


def mask(value: str) -> str:
    """Stars telling the length class of *value*."""
    n = len(value)
    return "***" if n <= 8 else "******" if n <= 32 else "*********"


class ServerRedactor:
    """Masks secrets in records and bodies; one per process (see :func:`default_redactor`)."""

    __slots__ = ("_keys", "_patterns")

    def __init__(self, extra_keys: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        """*patterns*: regular expressions; raises ``re.error`` for a bad one."""
        keys = [k.strip().lower() for k in extra_keys if k.strip()]
        self._keys = Redactor(keys)
        self._patterns = tuple(re.compile(p) for p in patterns if p.strip())

    # ------------------------------------------------------------------ values
    def text(self, text: str) -> str:
        """*text* with every secret-looking value masked."""
        if not text:
            return text
        out = _HEADER_RE.sub(_mask_group3, text)
        out = _PARAM_RE.sub(_mask_group3, out)
        out = _QUOTED_RE.sub(_mask_quoted, out)
        for pattern in self._patterns:
            out = pattern.sub(_mask_pattern, out)
        return out

    def value(self, value: Any) -> Any:
        """An attribute value with secrets in its texts masked (lists, maps too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            self.attributes(value)
        return value

    def is_secret_key(self, key: str) -> bool:
        return self._keys.is_secret(key)

    def attributes(self, attributes: MutableMapping[str, Any]) -> None:
        """Mask, in place, values of secret keys and secrets inside the others."""
        for key, value in attributes.items():
            if self._keys.is_secret(key):
                attributes[key] = mask(value if isinstance(value, str) else str(value))
            elif isinstance(value, str | list | dict):
                attributes[key] = self.value(value)

    # ----------------------------------------------------------------- records
    def span(self, span: Any) -> None:
        """A :class:`~crosstrace.server.model.SpanRecord`, in place."""
        span.name = self.text(span.name)
        span.status_message = self.text(span.status_message)
        self.attributes(span.attributes)
        self.attributes(span.resource)
        for event in span.events:
            attrs = event.get("attributes")
            if isinstance(attrs, dict):
                self.attributes(attrs)
        for link in span.links:
            attrs = link.get("attributes")
            if isinstance(attrs, dict):
                self.attributes(attrs)

    def log(self, record: Any) -> None:
        """A :class:`~crosstrace.server.model.LogRecord`, in place."""
        record.body = self.text(record.body)
        self.attributes(record.attributes)
        self.attributes(record.resource)

    # ---------------------------------------------------------------- protobuf
    def may_hold_secrets(self, body: bytes) -> bool:
        """Whether a protobuf *body* may hold a secret in a text (never ``False``
        for one that does); secret attribute keys are not looked for here."""
        if self._patterns:
            return True
        backwards = body.lower()[::-1]
        return (
            _SUSPECT_EQ.search(backwards) is not None
            or _SUSPECT_COLON.search(backwards) is not None
        )

    def otlp_traces(self, body: bytes) -> bytes:
        """An ``ExportTraceServiceRequest`` body with its secrets masked (the same
        object when it holds none). Raises protobuf's ``DecodeError`` if invalid."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        changed = False
        for rs in request.resource_spans:
            changed |= self._pb_attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    changed |= self._pb_text(sp, "name")
                    changed |= self._pb_attrs(sp.attributes)
                    changed |= self._pb_text(sp.status, "message")
                    for ev in sp.events:
                        changed |= self._pb_attrs(ev.attributes)
                    for ln in sp.links:
                        changed |= self._pb_attrs(ln.attributes)
        return request.SerializeToString() if changed else body

    def _pb_text(self, message: Any, field: str) -> bool:
        old = getattr(message, field)
        new = self.text(old)
        if new != old:
            setattr(message, field, new)
            return True
        return False

    def _pb_attrs(self, attributes: Any) -> bool:
        changed = False
        for kv in attributes:
            if self._keys.is_secret(kv.key):
                which = kv.value.WhichOneof("value")
                if which is None:
                    continue
                raw = getattr(kv.value, which)
                kv.value.string_value = mask(raw if isinstance(raw, str) else str(raw))
                changed = True
            else:
                changed |= self._pb_value(kv.value)
        return changed

    def _pb_value(self, value: Any) -> bool:
        which = value.WhichOneof("value")
        if which == "string_value":
            return self._pb_text(value, "string_value")
        if which == "array_value":
            changed = False
            for v in value.array_value.values:
                changed |= self._pb_value(v)
            return changed
        if which == "kvlist_value":
            return self._pb_attrs(value.kvlist_value.values)
        return False


def _mask_group3(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2) + mask(match.group(3))


def _mask_quoted(match: re.Match[str]) -> str:
    quote = match.group(2)
    return match.group(1) + quote + mask(match.group(3)) + quote


def _mask_pattern(match: re.Match[str]) -> str:
    if match.re.groups:
        whole = match.group(0)
        start, end = match.span(1)
        if start < 0:
            return whole
        offset = match.start(0)
        return whole[: start - offset] + mask(match.group(1)) + whole[end - offset :]
    return mask(match.group(0))


_default: ServerRedactor | None = None


def default_redactor() -> ServerRedactor:
    """The process's redactor, configured from ``CROSSTRACE_REDACT_KEYS`` (comma
    separated) and ``CROSSTRACE_REDACT_PATTERNS`` (one pattern per line); decode
    worker processes inherit the environment, so they redact the same way."""
    global _default
    if _default is None:
        keys = os.environ.get(ENV_REDACT_KEYS, "").split(",")
        patterns = os.environ.get(ENV_REDACT_PATTERNS, "").splitlines()
        _default = ServerRedactor(keys, patterns)
    return _default


def reset_default_redactor() -> None:
    """Forget the process's redactor (after the environment changed)."""
    global _default
    _default = None
