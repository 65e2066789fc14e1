"""The log file parser: oslo.log text, journald output, JSON lines."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosstrace.server.logs.fields import (
    MAX_RECORD_LINES,
    SEVERITY_NUMBERS,
    SKIP_BAD_JSON,
    SKIP_BAD_TIME,
    SKIP_JOURNAL_MARKER,
    SKIP_NO_RECORD,
    SKIP_TOO_LARGE,
    severity_number,
)
from crosstrace.server.logs.names import derive_service_name
from crosstrace.server.logs.parse import LogParser
from crosstrace.server.model import LogRecord

GID = "req-11111111-2222-4333-8444-555555555555"
LID = "req-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"


def parse(text: str, **kwargs: object) -> tuple[list[LogRecord], LogParser]:
    parser = LogParser("x.log", **kwargs)  # type: ignore[arg-type]
    records = list(parser.parse(text.splitlines(keepends=True)))
    return records, parser


def ns(text: str) -> int:
    """Nanoseconds since the epoch of a UTC wall-clock time 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    when = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")
    return calendar.timegm(when.timetuple()) * 10**9 + when.microsecond * 1000


def test_oslo_line_with_pid_and_no_context() -> None:
    """An oslo.log line with a PID and `[-]` gives time, level, logger, pid and message."""
    records, parser = parse(
        "2013-09-27 18:22:35.392 6602 AUDIT cinder.api.extensions [-] Initializing extension"
        " manager.\n"
    )
    [r] = records
    assert r.time_ns == ns("2013-09-27 18:22:35.392000")
    assert (r.severity_text, r.severity_number) == ("AUDIT", 10)
    assert r.logger == "cinder.api.extensions"
    assert r.body == "Initializing extension manager."
    assert r.resource["process.pid"] == 6602
    assert r.resource["service.name"] == "x"
    assert r.request_id is None
    assert r.global_request_id is None
    assert r.attributes["log.file.line"] == 1
    assert parser.stats.lines_in_records == 1


def test_one_id_context_without_pid() -> None:
    """DevStack's `[req-<id> user project]` form, no PID: the id is the local one."""
    records, _ = parse(
        f"2017-03-01 20:56:05.107 INFO neutron.agent.agent_extensions_manager [{LID} None None]"
        " Loaded agent extensions: []\n"
    )
    [r] = records
    assert r.request_id == LID
    assert r.global_request_id is None
    assert r.user_id is None
    assert r.project_id is None
    assert "process.pid" not in r.resource
    assert r.body == "Loaded agent extensions: []"


def test_one_id_context_with_user_and_project() -> None:
    """The 2013 form `[req-<id> user project]` fills user and project."""
    records, _ = parse(
        f"2013-09-27 18:26:40.236 6602 INFO cinder.api.openstack.wsgi [{LID} 4be23dd4 4ca8f263]"
        " POST http://127.0.0.1:8776/v1/4ca8f263/volumes\n"
    )
    [r] = records
    assert (r.request_id, r.user_id, r.project_id) == (LID, "4be23dd4", "4ca8f263")
    assert r.body == "POST http://127.0.0.1:8776/v1/4ca8f263/volumes"


def test_two_id_context() -> None:
    """`[global local user project domain user_domain project_domain]`: both ids."""
    records, _ = parse(
        f"2024-01-02 03:04:05.678 42 ERROR nova.api [{GID} {LID} u1 p1 d1 ud1 pd1] boom\n"
    )
    [r] = records
    assert r.global_request_id == GID
    assert r.request_id == LID
    assert (r.user_id, r.project_id, r.domain_id) == ("u1", "p1", "d1")
    assert r.attributes["openstack.user_domain_id"] == "ud1"
    assert r.attributes["openstack.project_domain_id"] == "pd1"
    assert r.severity_number == 17


def test_two_id_context_with_system_scope() -> None:
    """Current oslo.log writes six identity fields, system_scope fourth."""
    records, _ = parse(
        f"2024-01-02 03:04:05.678 42 INFO nova.api [{GID} {LID} u1 p1 d1 all ud1 pd1] x\n"
    )
    [r] = records
    assert (r.user_id, r.project_id, r.domain_id) == ("u1", "p1", "d1")
    assert r.attributes["openstack.system_scope"] == "all"
    assert r.attributes["openstack.user_domain_id"] == "ud1"
    assert r.attributes["openstack.project_domain_id"] == "pd1"


