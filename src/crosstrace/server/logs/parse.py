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
  with an RFC 3339 ``timestamp``).

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

Times without a zone are read in the zone given to the parser, UTC by default.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from crosstrace.ids import is_valid_request_id
from crosstrace.server.model import LogRecord

__all__ = [
    "ATTR_EXCEPTION_MESSAGE",
    "ATTR_EXCEPTION_STACKTRACE",
    "ATTR_EXCEPTION_TYPE",
    "ATTR_FILE_LINE",
    "ATTR_FILE_NAME",
    "MAX_RECORD_CHARS",
    "MAX_RECORD_LINES",
    "SEVERITY_NUMBERS",
    "LogParser",
    "ParseStats",
    "derive_service_name",
    "severity_number",
]

#: OTLP SeverityNumber for each level name found in OpenStack logs. ``AUDIT`` (old
#: oslo-incubator logging, between INFO and WARNING) maps to INFO2; ``TRACE`` (oslo.log's
#: level below DEBUG) to TRACE. Unknown names give 0 (unspecified).
SEVERITY_NUMBERS: dict[str, int] = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "AUDIT": 10,
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "CRITICAL": 21,
    "FATAL": 21,
}

#: Attribute names (OpenTelemetry semantic conventions where one exists).
ATTR_FILE_NAME = "log.file.name"
ATTR_FILE_LINE = "log.file.line"
ATTR_EXCEPTION_TYPE = "exception.type"
ATTR_EXCEPTION_MESSAGE = "exception.message"
ATTR_EXCEPTION_STACKTRACE = "exception.stacktrace"
ATTR_THREAD_NAME = "thread.name"
ATTR_USER_DOMAIN_ID = "openstack.user_domain_id"
ATTR_PROJECT_DOMAIN_ID = "openstack.project_domain_id"
ATTR_SYSTEM_SCOPE = "openstack.system_scope"
RES_SERVICE_NAME = "service.name"
RES_HOST_NAME = "host.name"
RES_PROCESS_PID = "process.pid"
RES_PROCESS_NAME = "process.executable.name"

#: A record stops growing beyond these; further continuation lines are skipped.
MAX_RECORD_LINES = 10_000
MAX_RECORD_CHARS = 1 << 20
#: Line numbers remembered per skip reason, for the summary.
MAX_SKIP_EXAMPLES = 5

# Skip reasons (keys of ParseStats.skipped_by_reason).
SKIP_NO_RECORD = "not a log line and no record before it"
SKIP_BAD_TIME = "bad timestamp"
SKIP_JOURNAL_MARKER = "journal marker"
SKIP_BAD_JSON = "JSON line that is not a log record"
SKIP_TOO_LARGE = "record too large"

TRACEBACK_HEADER = "Traceback (most recent call last):"

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
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
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
_EXC_LINE_RE = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?:: ?(?P<msg>.*))?")
_RFC3339_RE = re.compile(
    r"(?P<date>\d{4}-\d\d-\d\d)[Tt ](?P<time>\d\d:\d\d:\d\d)(?:[.,](?P<frac>\d{1,9}))?"
    r"(?P<zone>[Zz]|[+-]\d\d:?\d\d)?",
    re.ASCII,
)
_HEX_TRACE_RE = re.compile(r"[0-9a-fA-F]{32}")
_HEX_SPAN_RE = re.compile(r"[0-9a-fA-F]{16}")

_ROTATION_SUFFIX_RE = re.compile(r"(?:[.-]\d+|[.-]\d{4}-\d\d-\d\d(?:-\d+)?)$")
_NAME_EXTENSIONS = (".gz", ".txt", ".log", ".json", ".jsonl", ".service")
_NAME_PREFIXES = ("screen-", "devstack@")


def severity_number(level: str) -> int:
    """OTLP severity number for a level name (case-insensitive); 0 when unknown."""
    return SEVERITY_NUMBERS.get(level.upper(), 0)


def derive_service_name(file_name: str) -> str:
    """Guess the service from a log file's name.

    ``screen-c-api.txt`` -> ``c-api``, ``devstack@c-vol.service.log.txt`` ->
    ``c-vol``, ``nova-api.log.2.gz`` -> ``nova-api``,
    ``screen-c-api.2013-09-27-181531.log`` -> ``c-api``.
    """
    name = file_name.rsplit("/", 1)[-1]
    changed = True
    while changed:
        changed = False
        for ext in _NAME_EXTENSIONS:
            if name.endswith(ext) and len(name) > len(ext):
                name = name[: -len(ext)]
                changed = True
        stripped = _ROTATION_SUFFIX_RE.sub("", name)
        if stripped and stripped != name:
            name = stripped
            changed = True
    for prefix in _NAME_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    return name or file_name


