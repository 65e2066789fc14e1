"""`crosstrace logs import` end to end: real log files into the real stores."""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from crosstrace.cli import main
from crosstrace.context import RequestContext, use_context
from crosstrace.logging import ContextFormatter, JSONFormatter
from crosstrace.server.logs import importer
from crosstrace.server.logs.importer import FileImportResult, import_file
from crosstrace.server.model import LogQuery, LogRecord
from crosstrace.server.redaction import default_redactor
from crosstrace.server.store import Store, open_store


def _realdata() -> Path:
    """``shared/realdata/openstack-logs`` beside the checkout (or a worktree's parent)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "realdata" / "openstack-logs"
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "realdata" / "openstack-logs"


REALDATA = _realdata()
C_API = REALDATA / "screen-c-api.txt"
NEUTRON = REALDATA / "screen-neutron-l3.txt"
JOURNAL_API = REALDATA / "devstack@c-api.service.log.txt"
JOURNAL_VOL = REALDATA / "devstack@c-vol.service.log.txt"

ALL = 1_000_000  # a query limit above any file's record count

# The context bracket of an oslo.log line, with its request id(s).
CONTEXT_ID_RE = re.compile(r"^\S+ \S+ (?:\d+ )?[A-Z]+ \S+ \[(?:None )?(req-[0-9a-f-]{36})[ \]]")
ANY_ID_RE = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found: {path.name}")
    return path


def file_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]  # each file ends with a newline


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = open_store("sqlite:///" + str(tmp_path / "x.sqlite3"))
    try:
        yield s
    finally:
        s.close()


def stored(store: Store, service: str) -> list[LogRecord]:
    return store.search_logs(LogQuery(service=service, limit=ALL))


def assert_accounted(result: FileImportResult, path: Path, records: list[LogRecord]) -> None:
    """Every line of the file is in a stored record's body or counted as skipped."""
    s = result.stats
    assert result.error is None
    assert s.lines_read == len(file_lines(path))
    assert s.lines_in_records + s.skipped == s.lines_read
    assert len(records) == s.records == result.stored
    assert sum(r.body.count("\n") + 1 for r in records) == s.lines_in_records


def test_c_api_every_line_is_accounted_for(store: Store) -> None:
    """screen-c-api.txt: lines read == lines in stored records + skipped lines."""
    path = need(C_API)
    result = import_file(store, path)
    records = stored(store, "c-api")
    assert_accounted(result, path, records)
    assert result.stats.lines_read == 3695
    # The four shell lines before the first log line are the only ones skipped.
    assert dict(result.stats.skipped_by_reason) == {"not a log line and no record before it": 4}
    assert result.stats.skipped_examples["not a log line and no record before it"] == [1, 2, 3, 4]
    # Each stored record's first line is the file line it names.
    lines = file_lines(path)
    for r in records:
        first = lines[r.attributes["log.file.line"] - 1]
        # Stored as read, but for secrets (tokens in curl lines), which are masked.
        assert default_redactor().text(first).endswith(r.body.split("\n")[0])


def test_c_api_request_ids(store: Store) -> None:
    """The ids in the context brackets are all extracted; the README's 222 counts four
    more that only appear inside glance's response headers logged by cinder."""
    path = need(C_API)
    import_file(store, path)
    records = stored(store, "c-api")
    found = {r.request_id for r in records if r.request_id}
    lines = file_lines(path)
    in_context = {m[1] for line in lines if (m := CONTEXT_ID_RE.match(line))}
    anywhere = {m for line in lines for m in ANY_ID_RE.findall(line)}
    assert found == in_context
    assert len(found) == 218
    assert len(anywhere) == 222
    others = anywhere - found
    header_ids = {
        m
        for line in lines
        if line.startswith("x-openstack-request-id:")
        for m in ANY_ID_RE.findall(line)
    }
    assert others == header_ids
    assert len(others) == 4
    # Those four are kept in the body of the record that logged the response.
    for rid in others:
        hits = store.search_logs(LogQuery(service="c-api", text=rid, limit=10))
        assert [h.logger for h in hits] == ["glanceclient.common.http"]
        assert hits[0].request_id is None