def test_two_id_context_with_absent_fields() -> None:
    """`None` and `-` stand for absent fields in the two-id form."""
    records, _ = parse(f"2024-01-02 03:04:05.678 42 INFO nova.api [None {LID} - p1 - - -] hi\n")
    [r] = records
    assert r.global_request_id is None
    assert r.request_id == LID
    assert (r.user_id, r.project_id, r.domain_id) == (None, "p1", None)
    assert "openstack.user_domain_id" not in r.attributes


@pytest.mark.parametrize(
    "bad",
    [
        "req-AAAAAAAA-bbbb-4ccc-8ddd-eeeeeeeeeeee",  # uppercase
        "req-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeeeX",  # suffix
        "req-123",
    ],
)
def test_invalid_request_id_is_dropped_and_counted(bad: str) -> None:
    """A request id that is not exactly `req-<uuid>` is not stored, and is counted."""
    records, parser = parse(f"2024-01-02 03:04:05.678 42 INFO nova.api [{bad} {LID} u p] hi\n")
    [r] = records
    assert r.global_request_id is None
    assert r.request_id == LID
    assert parser.stats.invalid_request_ids == 1
    assert r.body == "hi"


def test_bracket_that_is_not_a_context_stays_in_the_message() -> None:
    """A message that starts with a bracket is not mistaken for a request context."""
    records, _ = parse("2017-03-01 21:30:51.947 1948 DEBUG vlog [POLLIN] on fd 15\n")
    [r] = records
    assert r.body == "[POLLIN] on fd 15"
    assert r.request_id is None


NEUTRON_TRACEBACK = """\
2017-03-01 21:30:55.623 1948 DEBUG oslo_messaging._drivers.amqpdriver [-] received reply
2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent [-] Failed to fetch router information
2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent Traceback (most recent call last):
2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent   File "agent.py", line 479, in update
2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent     [update.id])
2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent RemoteError: Remote error: Gone
2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent [u'Traceback (most recent call last):\\n']
2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent {trailing_space}
2017-03-01 21:30:55.637 1948 DEBUG neutron.agent.l3.agent [-] Starting router update
""".replace("{trailing_space}", "")


def test_traceback_with_exception_prefix_is_joined_whole() -> None:
    """oslo.log's exception prefix (same time, PID, logger, no context) continues the record."""
    records, parser = parse(NEUTRON_TRACEBACK)
    assert [r.severity_text for r in records] == ["DEBUG", "ERROR", "DEBUG"]
    error = records[1]
    prefix = "2017-03-01 21:30:55.624 1948 ERROR neutron.agent.l3.agent "
    file_lines = NEUTRON_TRACEBACK.splitlines()[1:8]
    expected = ["Failed to fetch router information"] + [
        line[len(prefix) :] for line in file_lines[1:]
    ]
    assert error.body.split("\n") == expected
    assert error.attributes["exception.type"] == "RemoteError"
    assert error.attributes["exception.message"] == "Remote error: Gone"
    assert error.attributes["log.file.line"] == 2
    assert parser.stats.continuation_lines == 6
    assert parser.stats.lines_in_records == 9


def test_traceback_repeating_the_context_is_joined() -> None:
    """Newer oslo.log repeats the record's context on every traceback line."""
    ctx = f"[None {LID} admin demo]"
    text = (
        f"2024-05-01 10:00:00.100 7 ERROR nova.compute.manager {ctx} Build failed\n"
        f"2024-05-01 10:00:00.100 7 ERROR nova.compute.manager {ctx} Traceback (most recent"
        " call last):\n"
        f'2024-05-01 10:00:00.100 7 ERROR nova.compute.manager {ctx}   File "m.py", line 1\n'
        f"2024-05-01 10:00:00.100 7 ERROR nova.compute.manager {ctx} ValueError: bad\n"
        f"2024-05-01 10:00:00.100 7 ERROR nova.compute.manager {ctx} \n"
        f"2024-05-01 10:00:00.101 7 INFO nova.compute.manager {ctx} next\n"
    )
    records, _ = parse(text)
    assert len(records) == 2
    assert records[0].body.split("\n") == [
        "Build failed",
        "Traceback (most recent call last):",
        '  File "m.py", line 1',
        "ValueError: bad",
        "",
    ]
    assert records[0].attributes["exception.type"] == "ValueError"
    assert records[1].body == "next"


