"""Parse existing OpenStack log files into :class:`LogRecord` objects.

Three line shapes are understood, in one file or mixed:

* oslo.log text: ``YYYY-MM-DD HH:MM:SS.mmm [PID] LEVEL logger [CONTEXT] message``,
  where CONTEXT is ``-``, the two-id form ``req-<global> req-<local> user project
  domain user_domain project_domain`` (``None``/``-`` for absent fields; current
  oslo.log adds ``system_scope`` after ``domain``, recognised by the field count) or
  the older one-id form ``req-<local> user project``. DevStack's context format has
  no PID.
* journald output as ``journalctl`` prints it: ``Mon DD HH:MM:SS[.us] host
  ident[pid]: payload``, where the payload is an oslo.log line with or without its own
  timestamp, or plain text (systemd, sudo).
* JSON lines as written by ``crosstrace.logging.JSONFormatter`` (one object per line
  with an RFC 3339 ``timestamp``), and journald's JSON export (``journalctl -o json``),
  whose ``MESSAGE`` is read like a ``journalctl`` payload (see :mod:`.jsonlines`).

Multi-line records are joined: an unprefixed line belongs to the record before it,
and a traceback that oslo.log writes with its exception prefix (the same timestamp,
PID and logger, with no context or with the record's own context) is joined to the
record that logged it. Every joined line becomes one line of the record's body, in
file order, with the repeated prefix removed, so a body has exactly as many lines as
the file lines it came from.

Input is untrusted: a line that fits no shape and has no record before it, a bad
timestamp or a JSON line that is not a record is skipped and counted (never fatal),
request ids are kept only when :func:`crosstrace.ids.is_valid_request_id` accepts
them, and a record stops growing at :data:`MAX_RECORD_LINES` / :data:`MAX_RECORD_CHARS`.

Times without a zone are read in the zone given to the parser, UTC by default
(see :mod:`.clock`).

Every record gets ``service.name`` and, when known, ``host.name``: a given host
(``--host``) first, else the host the line names itself (journald's hostname, a JSON
line's ``hostname``), else the host of the file's path (see :mod:`.names`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

from crosstrace.ids import is_valid_request_id
from crosstrace.server.logs.clock import MONTHS, Clock
from crosstrace.server.logs.fields import (
    ATTR_FILE_LINE,
    ATTR_FILE_NAME,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_SYSTEM_SCOPE,
    ATTR_USER_DOMAIN_ID,
    MAX_RECORD_CHARS,
    MAX_RECORD_LINES,
    RES_HOST_NAME,
    RES_PROCESS_NAME,
    RES_PROCESS_PID,
    RES_SERVICE_NAME,
    SEVERITY_NUMBERS,
    SKIP_BAD_JSON,
    SKIP_BAD_TIME,
    SKIP_JOURNAL_MARKER,
    SKIP_NO_RECORD,
    SKIP_TOO_LARGE,
    TRACEBACK_HEADER,
    ParseStats,
    exception_attributes,
    severity_number,
)
from crosstrace.server.logs.jsonlines import JournalEntry, journal_entry, json_record, load_object
from crosstrace.server.logs.names import derive_service_name
from crosstrace.server.model import LogRecord

__all__ = ["LogParser"]

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LEVEL = r"(?P<level>[A-Z]{4,8})"
#: oslo.log: date time[.frac] [pid] LEVEL logger[ rest]
_OSLO_RE = re.compile(
    r"(?P<ts>(?P<date>\d{4}-\d\d-\d\d)[ T](?P<time>\d\d:\d\d:\d\d)(?:[.,](?P<frac>\d{1,9}))?)"
    r"(?: (?P<pid>\d+))? " + _LEVEL + r" (?P<logger>\S+)(?: (?P<rest>.*))?",
    re.ASCII | re.DOTALL,
)
#: oslo.log without its timestamp, as DevStack writes it to the journal.
_SHORT_RE = re.compile(_LEVEL + r" (?P<logger>\S+)(?: (?P<rest>.*))?", re.ASCII | re.DOTALL)
#: journalctl's short-precise format: Mon DD HH:MM:SS[.us] host ident[pid]: payload
_JOURNAL_RE = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) (?P<day>[ \d]\d) (?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,9}))? "
    r"(?P<host>\S+) (?P<ident>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<payload>.*)",
    re.ASCII | re.DOTALL,
)
_JOURNAL_MARKER_RE = re.compile(r"-- .* --")
_JOURNAL_BEGIN_RE = re.compile(r"-- (?:Logs|Journal) begins? at \w+ (?P<year>\d{4})-")
#: The request context bracket: its first field is a request id, ``None`` or ``-``.
_CONTEXT_RE = re.compile(r"\[(?P<ctx>(?:req-[^\s\]]*|None|-)(?: [^\s\]]+)*)\](?: |$)")


class _Pending:
    """A record being assembled from its first line and its continuation lines."""

    __slots__ = (
        "attributes",
        "body",
        "chars",
        "context",
        "domain_id",
        "global_request_id",
        "hasher",
        "host",
        "ident",
        "in_traceback",
        "level",
        "line_no",
        "logger",
        "pid",
        "prefixed_traceback",
        "project_id",
        "request_id",
        "resource",
        "stamp",
        "time_ns",
        "user_id",
    )

    def __init__(self, line_no: int, time_ns: int, level: str, logger: str) -> None:
        self.line_no = line_no
        self.time_ns = time_ns
        self.level = level
        self.logger = logger
        self.body: list[str] = []
        self.chars = 0
        # What a continuation line must repeat to be joined: the oslo timestamp text
        # (None in the journal, where every line has its own time), the PID, the
        # journal's host and ident, the context bracket text.
        self.stamp: str | None = None
        self.pid: str | None = None
        self.host: str | None = None
        self.ident: str | None = None
        self.context: str | None = None
        self.in_traceback = False
        # A traceback whose lines repeat the record's context prefix has begun.
        self.prefixed_traceback = False
        self.request_id: str | None = None
        self.global_request_id: str | None = None
        self.user_id: str | None = None
        self.project_id: str | None = None
        self.domain_id: str | None = None
        self.attributes: dict[str, Any] = {}
        self.resource: dict[str, Any] = {}
        self.hasher = hashlib.blake2b(digest_size=16)


class _OsloLine:
    """The parts of one oslo.log line (or journal payload)."""

    __slots__ = ("context", "level", "logger", "message", "pid", "stamp", "time_ns")

    def __init__(
        self,
        time_ns: int,
        stamp: str | None,
        pid: str | None,
        level: str,
        logger: str,
        context: str | None,
        message: str,
    ) -> None:
        self.time_ns = time_ns
        self.stamp = stamp
        self.pid = pid
        self.level = level
        self.logger = logger
        self.context = context
        self.message = message


class LogParser:
    """Turns the lines of one log file into :class:`LogRecord` objects.

    *source* names the file (its base name, used with the line number and the record
    text for the record's ``dedup_key``); *service* is the service name for every
    record (a JSON line's own ``service`` is used when *service* is ``None``, falling
    back to *default_service*). *host* is the host of every record; when ``None``, a
    line's own host (journald, JSON ``hostname``) is used, else *default_host* (the
    host of the file's path). The file's host (*host* or *default_host*) is part of
    the ``dedup_key``, so two hosts' copies of a file are two sets of records. *tz*
    is the zone of times written without one (UTC when ``None``); *year* is the year
    of journal lines, which carry none (else the year of a ``-- Logs begin at``
    header, else *fallback_year*).
    """

    def __init__(
        self,
        source: str,
        *,
        service: str | None = None,
        default_service: str | None = None,
        host: str | None = None,
        default_host: str | None = None,
        tz: _dt.tzinfo | None = None,
        year: int | None = None,
        fallback_year: int | None = None,
    ) -> None:
        self.source = source
        self.service = service
        self.default_service = default_service or service or derive_service_name(source)
        self.host = host or None
        self.default_host = default_host or None
        self.clock = Clock(tz, year, fallback_year)
        self.stats = ParseStats()
        file_host = self.host or self.default_host
        # Files without a host of their own keep the keys they always had.
        prefix = f"{self.service or self.default_service}\0{source}\0"
        if file_host:
            prefix += f"{file_host}\0"
        self.key_prefix = prefix.encode()

    # -- public -----------------------------------------------------------------

    def parse(self, lines: Iterable[str]) -> Iterator[LogRecord]:
        """Yield the records in *lines* (file order; a trailing newline is ignored).

        A record is yielded once the line after it shows that it is complete, and
        the last one when *lines* is exhausted.
        """
        pending: _Pending | None = None
        stats = self.stats
        for raw in lines:
            stats.lines_read += 1
            line_no = stats.lines_read
            line = raw.rstrip("\r\n") if raw.endswith("\n") else raw.rstrip("\r")
            text = _ANSI_RE.sub("", line) if "\x1b" in line else line
            result = self._line(line_no, line, text, pending)
            if result is pending:
                continue
            if pending is not None:
                yield self._finish(pending)
            if isinstance(result, LogRecord):  # a JSON line: complete on its own
                pending = None
                yield result
            else:
                pending = result
        if pending is not None:
            yield self._finish(pending)

    # -- one line ---------------------------------------------------------------

    def _line(
        self, line_no: int, line: str, text: str, pending: _Pending | None
    ) -> _Pending | LogRecord | None:
        """Handle one line; return the record now pending (the same object when the
        line was joined to it or skipped), or a complete record for a JSON line."""
        first = text[:1]
        if first.isdigit():
            m = _OSLO_RE.fullmatch(text)
            if m is not None and m["level"] in SEVERITY_NUMBERS:
                return self._oslo(line_no, line, m, pending)
        elif first == "{":
            obj = load_object(text)
            if obj is not None:
                record = json_record(self, line_no, text, obj)
                if record is not None:
                    return record
                entry = journal_entry(obj)
                if entry is not None:
                    return self._journal(line_no, line, entry, pending, "journal-json")
            if pending is None:
                # Not a record, and nothing before it to continue.
                self.stats.skip(line_no, SKIP_BAD_JSON)
                return None
        elif first == "-" and _JOURNAL_MARKER_RE.fullmatch(text):
            begin = _JOURNAL_BEGIN_RE.match(text)
            if begin is not None:
                self.clock.journal_begins(int(begin["year"]))
            self.stats.skip(line_no, SKIP_JOURNAL_MARKER)
            return pending
        elif first.isupper():
            j = _JOURNAL_RE.fullmatch(text)
            if j is not None and j["mon"] in MONTHS:
                clock, mon, day, time, frac = self.clock, j["mon"], j["day"], j["time"], j["frac"]
                entry = JournalEntry(
                    j["host"],
                    j["ident"],
                    j["pid"],
                    j["payload"],
                    lambda: clock.journal(mon, day, time, frac),
                )
                return self._journal(line_no, line, entry, pending, "journal")
        return self._continue(line_no, line, text, pending)

    def _continue(
        self, line_no: int, line: str, body_line: str, pending: _Pending | None
    ) -> _Pending | None:
        """Join an unprefixed line (or one whose prefix repeats) to *pending*."""
        if pending is None:
            self.stats.skip(line_no, SKIP_NO_RECORD)
            return None
        if len(pending.body) >= MAX_RECORD_LINES or pending.chars + len(body_line) > (
            MAX_RECORD_CHARS
        ):
            self.stats.skip(line_no, SKIP_TOO_LARGE)
            return pending
        self._add(pending, line, body_line)
        self.stats.continuation_lines += 1
        if body_line == TRACEBACK_HEADER or body_line.endswith(" " + TRACEBACK_HEADER):
            pending.in_traceback = True
        return pending

    @staticmethod
    def _add(pending: _Pending, line: str, body_line: str) -> None:
        pending.body.append(body_line)
        pending.chars += len(body_line) + 1
        pending.hasher.update(line.encode("utf-8", "surrogateescape"))
        pending.hasher.update(b"\n")

    def _split_oslo(
        self, line_no: int, m: re.Match[str], *, time_ns: int | None = None
    ) -> _OsloLine | None:
        rest = m["rest"] or ""
        context: str | None = None
        if rest[:1] == "[":
            c = _CONTEXT_RE.match(rest)
            if c is not None:
                context = c["ctx"]
                rest = rest[c.end() :]
        if time_ns is None:
            time_ns = self.clock.oslo(m["date"], m["time"], m["frac"])
            if time_ns is None:
                return None
        stamp = m["ts"] if "ts" in m.re.groupindex else None
        pid = m["pid"] if "pid" in m.re.groupindex else None
        return _OsloLine(time_ns, stamp, pid, m["level"], m["logger"], context, rest)

    def _oslo(
        self, line_no: int, line: str, m: re.Match[str], pending: _Pending | None
    ) -> _Pending | None:
        parts = self._split_oslo(line_no, m)
        if parts is None:
            self.stats.skip(line_no, SKIP_BAD_TIME)
            return pending
        if pending is not None and self._continues(pending, parts, same_stamp=True):
            pending.prefixed_traceback |= parts.context is not None
            return self._continue(line_no, line, parts.message, pending)
        self.stats.formats["oslo"] += 1
        return self._start_oslo(line_no, line, parts)

    def _journal(
        self, line_no: int, line: str, entry: JournalEntry, pending: _Pending | None, fmt: str
    ) -> _Pending | None:
        payload = entry.payload
        host, ident, pid = entry.host, entry.ident, entry.pid
        parts: _OsloLine | None = None
        full_stamp = False
        m = _OSLO_RE.fullmatch(payload) if payload[:1].isdigit() else None
        if m is not None and m["level"] in SEVERITY_NUMBERS:
            parts = self._split_oslo(line_no, m)
            full_stamp = True
            if parts is None:
                self.stats.skip(line_no, SKIP_BAD_TIME)
                return pending
        else:
            s = _SHORT_RE.fullmatch(payload) if payload[:1].isupper() else None
            if s is not None and s["level"] in SEVERITY_NUMBERS:
                time_ns = entry.time_ns()
                if time_ns is None:
                    self.stats.skip(line_no, SKIP_BAD_TIME)
                    return pending
                parts = self._split_oslo(line_no, s, time_ns=time_ns)
        same_source = (
            pending is not None
            and pending.host == host
            and pending.ident == ident
            and pending.pid == pid
        )
        if parts is not None:
            if parts.pid is None:
                parts.pid = pid
            if (
                same_source
                and pending is not None
                and self._continues(pending, parts, same_stamp=full_stamp)
            ):
                pending.prefixed_traceback |= parts.context is not None
                return self._continue(line_no, line, parts.message, pending)
            record = self._start_oslo(line_no, line, parts)
        else:
            if same_source and pending is not None and pending.logger:
                # Plain text from the same process as an oslo.log record: the rest of
                # a multi-line message or a traceback written line by line.
                return self._continue(line_no, line, payload, pending)
            time_ns = entry.time_ns()
            if time_ns is None:
                self.stats.skip(line_no, SKIP_BAD_TIME)
                return pending
            record = _Pending(line_no, time_ns, "", "")
            self._add(record, line, payload)
            record.pid = pid
            if payload == TRACEBACK_HEADER:
                record.in_traceback = True
        record.host, record.ident = host, ident
        named = self.host or host or self.default_host
        if named:
            record.resource[RES_HOST_NAME] = named
        if ident:
            record.resource[RES_PROCESS_NAME] = ident
        if pid is not None:
            record.resource[RES_PROCESS_PID] = int(pid)
        self.stats.formats[fmt] += 1
        return record

    @staticmethod
    def _continues(pending: _Pending, parts: _OsloLine, *, same_stamp: bool) -> bool:
        """Whether an oslo.log line is the next line of *pending*'s traceback.

        oslo.log writes each traceback line with its exception prefix: the record's
        own timestamp, PID and logger, and either no context (the default prefix) or
        the record's context (newer DevStack). Without a context the line can only
        be a continuation; with one it continues a traceback that has begun.
        """
        if pending.logger != parts.logger or not pending.logger:
            return False
        if same_stamp and pending.stamp != parts.stamp:
            return False
        if pending.pid is not None and parts.pid is not None and pending.pid != parts.pid:
            return False
        if parts.context is None:
            return True
        return parts.context == pending.context and (
            pending.prefixed_traceback or parts.message.startswith(TRACEBACK_HEADER)
        )

    def _start_oslo(self, line_no: int, line: str, parts: _OsloLine) -> _Pending:
        record = _Pending(line_no, parts.time_ns, parts.level, parts.logger)
        record.stamp = parts.stamp
        record.pid = parts.pid
        record.context = parts.context
        if parts.pid is not None:
            record.resource[RES_PROCESS_PID] = int(parts.pid)
        if parts.context is not None:
            self._apply_context(record, parts.context)
        self._add(record, line, parts.message)
        if parts.message.startswith(TRACEBACK_HEADER):
            record.in_traceback = record.prefixed_traceback = True
        return record

    def _apply_context(self, record: _Pending, context: str) -> None:
        """Fill ids from the context bracket (see the module docstring for forms)."""
        fields = context.split(" ")
        if len(fields) == 1 and fields[0] == "-":
            return
        if len(fields) >= 2 and (fields[1].startswith("req-") or fields[0] in ("None", "-")):
            record.global_request_id = self.request_id(fields[0])
            local, identity = fields[1], fields[2:]
        else:
            local, identity = fields[0], fields[1:]
        record.request_id = self.request_id(local)
        values = [None if v in ("-", "None", "") else v for v in identity[:6]]
        if len(values) == 6:
            # oslo.log's current user_identity: user project domain system_scope
            # user_domain project_domain (older releases have no system_scope).
            system_scope = values.pop(3)
            if system_scope is not None:
                record.attributes[ATTR_SYSTEM_SCOPE] = system_scope
        values += [None] * (5 - len(values))
        record.user_id, record.project_id, record.domain_id = values[0], values[1], values[2]
        if values[3] is not None:
            record.attributes[ATTR_USER_DOMAIN_ID] = values[3]
        if values[4] is not None:
            record.attributes[ATTR_PROJECT_DOMAIN_ID] = values[4]

    def request_id(self, value: object) -> str | None:
        """*value* when it is a valid request id; an invalid one is counted."""
        if value is None or value in ("-", "None", ""):
            return None
        if is_valid_request_id(value):
            return value  # type: ignore[return-value]
        self.stats.invalid_request_ids += 1
        return None

    # -- finishing --------------------------------------------------------------

    def _finish(self, p: _Pending) -> LogRecord:
        service = self.service or self.default_service
        attributes = p.attributes
        attributes[ATTR_FILE_NAME] = self.source
        attributes[ATTR_FILE_LINE] = p.line_no
        if p.in_traceback:
            exception_attributes(p.body, attributes)
        resource = p.resource
        resource[RES_SERVICE_NAME] = service
        if RES_HOST_NAME not in resource:
            host = self.host or self.default_host
            if host:
                resource[RES_HOST_NAME] = host
        key = hashlib.blake2b(self.key_prefix, digest_size=16)
        key.update(f"{p.line_no}\0".encode())
        key.update(p.hasher.digest())
        self.stats.records += 1
        self.stats.lines_in_records += len(p.body)
        return LogRecord(
            time_ns=p.time_ns,
            severity_number=severity_number(p.level),
            severity_text=p.level,
            body="\n".join(p.body),
            service=service,
            request_id=p.request_id,
            global_request_id=p.global_request_id,
            user_id=p.user_id,
            project_id=p.project_id,
            domain_id=p.domain_id,
            logger=p.logger,
            attributes=attributes,
            resource=resource,
            dedup_key=key.digest(),
        )
