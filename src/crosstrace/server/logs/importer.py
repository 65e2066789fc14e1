"""``crosstrace logs import``: read existing log files into a store.

Each file is read as a stream (plain or gzip, recognised by its first bytes), in
constant memory: lines are cut at :data:`MAX_LINE_BYTES`, parsed by
:class:`~crosstrace.server.logs.parse.LogParser` and written in batches of
:data:`DEFAULT_BATCH_SIZE` records through :meth:`Store.submit_logs`, with at most
:data:`MAX_BATCHES_IN_FLIGHT` batches waiting for their commit. Every record has a
``dedup_key`` made from the service, the file's name and host, the record's first
line number and its text, so importing a file again stores nothing new.

The service and host of a file come from its path (:mod:`.names`) unless given.

A file that cannot be opened or read is an error for that file only; the other files
are still imported. A store that fails stops the import.
"""

from __future__ import annotations

import collections
import datetime as _dt
import gzip
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from crosstrace.server.logs.fields import RES_HOST_NAME, SEVERITY_NUMBERS, ParseStats
from crosstrace.server.logs.names import origin_of
from crosstrace.server.logs.parse import LogParser
from crosstrace.server.model import LogRecord
from crosstrace.server.store.base import Store

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCHES_IN_FLIGHT",
    "MAX_FAILED_REQUESTS",
    "MAX_LINE_BYTES",
    "FileImportResult",
    "ProgressCallback",
    "import_file",
]

log = logging.getLogger(__name__)


#: A longer line is cut to this many bytes (the rest of it is read and dropped).
MAX_LINE_BYTES = 256 * 1024
#: Records per store write.
DEFAULT_BATCH_SIZE = 1000
#: Batches handed to the store and not yet committed, per file.
MAX_BATCHES_IN_FLIGHT = 2
#: How often (in lines) the progress callback is told the bytes read.
PROGRESS_EVERY_LINES = 2000

_GZIP_MAGIC = b"\x1f\x8b"
_READ_BUFFER = 1 << 16

#: Failing requests named in the summary, per file.
MAX_FAILED_REQUESTS = 3
#: Hosts remembered per file for the summary.
MAX_HOSTS = 100
_ERROR = SEVERITY_NUMBERS["ERROR"]

#: ``on_progress(bytes_read)``: raw bytes of the file consumed so far.
ProgressCallback = Callable[[int], None]