def test_same_context_same_time_without_traceback_stays_separate() -> None:
    """Two log calls in the same millisecond with the same context are two records."""
    ctx = f"[None {LID} admin demo]"
    text = (
        f"2024-05-01 10:00:00.100 7 INFO nova.api {ctx} first\n"
        f"2024-05-01 10:00:00.100 7 INFO nova.api {ctx} second\n"
    )
    records, _ = parse(text)
    assert [r.body for r in records] == ["first", "second"]


def test_record_after_an_unprefixed_traceback_stays_separate() -> None:
    """After a traceback written the standard-library way (unprefixed lines), the next
    line with the same time and context is a new record, not part of the traceback."""
    ctx = f"[{GID} {LID} - p1 - - - -]"
    text = (
        f"2026-11-22 02:19:31.904 7 ERROR app {ctx} attach failed\n"
        "Traceback (most recent call last):\n"
        '  File "t.py", line 1, in f\n'
        "RuntimeError: disk full\n"
        f"2026-11-22 02:19:31.904 7 INFO app {ctx} cleaned up\n"
    )
    records, _ = parse(text)
    assert [r.body.split("\n")[0] for r in records] == ["attach failed", "cleaned up"]
    assert records[0].body.count("\n") == 3
    assert records[0].attributes["exception.message"] == "disk full"


def test_line_without_context_from_another_logger_is_a_record() -> None:
    """A context-less line only continues a record of the same logger and time."""
    text = (
        "2017-03-01 21:30:55.624 1948 ERROR a.b [-] one\n"
        "2017-03-01 21:30:55.624 1948 ERROR c.d two\n"
        "2017-03-01 21:30:55.625 1948 ERROR c.d three\n"
    )
    records, _ = parse(text)
    assert [r.body for r in records] == ["one", "two", "three"]


def test_unprefixed_lines_join_the_record_before() -> None:
    """Lines of a multi-line message (no prefix) belong to the record before them."""
    text = (
        "2013-09-27 18:30:41.543 6602 DEBUG glanceclient.common.http [-] \n"
        "HTTP/1.1 200 OK\n"
        "x-openstack-request-id: req-f6cf51d0-3b72-43f7-bd50-21f7c64e7852\n"
        " log_http_response /glanceclient/common/http.py:150\n"
        "2013-09-27 18:30:41.544 6602 DEBUG glanceclient.common.http [-] next\n"
    )
    records, parser = parse(text)
    assert len(records) == 2
    assert records[0].body.split("\n") == [
        "",
        "HTTP/1.1 200 OK",
        "x-openstack-request-id: req-f6cf51d0-3b72-43f7-bd50-21f7c64e7852",
        " log_http_response /glanceclient/common/http.py:150",
    ]
    # An id inside a message body is another service's: it is not this record's id.
    assert records[0].request_id is None
    assert parser.stats.continuation_lines == 3


def test_lines_before_the_first_record_are_skipped_and_counted() -> None:
    """Shell trace lines at the top of a screen log are counted as skipped, with line numbers."""
    text = (
        "+ export PYTHONUNBUFFERED=1\n"
        "+ exec cinder-api\n"
        "2013-09-27 18:22:35.392 6602 AUDIT cinder.api.extensions [-] Init\n"
    )
    records, parser = parse(text)
    assert len(records) == 1
    assert parser.stats.skipped == 2
    assert parser.stats.skipped_by_reason[SKIP_NO_RECORD] == 2
    assert parser.stats.skipped_examples[SKIP_NO_RECORD] == [1, 2]
    assert parser.stats.lines_read == 3


def test_bad_timestamp_is_skipped() -> None:
    """A prefix with an impossible date is a counted skip, not a crash."""
    records, parser = parse(
        "2013-13-45 18:22:35.392 6602 INFO a [-] x\n2013-09-27 18:22:35.392 6602 INFO a [-] y\n"
    )
    assert [r.body for r in records] == ["y"]
    assert parser.stats.skipped_by_reason[SKIP_BAD_TIME] == 1