def test_c_api_one_request_in_time_order(store: Store) -> None:
    """One query by request id returns that request's lines, in time order, all of them."""
    path = need(C_API)
    import_file(store, path)
    rid = "req-35ce1965-5cf3-4455-8ad4-8e81ad85c95a"
    got = store.search_logs(LogQuery(request_id=rid, limit=ALL))
    lines = file_lines(path)
    expected = [line for line in lines if f"[{rid} " in line]
    assert len(got) == len(expected) > 20
    assert [r.time_ns for r in got] == sorted(r.time_ns for r in got)
    assert all(r.request_id == rid for r in got)
    # Same lines as the file, in the file's order (which is time order here).
    assert [r.body for r in got] == [line.split("] ", 1)[1] for line in expected]
    assert got[0].body == "POST http://127.0.0.1:8776/v1/4ca8f2631be94ccf9ac4902f055bfc1f/volumes"
    assert (got[0].user_id, got[0].project_id) == (
        "4be23dd48736467599c375dd39ba8e90",
        "4ca8f2631be94ccf9ac4902f055bfc1f",
    )


def test_c_api_multi_line_records_are_whole(store: Store) -> None:
    """A logged HTTP response spanning 26 lines is one record with every line, in order."""
    path = need(C_API)
    import_file(store, path)
    lines = file_lines(path)
    records = {r.attributes["log.file.line"]: r for r in stored(store, "c-api")}
    multi = {n: r for n, r in records.items() if "\n" in r.body}
    assert len(multi) > 5
    starts = sorted(records)
    for n, r in multi.items():
        nxt = starts[starts.index(n) + 1] if n != starts[-1] else len(lines) + 1
        span = lines[n - 1 : nxt - 1]
        body = r.body.split("\n")
        assert len(body) == len(span)
        assert span[0].endswith(body[0])
        assert body[1:] == span[1:]  # continuation lines verbatim


def test_importing_twice_adds_nothing(store: Store) -> None:
    """The second import of the same file stores 0 records and reports them as present."""
    path = need(C_API)
    first = import_file(store, path)
    second = import_file(store, path)
    assert first.stored == 3589
    assert (second.stored, second.duplicates) == (0, first.stored)
    assert len(stored(store, "c-api")) == first.stored


def test_neutron_traceback_is_kept_whole(sqlite_store: Store) -> None:
    """screen-neutron-l3.txt: all lines accounted for; the RemoteError traceback is one
    record whose lines are the file's lines without their repeated prefix."""
    path = need(NEUTRON)
    result = import_file(sqlite_store, path)
    records = stored(sqlite_store, "neutron-l3")
    assert_accounted(result, path, records)
    errors = sqlite_store.search_logs(
        LogQuery(service="neutron-l3", min_severity=17, text="Failed to fetch router", limit=10)
    )
    [error] = errors
    lines = file_lines(path)
    start = error.attributes["log.file.line"]
    prefix = "2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent "
    span = []
    for line in lines[start - 1 :]:
        if not line.startswith(prefix):
            break
        span.append(line[len(prefix) :])
    assert len(span) == 19
    assert (
        span[0]
        == "[-] Failed to fetch router information for '5b130483-85f2-4bf4-b641-e55ba5f1d30f'"
    )
    assert error.body.split("\n") == [span[0][4:], *span[1:]]
    assert error.attributes["exception.type"] == "RemoteError"
    assert error.body.split("\n")[1] == "Traceback (most recent call last):"


def test_journal_files_are_accounted_for(store: Store) -> None:
    """Both devstack@*.service journal files: every line accounted for; the c-vol
    traceback is joined to the cinder-volume record before it."""
    api, vol = need(JOURNAL_API), need(JOURNAL_VOL)
    r_api = import_file(store, api)
    assert_accounted(r_api, api, stored(store, "c-api"))
    assert dict(r_api.stats.skipped_by_reason) == {"journal marker": 1}
    r_vol = import_file(store, vol)
    vol_records = stored(store, "c-vol")
    assert_accounted(r_vol, vol, vol_records)
    assert r_vol.stats.skipped == 0
    first = vol_records[0]
    assert first.request_id == "req-34715675-437c-4668-8f27-ee0f5f10cabb"
    body = first.body.split("\n")
    assert body[0] == "Delete snapshot completed successfully."
    tail = [line.split("cinder-volume[27348]: ", 1)[1] for line in file_lines(vol)[1:9]]
    assert body[1:] == tail
    assert first.resource["host.name"] == "ubuntu-xenial-rax-dfw-9013276"


