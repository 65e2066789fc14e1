"""JSON log lines: ``crosstrace.logging.JSONFormatter`` records and journald's
export (``journalctl -o json``).

A JSONFormatter line (an RFC 3339 ``timestamp``) is a complete record. A journald
entry (``__REALTIME_TIMESTAMP`` and ``MESSAGE``) is handed back as a
:class:`JournalEntry`, read like a line of ``journalctl``'s text output: its
``_HOSTNAME`` names the host, ``SYSLOG_IDENTIFIER`` and ``_PID`` the process.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from crosstrace.server.logs.clock import Clock
from crosstrace.server.logs.fields import (
    ATTR_EXCEPTION_STACKTRACE,
    ATTR_FILE_LINE,
    ATTR_FILE_NAME,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_THREAD_NAME,
    ATTR_USER_DOMAIN_ID,
    RES_HOST_NAME,
    RES_PROCESS_PID,
    RES_SERVICE_NAME,
    ParseStats,
    exception_attributes,
    severity_number,
)
from crosstrace.server.model import LogRecord


class FileParser(Protocol):
    """What a JSON line needs of the parser of its file (:class:`.parse.LogParser`)."""

    source: str
    service: str | None
    default_service: str
    host: str | None
    default_host: str | None
    clock: Clock
    stats: ParseStats
    key_prefix: bytes

    def request_id(self, value: object) -> str | None: ...


__all__ = ["FileParser", "JournalEntry", "journal_entry", "json_record", "load_object"]

_HEX_TRACE_RE = re.compile(r"[0-9a-fA-F]{32}")
_HEX_SPAN_RE = re.compile(r"[0-9a-fA-F]{16}")
_DIGITS_RE = re.compile(r"\d{1,19}", re.ASCII)


@dataclass(slots=True)
class JournalEntry:
    """One journal entry, from ``journalctl``'s text or its JSON export.

    ``time_ns`` is called only when the entry's own time is needed (a journal
    payload with a full oslo.log timestamp uses that one)."""

    host: str
    ident: str
    pid: str | None
    payload: str
    time_ns: Callable[[], int | None]


def load_object(text: str) -> dict[str, Any] | None:
    """The JSON object on a line, else ``None``."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def journal_entry(obj: dict[str, Any]) -> JournalEntry | None:
    """A ``journalctl -o json`` entry, or ``None`` if *obj* is not one (a
    ``MESSAGE`` that journald exported as bytes is decoded as UTF-8)."""
    stamp = obj.get("__REALTIME_TIMESTAMP")
    message = obj.get("MESSAGE")
    if not isinstance(stamp, str) or _DIGITS_RE.fullmatch(stamp) is None:
        return None
    if isinstance(message, list) and all(type(b) is int and 0 <= b < 256 for b in message):
        message = bytes(message).decode("utf-8", "replace")
    if not isinstance(message, str):
        return None
    time_ns = int(stamp) * 1000
    pid = _str(obj.get("_PID"))
    return JournalEntry(
        host=_str(obj.get("_HOSTNAME")) or "",
        ident=_str(obj.get("SYSLOG_IDENTIFIER")) or _str(obj.get("_COMM")) or "",
        pid=pid if pid and pid.isdigit() else None,
        payload=message.rstrip("\n"),
        time_ns=lambda: time_ns,
    )


def json_record(
    parser: FileParser, line_no: int, text: str, obj: dict[str, Any]
) -> LogRecord | None:
    """A record from a JSONFormatter line, or ``None`` if *obj* is not one."""
    time_ns = parser.clock.rfc3339(obj.get("timestamp"))
    if time_ns is None:
        return None
    parser.stats.formats["json"] += 1
    level = _str(obj.get("level")) or ""
    message = _str(obj.get("message"))
    if message is None:
        message = "" if obj.get("message") is None else json.dumps(obj.get("message"))
    exception = _str(obj.get("exception"))
    attributes: dict[str, Any] = {ATTR_FILE_NAME: parser.source, ATTR_FILE_LINE: line_no}
    if exception:
        attributes[ATTR_EXCEPTION_STACKTRACE] = exception
        exception_attributes(exception.split("\n"), attributes)
    for key, attr in (
        ("thread_name", ATTR_THREAD_NAME),
        ("user_domain_id", ATTR_USER_DOMAIN_ID),
        ("project_domain_id", ATTR_PROJECT_DOMAIN_ID),
    ):
        value = _str(obj.get(key))
        if value:
            attributes[attr] = value
    service = parser.service or _str(obj.get("service")) or parser.default_service
    resource: dict[str, Any] = {RES_SERVICE_NAME: service}
    host = parser.host or _str(obj.get("hostname")) or parser.default_host
    if host:
        resource[RES_HOST_NAME] = host
    process = obj.get("process")
    if type(process) is int:
        resource[RES_PROCESS_PID] = process
    hasher = hashlib.blake2b(parser.key_prefix, digest_size=16)
    hasher.update(f"{line_no}\0".encode())
    hasher.update(text.encode("utf-8", "surrogateescape"))
    parser.stats.records += 1
    parser.stats.lines_in_records += 1
    return LogRecord(
        time_ns=time_ns,
        severity_number=severity_number(level),
        severity_text=level,
        body=message,
        service=service,
        trace_id=_hex_id(obj.get("trace_id"), _HEX_TRACE_RE),
        span_id=_hex_id(obj.get("span_id"), _HEX_SPAN_RE),
        request_id=parser.request_id(obj.get("request_id")),
        global_request_id=parser.request_id(obj.get("global_request_id")),
        user_id=_str(obj.get("user_id")) or None,
        project_id=_str(obj.get("project_id")) or None,
        domain_id=_str(obj.get("domain_id")) or None,
        logger=_str(obj.get("logger")) or "",
        attributes=attributes,
        resource=resource,
        dedup_key=hasher.digest(),
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _hex_id(value: object, pattern: re.Pattern[str]) -> bytes | None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        return None
    raw = bytes.fromhex(value)
    return None if raw.count(0) == len(raw) else raw