def test_colour_codes_are_removed() -> None:
    """DevStack's ANSI colour escapes do not reach the record."""
    records, _ = parse(
        f"2017-03-01 20:56:05.107 \x1b[00;32mDEBUG neutron.x [\x1b[01;36m{LID} None None"
        "\x1b[00;32m] \x1b[01;35m\x1b[00;32mhello\x1b[00m\n"
    )
    [r] = records
    assert (r.severity_text, r.logger, r.request_id, r.body) == ("DEBUG", "neutron.x", LID, "hello")


@pytest.mark.parametrize(("level", "number"), sorted(SEVERITY_NUMBERS.items()))
def test_severity_numbers(level: str, number: int) -> None:
    """Every documented level maps to its OTLP severity number."""
    records, _ = parse(f"2024-01-01 00:00:00.000 1 {level} x [-] m\n")
    assert records[0].severity_number == number == severity_number(level.lower())


def test_unknown_level_is_not_a_prefix() -> None:
    """An unknown word in the level position makes the line a continuation line."""
    records, _ = parse(
        "2024-01-01 00:00:00.000 1 INFO x [-] m\n2024-01-01 00:00:00.000 1 BOGUS y\n"
    )
    assert records[0].body.split("\n") == ["m", "2024-01-01 00:00:00.000 1 BOGUS y"]
    assert severity_number("BOGUS") == 0


def test_times_without_zone_use_the_given_zone() -> None:
    """A naive timestamp is read as UTC by default, or in the zone given."""
    line = "2024-07-01 12:00:00.250 1 INFO x [-] m\n"
    utc, _ = parse(line)
    paris, _ = parse(line, tz=zoneinfo.ZoneInfo("Europe/Paris"))
    assert utc[0].time_ns == ns("2024-07-01 12:00:00.250000")
    assert utc[0].time_ns - paris[0].time_ns == 2 * 3600 * 10**9  # CEST is UTC+2


JOURNAL = "\n".join(
    [
        "-- Logs begin at Tue 2017-03-28 12:02:58 UTC, end at Tue 2017-03-28 13:16:45 UTC. --",
        "Mar 28 12:20:42.377230 host1 systemd[1]: Started Devstack devstack@c-vol.service.",
        "May 26 20:44:32.276580 host1 cinder-volume[27348]: INFO cinder.volume.manager"
        f" [{LID} tempest-A None] Delete done.",
        "May 26 20:44:32.283596 host1 cinder-volume[27348]: Traceback (most recent call last):",
        'May 26 20:44:32.283764 host1 cinder-volume[27348]:   File "hub.py", line 457, in fire',
        "May 26 20:44:32.284561 host1 cinder-volume[27348]: error: cannot switch to a different"
        " thread",
        "May 26 20:44:39.848686 host1 sudo[552]:    stack : TTY=unknown ; COMMAND=/bin/true",
        "May 26 20:44:39.849078 host1 sudo[552]: pam_unix(sudo:session): session opened",
        "May 26 20:44:40.000000 host1 cinder-volume[999]: stray line of another process",
        "",
    ]
)


def test_journal_lines() -> None:
    """journalctl output: the header's year, oslo payloads, plain payloads, joined tracebacks."""
    records, parser = parse(JOURNAL)
    assert parser.stats.skipped_by_reason[SKIP_JOURNAL_MARKER] == 1
    assert [r.body.split("\n")[0] for r in records] == [
        "Started Devstack devstack@c-vol.service.",
        "Delete done.",
        "   stack : TTY=unknown ; COMMAND=/bin/true",
        "pam_unix(sudo:session): session opened",
        "stray line of another process",
    ]
    started, cinder, sudo1, _, stray = records
    assert started.time_ns == ns("2017-03-28 12:20:42.377230")
    assert started.severity_number == 0
    assert started.resource["process.executable.name"] == "systemd"
    assert cinder.time_ns == ns("2017-05-26 20:44:32.276580")
    assert (cinder.severity_text, cinder.logger) == ("INFO", "cinder.volume.manager")
    assert cinder.request_id == LID
    assert cinder.user_id == "tempest-A"
    assert cinder.body.split("\n")[1:] == [
        "Traceback (most recent call last):",
        '  File "hub.py", line 457, in fire',
        "error: cannot switch to a different thread",
    ]
    assert cinder.resource == {
        "host.name": "host1",
        "process.executable.name": "cinder-volume",
        "process.pid": 27348,
        "service.name": "x",
    }
    assert sudo1.resource["process.pid"] == 552
    assert stray.resource["process.pid"] == 999
    assert parser.stats.lines_read == parser.stats.lines_in_records + parser.stats.skipped