def test_journal_year_from_header(sqlite_store: Store) -> None:
    """The c-api journal's `-- Logs begin at ... 2017` header gives its lines their year."""
    import_file(sqlite_store, need(JOURNAL_API))
    first = stored(sqlite_store, "c-api")[0]
    assert first.time_ns == 1490703642377230000  # 2017-03-28 12:20:42.377230 UTC


def test_gzip_copy_of_an_imported_file_adds_nothing(sqlite_store: Store, tmp_path: Path) -> None:
    """A .gz file is read as its text; the rotated .gz of an imported file is a duplicate."""
    path = need(JOURNAL_VOL)
    gz = tmp_path / (path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    plain = import_file(sqlite_store, path)
    packed = import_file(sqlite_store, gz)
    assert packed.compressed
    assert packed.error is None
    assert packed.stats.lines_read == plain.stats.lines_read == 14
    assert (packed.stored, packed.duplicates) == (0, plain.stored)


def test_truncated_gzip_is_an_error_but_keeps_what_was_read(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A cut .gz file reports a read error; the records before the cut are stored."""
    path = need(C_API)
    data = gzip.compress(path.read_bytes())
    cut = tmp_path / "screen-c-api.txt.gz"
    cut.write_bytes(data[: len(data) // 2])
    result = import_file(sqlite_store, cut)
    assert result.error is not None
    assert result.error.startswith("read error")
    assert 0 < result.stored == len(stored(sqlite_store, "c-api"))
    assert result.stats.lines_read < 3695


def test_overlong_lines_are_cut(
    sqlite_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than the limit is cut, counted, and the lines after it are intact."""
    monkeypatch.setattr(importer, "MAX_LINE_BYTES", 64)
    path = tmp_path / "svc.log"
    path.write_text(
        "2024-01-01 00:00:00.000 1 INFO a [-] " + "x" * 500 + "\n"
        "2024-01-01 00:00:01.000 1 INFO a [-] short\n"
    )
    result = import_file(sqlite_store, path)
    assert result.truncated_lines == 1
    got = stored(sqlite_store, "svc")
    assert [len(r.body) for r in got] == [64 - len("2024-01-01 00:00:00.000 1 INFO a [-] "), 5]
    assert got[1].body == "short"


def test_json_formatter_round_trip(sqlite_store: Store, tmp_path: Path) -> None:
    """Lines written by crosstrace.logging.JSONFormatter import with every field."""
    path = tmp_path / "demo-api.json"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JSONFormatter(service="demo-api"))
    logger = logging.getLogger("crosstrace.test.roundtrip.json")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    ctx = RequestContext(
        global_request_id="req-11111111-2222-4333-8444-555555555555",
        user_id="u1",
        project_id="p1",
        domain_id="d1",
    )
    try:
        logger.info("outside any request")
        with use_context(ctx):
            logger.warning("quota at %d%%", 90)
            try:
                {}["missing"]
            except KeyError:
                logger.exception("volume create failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    result = import_file(sqlite_store, path)
    assert result.error is None
    assert (result.stats.lines_read, result.stored, result.stats.skipped) == (3, 3, 0)
    assert result.stats.formats["json"] == 3
    got = sqlite_store.search_logs(LogQuery(request_id=ctx.request_id, limit=10))
    assert [r.body for r in got] == ["quota at 90%", "volume create failed"]
    by_global = sqlite_store.search_logs(LogQuery(request_id=ctx.global_request_id, limit=10))
    assert [r.body for r in by_global] == ["quota at 90%", "volume create failed"]
    warning, error = got
    assert (warning.severity_text, warning.severity_number) == ("WARNING", 13)
    assert (error.severity_text, error.severity_number) == ("ERROR", 17)
    assert error.service == "demo-api"
    assert error.logger == "crosstrace.test.roundtrip.json"
    assert (error.user_id, error.project_id, error.domain_id) == ("u1", "p1", "d1")
    assert error.attributes["exception.type"] == "KeyError"
    assert error.attributes["exception.stacktrace"].startswith("Traceback (most recent call last):")
    assert error.resource["process.pid"] > 0
    outside = stored(sqlite_store, "demo-api")[0]
    assert outside.body == "outside any request"
    assert outside.request_id is None


def test_context_formatter_round_trip(sqlite_store: Store, tmp_path: Path) -> None:
    """Lines written by crosstrace.logging.ContextFormatter (oslo.log's format) import
    with both ids, and a logged exception's traceback is joined to its record."""
    path = tmp_path / "demo-vol.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(ContextFormatter())
    logger = logging.getLogger("crosstrace.test.roundtrip.text")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    ctx = RequestContext(
        global_request_id="req-11111111-2222-4333-8444-555555555555", project_id="p1"
    )
    try:
        logger.debug("starting")
        with use_context(ctx):
            try:
                raise RuntimeError("disk full")
            except RuntimeError:
                logger.exception("attach failed")
            logger.info("cleaned up")
    finally:
        logger.removeHandler(handler)
        handler.close()
    result = import_file(sqlite_store, path)
    lines = file_lines(path)
    assert result.error is None
    assert result.stats.lines_read == len(lines)
    assert result.stats.skipped == 0
    assert result.stored == 3
    got = sqlite_store.search_logs(LogQuery(request_id=ctx.request_id, limit=10))
    assert [r.body.split("\n")[0] for r in got] == ["attach failed", "cleaned up"]
    failed = got[0]
    assert failed.global_request_id == ctx.global_request_id
    assert failed.project_id == "p1"
    assert failed.body.split("\n")[1:] == lines[2:-1]  # the traceback, verbatim
    assert failed.attributes["exception.type"] == "RuntimeError"
    assert failed.attributes["exception.message"] == "disk full"


def test_cli_imports_and_reports(tmp_path: Path) -> None:
    """`crosstrace logs import` prints a summary per file (plain, not a TTY), keeps going
    after a missing file and exits 1 because of it."""
    path = need(JOURNAL_VOL)
    db = "sqlite:///" + str(tmp_path / "cli.sqlite3")
    missing = tmp_path / "nope.log"
    res = CliRunner().invoke(main, ["logs", "import", "--db", db, str(missing), str(path)])
    assert res.exit_code == 1, res.output
    assert f"{missing}: service nope" in res.output
    assert "cannot open: No such file or directory" in res.output
    assert "lines read           14" in res.output
    assert "records              6 (14 lines, 8 continuation lines joined)" in res.output
    assert "stored               6" in res.output
    again = CliRunner().invoke(main, ["logs", "import", "--db", db, "--json", str(path)])
    assert again.exit_code == 0, again.output
    [summary] = json.loads(again.stdout)
    assert summary["service"] == "c-vol"
    assert summary["format"] == "journal"
    assert (summary["lines_read"], summary["stored"], summary["duplicates"]) == (14, 0, 6)
    s = open_store(db)
    try:
        assert len(stored(s, "c-vol")) == 6
    finally:
        s.close()


def test_store_failure_is_reported_and_stops_the_import(tmp_path: Path) -> None:
    """A store that fails (here: closed) makes the file's result an error, not a crash."""
    s = open_store("sqlite:///" + str(tmp_path / "closed.sqlite3"))
    s.close()
    result = import_file(s, need(C_API))
    assert result.store_failed
    assert result.error is not None
    assert result.error.startswith("store write failed")
    assert result.stored == 0


def test_cli_bad_store_url(tmp_path: Path) -> None:
    """An unusable --db is a one-line error, not a traceback."""
    path = tmp_path / "x.log"
    path.write_text("2024-07-01 12:00:00.000 1 INFO a [-] m\n")
    res = CliRunner().invoke(main, ["logs", "import", "--db", "mysql://nope", str(path)])
    assert res.exit_code == 1
    assert "cannot open the store" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_cli_options(tmp_path: Path) -> None:
    """--service names the service, --tz reads naive times in that zone; a bad zone is a
    usage error."""
    path = tmp_path / "x.log"
    path.write_text("2024-07-01 12:00:00.000 1 INFO a [-] m\n")
    db = "sqlite:///" + str(tmp_path / "cli.sqlite3")
    res = CliRunner().invoke(
        main, ["logs", "import", "--db", db, "--service", "svc", "--tz", "+02:00", str(path)]
    )
    assert res.exit_code == 0, res.output
    s = open_store(db)
    try:
        [r] = stored(s, "svc")
    finally:
        s.close()
    assert r.time_ns == 1719828000 * 10**9  # 10:00 UTC
    bad = CliRunner().invoke(main, ["logs", "import", "--db", db, "--tz", "Mars/Base", str(path)])
    assert bad.exit_code == 2
    assert "unknown time zone" in bad.output