@dataclass(slots=True)
class FileImportResult:
    """What importing one file did. ``stored + duplicates == stats.records`` unless
    ``error`` is set."""

    path: str
    service: str
    host: str | None = None
    stats: ParseStats = field(default_factory=ParseStats)
    stored: int = 0
    duplicates: int = 0
    truncated_lines: int = 0
    bytes_read: int = 0
    compressed: bool = False
    error: str | None = None
    store_failed: bool = False
    #: Request ids (global when known) of the first records at ERROR or above.
    failed_requests: list[str] = field(default_factory=list)
    #: Hosts the records name (the file's host, or the hosts its lines name).
    hosts: set[str] = field(default_factory=set)
    #: Time range of the records read, nanoseconds since the epoch.
    first_ns: int | None = None
    last_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``crosstrace logs import --json``)."""
        s = self.stats
        return {
            "path": self.path,
            "service": self.service,
            "host": self.host,
            "hosts": sorted(self.hosts),
            "format": s.formats.most_common(1)[0][0] if s.formats else None,
            "lines_read": s.lines_read,
            "records": s.records,
            "lines_in_records": s.lines_in_records,
            "continuation_lines": s.continuation_lines,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "skipped": s.skipped,
            "skipped_by_reason": dict(s.skipped_by_reason),
            "skipped_examples": {k: list(v) for k, v in s.skipped_examples.items()},
            "invalid_request_ids": s.invalid_request_ids,
            "truncated_lines": self.truncated_lines,
            "bytes_read": self.bytes_read,
            "failed_requests": list(self.failed_requests),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "error": self.error,
        }


class _Lines:
    """Iterate the decoded lines of a plain or gzip file, lines cut at
    :data:`MAX_LINE_BYTES`. A read error ends the iteration and is kept in
    ``error`` (the lines before it are still parsed and stored)."""

    def __init__(
        self, raw: BinaryIO, result: FileImportResult, on_progress: ProgressCallback | None
    ) -> None:
        self.raw = raw
        self.result = result
        self.on_progress = on_progress
        self.error: str | None = None
        self.stream: BinaryIO | gzip.GzipFile
        magic = raw.read(2)
        raw.seek(0)
        if magic == _GZIP_MAGIC:
            self.stream = gzip.GzipFile(fileobj=raw, mode="rb")
            result.compressed = True
        else:
            self.stream = raw

    def __iter__(self) -> Iterator[str]:
        readline = self.stream.readline
        result = self.result
        count = 0
        try:
            while True:
                chunk = readline(MAX_LINE_BYTES)
                if not chunk:
                    break
                if len(chunk) == MAX_LINE_BYTES and not chunk.endswith(b"\n"):
                    result.truncated_lines += 1
                    while True:  # drop the rest of the over-long line
                        rest = readline(MAX_LINE_BYTES)
                        if not rest or rest.endswith(b"\n"):
                            break
                yield chunk.decode("utf-8", "replace")
                count += 1
                if self.on_progress is not None and count % PROGRESS_EVERY_LINES == 0:
                    self.on_progress(self.raw.tell())
        except (OSError, EOFError, zlib.error) as exc:
            self.error = f"read error after line {count}: {exc}"
        result.bytes_read = self.raw.tell()
        if self.on_progress is not None:
            self.on_progress(result.bytes_read)


def import_file(
    store: Store,
    path: str | os.PathLike[str],
    *,
    service: str | None = None,
    host: str | None = None,
    tz: _dt.tzinfo | None = None,
    year: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
) -> FileImportResult:
    """Import one log file into *store* and say what happened.

    *service* names the service for every record (default: from the file's path, or
    a JSON line's own ``service``); *host* the host of every record (default: a
    line's own host, else the file's path, see :mod:`.names`); *tz* is the zone of
    times written without one
    (UTC when ``None``); *year* is the year of journal lines (default: the journal's
    ``-- Logs begin at`` header, else the year the file was last modified).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    origin = origin_of(path)
    result = FileImportResult(
        path=str(path), service=service or origin.service, host=host or origin.host
    )
    try:
        raw = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 (closed below)
    except OSError as exc:
        result.error = f"cannot open: {exc.strerror or exc}"
        return result
    with raw:
        try:
            mtime_year = _dt.datetime.fromtimestamp(os.fstat(raw.fileno()).st_mtime, _dt.UTC).year
            lines = _Lines(raw, result, on_progress)
        except OSError as exc:
            result.error = f"cannot read: {exc.strerror or exc}"
            return result
        parser = LogParser(
            origin.source,
            service=service,
            default_service=result.service,
            host=host,
            default_host=origin.host,
            tz=tz,
            year=year,
            fallback_year=mtime_year,
        )
        result.stats = parser.stats
        _write(store, _observed(parser.parse(lines), result), batch_size, result)
        if lines.error is not None and result.error is None:
            result.error = lines.error
    log.debug("imported %s: %d records, %d new", result.path, result.stats.records, result.stored)
    return result


def _observed(records: Iterator[LogRecord], result: FileImportResult) -> Iterator[LogRecord]:
    """Pass *records* on, stamped with the import time (retention ages them from
    then), noting their hosts, time range and first failing requests."""
    failed = result.failed_requests
    hosts = result.hosts
    first = last = None
    imported_ns = time.time_ns()
    for record in records:
        record.imported_ns = imported_ns
        host = record.resource.get(RES_HOST_NAME)
        if isinstance(host, str) and host not in hosts and len(hosts) < MAX_HOSTS:
            hosts.add(host)
        t = record.time_ns
        if first is None or t < first:
            first = t
        if last is None or t > last:
            last = t
        if record.severity_number >= _ERROR and len(failed) < MAX_FAILED_REQUESTS:
            rid = record.global_request_id or record.request_id
            if rid is not None and rid not in failed:
                failed.append(rid)
        yield record
    result.first_ns, result.last_ns = first, last


def _write(
    store: Store, records: Iterator[LogRecord], batch_size: int, result: FileImportResult
) -> None:
    """Write *records* in batches, keeping a bounded number of batches in flight."""
    in_flight: collections.deque[tuple[Future[int], int]] = collections.deque()

    def settle(future: Future[int], size: int) -> None:
        new = future.result()
        result.stored += new
        result.duplicates += size - new

    batch: list[LogRecord] = []
    try:
        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                in_flight.append((store.submit_logs(batch), len(batch)))
                batch = []
                while len(in_flight) >= MAX_BATCHES_IN_FLIGHT:
                    settle(*in_flight.popleft())
        if batch:
            in_flight.append((store.submit_logs(batch), len(batch)))
        while in_flight:
            settle(*in_flight.popleft())
    except Exception as exc:  # the store's own errors: any type, reported as such
        log.debug("store write failed while importing %s: %s", result.path, exc)
        result.error = f"store write failed: {exc}"
        result.store_failed = True
        for future, _ in in_flight:  # let what was handed over finish before returning
            try:
                future.result()
            except Exception:  # noqa: S112 (already reported above)
                continue