def test_journal_year_without_header() -> None:
    """Journal lines carry no year: the explicit year wins, else the fallback, rolling over."""
    text = "Dec 31 23:59:59 h a[1]: x\nJan  1 00:00:01 h a[1]: y\n"
    records, _ = parse(text, fallback_year=2020)
    assert records[0].time_ns == ns("2020-12-31 23:59:59.000000")
    assert records[1].time_ns == ns("2021-01-01 00:00:01.000000")
    fixed, _ = parse(text, year=2019)
    assert fixed[0].time_ns == ns("2019-12-31 23:59:59.000000")


def test_journal_payload_with_full_oslo_prefix() -> None:
    """A journal line whose payload is a whole oslo.log line takes the oslo time and PID."""
    records, _ = parse(
        "Mar 28 12:20:43.570064 h nova-api[5]: 2017-03-28 12:20:43.500 5 WARNING nova.x [-] w\n"
    )
    [r] = records
    assert r.time_ns == ns("2017-03-28 12:20:43.500000")
    assert (r.severity_text, r.logger, r.body) == ("WARNING", "nova.x", "w")


def json_line(**overrides: object) -> str:
    obj: dict[str, object] = {
        "timestamp": "2026-11-22T10:11:12.345678Z",
        "level": "ERROR",
        "logger": "demo.api",
        "message": "volume create failed",
        "exception": "Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'",
        "process": 4242,
        "thread_name": "MainThread",
        "hostname": "node1",
        "service": "demo-api",
        "global_request_id": GID,
        "request_id": LID,
        "user_id": "u1",
        "project_id": "p1",
        "domain_id": "d1",
        "user_domain_id": "ud1",
        "project_domain_id": "pd1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    }
    obj.update(overrides)
    return json.dumps(obj)


def test_json_line_fields() -> None:
    """Every JSONFormatter key lands in its place in the record."""
    records, _ = parse(json_line() + "\n", default_service="fallback")
    [r] = records
    assert r.time_ns == ns("2026-11-22 10:11:12.345678")
    assert (r.severity_text, r.severity_number, r.logger) == ("ERROR", 17, "demo.api")
    assert r.body == "volume create failed"
    assert r.attributes["exception.stacktrace"].endswith("KeyError: 'x'")
    assert r.attributes["exception.type"] == "KeyError"
    assert r.attributes["thread.name"] == "MainThread"
    assert r.resource == {"service.name": "demo-api", "host.name": "node1", "process.pid": 4242}
    assert r.service == "demo-api"
    assert (r.global_request_id, r.request_id) == (GID, LID)
    assert (r.user_id, r.project_id, r.domain_id) == ("u1", "p1", "d1")
    assert r.attributes["openstack.user_domain_id"] == "ud1"
    assert r.trace_id == bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    assert r.span_id == bytes.fromhex("b7ad6b7169203331")


def test_json_line_nulls_and_offsets() -> None:
    """Null ids stay None, an explicit --service wins, a zone offset is honoured."""
    line = json_line(
        timestamp="2026-11-22T12:11:12+02:00",
        exception=None,
        trace_id=None,
        span_id="0000000000000000",
        global_request_id=None,
        request_id="req-not-valid",
    )
    records, parser = parse(line + "\n", service="forced")
    [r] = records
    assert r.time_ns == ns("2026-11-22 10:11:12.000000")
    assert "exception.stacktrace" not in r.attributes
    assert r.trace_id is None
    assert r.span_id is None
    assert r.global_request_id is None
    assert r.request_id is None
    assert parser.stats.invalid_request_ids == 1
    assert r.service == "forced"


def test_json_lines_that_are_not_records_are_skipped() -> None:
    """Not an object, no timestamp, invalid JSON: each a counted skip."""
    text = "\n".join(
        [
            json_line(),
            "[1, 2]",
            json.dumps({"level": "INFO", "message": "no time"}),
            json_line(timestamp="yesterday"),
            '{"timestamp": "2026-11-22T10:11:12Z", "message": ',
            "{" * 5000 + "}" * 5000,
            json_line(message="last"),
        ]
    )
    records, parser = parse(text + "\n")
    assert [r.body for r in records] == ["volume create failed", "last"]
    assert parser.stats.skipped == 5
    assert parser.stats.skipped_by_reason[SKIP_BAD_JSON] == 4
    assert parser.stats.skipped_by_reason[SKIP_NO_RECORD] == 1  # "[1, 2]"
    assert parser.stats.lines_read == 7 == parser.stats.lines_in_records + parser.stats.skipped


def test_dedup_key_is_stable_and_distinguishes_lines() -> None:
    """The same file parsed twice gives the same keys; equal text on other lines differs."""
    text = "2024-01-01 00:00:00.000 1 INFO x [-] same\n" * 3 + json_line() + "\n"
    first, _ = parse(text)
    second, _ = parse(text)
    assert [r.dedup_key for r in first] == [r.dedup_key for r in second]
    assert len({r.dedup_key for r in first}) == 4
    other = list(LogParser("y.log").parse(text.splitlines()))
    assert not {r.dedup_key for r in other} & {r.dedup_key for r in first}


def test_record_size_is_bounded() -> None:
    """Continuation lines beyond the record limit are skipped and counted."""
    extra = 5
    text = "2024-01-01 00:00:00.000 1 INFO x [-] head\n" + "more\n" * (MAX_RECORD_LINES + extra)
    records, parser = parse(text)
    [r] = records
    assert r.body.count("\n") + 1 == MAX_RECORD_LINES
    assert parser.stats.skipped_by_reason[SKIP_TOO_LARGE] == extra + 1
    assert parser.stats.lines_read == parser.stats.lines_in_records + parser.stats.skipped


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("screen-c-api.txt", "c-api"),
        ("devstack@c-vol.service.log.txt", "c-vol"),
        ("devstack@c-api.service.log.txt", "c-api"),
        ("screen-neutron-l3.txt", "neutron-l3"),
        ("nova-api.log", "nova-api"),
        ("nova-api.log.2.gz", "nova-api"),
        ("screen-c-api.2013-09-27-181531.log", "c-api"),
        ("logs/keystone.json", "keystone"),
        ("weird", "weird"),
    ],
)
def test_service_name_from_file_name(name: str, service: str) -> None:
    assert derive_service_name(name) == service