@dataclass(slots=True)
class ParseStats:
    """What the parser saw in one source: every line read is either in a record
    (``lines_in_records``) or skipped (``skipped``)."""

    lines_read: int = 0
    records: int = 0
    lines_in_records: int = 0
    continuation_lines: int = 0
    skipped: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    skipped_examples: dict[str, list[int]] = field(default_factory=dict)
    invalid_request_ids: int = 0
    formats: Counter[str] = field(default_factory=Counter)

    def skip(self, line_no: int, reason: str) -> None:
        self.skipped += 1
        self.skipped_by_reason[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < MAX_SKIP_EXAMPLES:
            examples.append(line_no)


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
    back to *default_service*). *tz* is the zone of times written without one (UTC
    when ``None``); *year* is the year of journal lines, which carry none (else the
    year of a ``-- Logs begin at`` header, else *fallback_year*).
    """

    def __init__(
        self,
        source: str,
        *,
        service: str | None = None,
        default_service: str | None = None,
        tz: _dt.tzinfo | None = None,
        year: int | None = None,
        fallback_year: int | None = None,
    ) -> None:
        self.source = source
        self.service = service
        self.default_service = default_service or service or derive_service_name(source)
        self.tz = tz
        self.stats = ParseStats()
        self._year = year
        self._year_fixed = year is not None
        self._fallback_year = fallback_year or _dt.datetime.now(_dt.UTC).year
        self._last_month = 0
        self._epoch_cache: dict[str, int] = {}
        self._key_prefix = f"{self.service or self.default_service}\0{source}\0".encode()

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
            record = self._json(line_no, text)
            if record is not None:
                return record
            if pending is None:
                # Not a record, and nothing before it to continue.
                self.stats.skip(line_no, SKIP_BAD_JSON)
                return None
        elif first == "-" and _JOURNAL_MARKER_RE.fullmatch(text):
            begin = _JOURNAL_BEGIN_RE.match(text)
            if begin is not None and not self._year_fixed:
                self._year = int(begin["year"])
            self.stats.skip(line_no, SKIP_JOURNAL_MARKER)
            return pending
        elif first.isupper():
            j = _JOURNAL_RE.fullmatch(text)
            if j is not None and j["mon"] in _MONTHS:
                return self._journal(line_no, line, j, pending)
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
            time_ns = self._oslo_time(m)
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
        self, line_no: int, line: str, j: re.Match[str], pending: _Pending | None
    ) -> _Pending | None:
        payload = j["payload"]
        host, ident, pid = j["host"], j["ident"], j["pid"]
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
                time_ns = self._journal_time(j)
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
            time_ns = self._journal_time(j)
            if time_ns is None:
                self.stats.skip(line_no, SKIP_BAD_TIME)
                return pending
            record = _Pending(line_no, time_ns, "", "")
            self._add(record, line, payload)
            record.pid = pid
            if payload == TRACEBACK_HEADER:
                record.in_traceback = True
        record.host, record.ident = host, ident
        record.resource[RES_HOST_NAME] = host
        record.resource[RES_PROCESS_NAME] = ident
        if pid is not None:
            record.resource[RES_PROCESS_PID] = int(pid)
        self.stats.formats["journal"] += 1
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
            record.global_request_id = self._request_id(fields[0])
            local, identity = fields[1], fields[2:]
        else:
            local, identity = fields[0], fields[1:]
        record.request_id = self._request_id(local)
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

    def _request_id(self, value: object) -> str | None:
        if value is None or value in ("-", "None", ""):
            return None
        if is_valid_request_id(value):
            return value  # type: ignore[return-value]
        self.stats.invalid_request_ids += 1
        return None

    # -- times ------------------------------------------------------------------

    def _epoch(self, key: str, y: int, mo: int, d: int, h: int, mi: int, s: int) -> int | None:
        """Seconds since the epoch of a wall-clock time in the parser's zone."""
        cached = self._epoch_cache.get(key)
        if cached is not None:
            return cached
        try:
            wall = _dt.datetime(y, mo, d, h, mi, s)  # naive: the zone is applied below
        except ValueError:
            return None
        if self.tz is None:
            seconds = calendar.timegm(wall.timetuple())
        else:
            seconds = int(wall.replace(tzinfo=self.tz).timestamp())
        if len(self._epoch_cache) > 4096:
            self._epoch_cache.clear()
        self._epoch_cache[key] = seconds
        return seconds

    def _oslo_time(self, m: re.Match[str]) -> int | None:
        date, time = m["date"], m["time"]
        seconds = self._epoch(
            date + time,
            int(date[0:4]),
            int(date[5:7]),
            int(date[8:10]),
            int(time[0:2]),
            int(time[3:5]),
            int(time[6:8]),
        )
        if seconds is None:
            return None
        return seconds * 1_000_000_000 + _frac_ns(m["frac"])

    def _journal_time(self, j: re.Match[str]) -> int | None:
        month = _MONTHS[j["mon"]]
        if self._year is None:
            self._year = self._fallback_year
        if month < self._last_month and not self._year_fixed:
            self._year += 1  # December -> January
        self._last_month = month
        time = j["time"]
        seconds = self._epoch(
            f"{self._year}|{month}|{j['day']}|{time}",
            self._year,
            month,
            int(j["day"]),
            int(time[0:2]),
            int(time[3:5]),
            int(time[6:8]),
        )
        if seconds is None:
            return None
        return seconds * 1_000_000_000 + _frac_ns(j["frac"])

    def _rfc3339_ns(self, value: object) -> int | None:
        if not isinstance(value, str):
            return None
        m = _RFC3339_RE.fullmatch(value)
        if m is None:
            return None
        zone = m["zone"]
        date, time = m["date"], m["time"]
        try:
            wall = _dt.datetime.fromisoformat(f"{date}T{time}")
        except ValueError:
            return None
        if zone is None:
            tz = self.tz or _dt.UTC
        elif zone in ("Z", "z"):
            tz = _dt.UTC
        else:
            digits = zone[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 23 or minutes > 59:
                return None
            offset = _dt.timedelta(hours=hours, minutes=minutes)
            tz = _dt.timezone(-offset if zone[0] == "-" else offset)
        seconds = int(wall.replace(tzinfo=tz).timestamp())
        return seconds * 1_000_000_000 + _frac_ns(m["frac"])

    # -- JSON -------------------------------------------------------------------

    def _json(self, line_no: int, text: str) -> LogRecord | None:
        """A record from a JSONFormatter line, or ``None`` if *text* is not one."""
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        time_ns = self._rfc3339_ns(obj.get("timestamp"))
        if time_ns is None:
            return None
        self.stats.formats["json"] += 1
        level = _str(obj.get("level")) or ""
        message = _str(obj.get("message"))
        if message is None:
            message = "" if obj.get("message") is None else json.dumps(obj.get("message"))
        exception = _str(obj.get("exception"))
        attributes: dict[str, Any] = {ATTR_FILE_NAME: self.source, ATTR_FILE_LINE: line_no}
        body = message
        if exception:
            attributes[ATTR_EXCEPTION_STACKTRACE] = exception
            _exception_attributes(exception.split("\n"), attributes)
        for key, attr in (
            ("thread_name", ATTR_THREAD_NAME),
            ("user_domain_id", ATTR_USER_DOMAIN_ID),
            ("project_domain_id", ATTR_PROJECT_DOMAIN_ID),
        ):
            value = _str(obj.get(key))
            if value:
                attributes[attr] = value
        service = self.service or _str(obj.get("service")) or self.default_service
        resource: dict[str, Any] = {RES_SERVICE_NAME: service}
        hostname = _str(obj.get("hostname"))
        if hostname:
            resource[RES_HOST_NAME] = hostname
        process = obj.get("process")
        if type(process) is int:
            resource[RES_PROCESS_PID] = process
        hasher = hashlib.blake2b(self._key_prefix, digest_size=16)
        hasher.update(f"{line_no}\0".encode())
        hasher.update(text.encode("utf-8", "surrogateescape"))
        self.stats.records += 1
        self.stats.lines_in_records += 1
        return LogRecord(
            time_ns=time_ns,
            severity_number=severity_number(level),
            severity_text=level,
            body=body,
            service=service,
            trace_id=_hex_id(obj.get("trace_id"), _HEX_TRACE_RE),
            span_id=_hex_id(obj.get("span_id"), _HEX_SPAN_RE),
            request_id=self._request_id(obj.get("request_id")),
            global_request_id=self._request_id(obj.get("global_request_id")),
            user_id=_str(obj.get("user_id")) or None,
            project_id=_str(obj.get("project_id")) or None,
            domain_id=_str(obj.get("domain_id")) or None,
            logger=_str(obj.get("logger")) or "",
            attributes=attributes,
            resource=resource,
            dedup_key=hasher.digest(),
        )

    # -- finishing --------------------------------------------------------------

    def _finish(self, p: _Pending) -> LogRecord:
        service = self.service or self.default_service
        attributes = p.attributes
        attributes[ATTR_FILE_NAME] = self.source
        attributes[ATTR_FILE_LINE] = p.line_no
        if p.in_traceback:
            _exception_attributes(p.body, attributes)
        resource = p.resource
        resource[RES_SERVICE_NAME] = service
        key = hashlib.blake2b(self._key_prefix, digest_size=16)
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


def _frac_ns(frac: str | None) -> int:
    return int(frac.ljust(9, "0")) if frac else 0


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _hex_id(value: object, pattern: re.Pattern[str]) -> bytes | None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        return None
    raw = bytes.fromhex(value)
    return None if raw.count(0) == len(raw) else raw


def _exception_attributes(lines: list[str], attributes: dict[str, Any]) -> None:
    """Set ``exception.type``/``exception.message`` from the first unindented line
    after a traceback header (the exception Python printed)."""
    seen_header = False
    for line in lines:
        if not seen_header:
            seen_header = line.endswith(TRACEBACK_HEADER)
            continue
        if not line or line[0] in " \t":
            continue
        m = _EXC_LINE_RE.fullmatch(line)
        if m is not None:
            attributes[ATTR_EXCEPTION_TYPE] = m["type"]
            attributes[ATTR_EXCEPTION_MESSAGE] = m["msg"] or ""
        return