LINE_SHAPES = st.sampled_from(
    [
        "2024-01-01 00:00:00.000 1 INFO a [-] m",
        "2024-01-01 00:00:00.000 1 ERROR a Traceback (most recent call last):",
        "2024-01-01 00:00:00.000 1 ERROR a   File x",
        f"2024-01-01 00:00:00.001 INFO b [{LID} u p] m",
        "2024-13-01 00:00:00.000 1 INFO a [-] m",
        "Mar 28 12:20:42.377230 h svc[1]: INFO a [-] m",
        "Mar 28 12:20:42.377230 h svc[1]: plain",
        "-- Logs begin at Tue 2017-03-28 12:02:58 UTC. --",
        "   indented",
        "",
        "{not json",
        json_line(),
        "\x1b[01;31mcolour\x1b[00m",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(LINE_SHAPES, st.text(max_size=40)), max_size=40))
def test_every_line_is_accounted_for(lines: list[str]) -> None:
    """Whatever the input, each line is in exactly one record body or counted as skipped."""
    parser = LogParser("f.log", fallback_year=2024)
    flat = [part for line in lines for part in (line.splitlines() or [""])]
    records = list(parser.parse(flat))
    s = parser.stats
    assert s.lines_read == len(flat)
    assert sum(r.body.count("\n") + 1 for r in records) == s.lines_in_records
    assert s.lines_in_records + s.skipped == s.lines_read
    assert s.records == len(records)
