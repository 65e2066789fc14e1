"""Per-request analysis: traces and log lines of one request id, logs-only too."""

from __future__ import annotations

from analysis_builders import SERVER, Trace, log

from crosstrace.server.analysis import Reason, Verdict, analyse_request, is_error_line

G = "req-11111111-1111-4111-8111-111111111111"
API = "req-22222222-2222-4222-8222-222222222222"
COMPUTE = "req-33333333-3333-4333-8333-333333333333"
VOLUME = "req-44444444-4444-4444-8444-444444444444"


def _duplicate_volume_logs() -> list:
    msg = "[instance: 0cae9447-f607-4d06-84a9-bb5bb9f551f3] Failed to create volume: duplicate name"
    return [
        log("compute-api", 0, "boot requested", request_id=API, global_request_id=G),
        log(
            "compute",
            10,
            f"POST http://vol/v3/volumes used request id {VOLUME}",
            level="DEBUG",
            request_id=COMPUTE,
            global_request_id=G,
        ),
        log(
            "volume",
            8,
            "Failed to create volume: duplicate name (IntegrityError)",
            level="WARNING",
            request_id=VOLUME,
            global_request_id=G,
        ),
        log("compute", 9, msg, level="ERROR", request_id=COMPUTE, global_request_id=G),
        log("compute-api", 12, msg, level="ERROR", request_id=API, global_request_id=G),
    ]


def test_logs_only_request_names_the_deepest_copy_of_a_repeated_error() -> None:
    a = analyse_request(G, [], _duplicate_volume_logs())
    assert a.verdict is Verdict.ERROR
    top = a.root_cause
    assert top is not None
    assert top.span_id is None
    assert top.reason is Reason.LOG_ORIGIN
    assert top.service == "volume"
    assert top.log is not None
    assert top.log.severity == "WARNING"
    assert top.log.copies == ["compute", "compute-api"]
    assert len(a.candidates) == 1  # the three copies are one chain
    assert [line.service for line in top.evidence.logs] == ["volume", "compute", "compute-api"]


def test_logs_only_origin_is_not_the_first_error_line_in_time() -> None:
    logs = [
        log("api", 0, "Timed out waiting for compute", level="ERROR", request_id=G),
        log(
            "compute",
            5,
            f"GET http://x used request id {VOLUME}",
            request_id=COMPUTE,
            global_request_id=G,
        ),
        log(
            "volume",
            7,
            "Disk /dev/sdb1 failed: I/O error",
            level="ERROR",
            request_id=VOLUME,
            global_request_id=G,
        ),
    ]
    a = analyse_request(G, [], logs)
    assert a.root_cause is not None
    assert a.root_cause.service == "volume"
    assert [c.service for c in a.candidates] == ["volume", "api"]


def test_traceback_line_counts_as_an_error_and_gives_the_exception_type() -> None:
    body = (
        'Delete completed.\nTraceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "error: cannot switch to a different thread"
    )
    record = log(
        "c-vol", 0, body, request_id=API, attrs={"log.file.name": "c-vol.log", "log.file.line": 1}
    )
    assert is_error_line(record)
    a = analyse_request(API, [], [record])
    assert a.verdict is Verdict.ERROR
    assert a.root_cause is not None
    assert a.root_cause.exception_type == "error"
    assert a.root_cause.log is not None
    assert a.root_cause.log.source == "c-vol.log:1"


def test_logs_without_errors_give_ok_and_nothing_stored_gives_a_note() -> None:
    assert analyse_request(G, [], [log("api", 0, "fine", request_id=G)]).verdict is Verdict.OK
    empty = analyse_request(G, [], [])
    assert empty.verdict is Verdict.OK
    assert empty.notes


def test_with_traces_the_trace_that_failed_first_leads() -> None:
    t1 = Trace()
    t1.add("api", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t1.add("late", "api", 50, 60, service="b", error="ValueError: late")
    t2 = Trace()
    t2.add("api2", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t2.add("early", "api2", 5, 10, service="c", error="KeyError: early")
    for s in t2.list():
        s.trace_id = bytes(16 * [7])
    a = analyse_request(G, [t1.list(), t2.list()], [])
    assert a.verdict is Verdict.ERROR
    assert [c.name for c in a.candidates] == ["early", "late"]
    assert len(a.trace_ids) == 2
    assert a.to_json()["request_id"] == G


def test_hops_place_services_that_share_one_request_id() -> None:
    """Old OpenStack logs one request id in every service: the RPC hop (the message
    id its sender and its server log) makes the conductor the deeper callee, so its
    error is the origin even though the API logged its own error first."""
    api = log("nova-api", 0, "CALL msg_id: 0123456789abcdef0123456789abcdef", request_id=API)
    received = log("nova-conductor", 1, "received message msg_id: 0123456789abcdef0123456789abcdef")
    api_error = log("nova-api", 3, "Timed out waiting for conductor", level="ERROR", request_id=API)
    conductor_error = log(
        "nova-conductor", 5, "Build failed: disk full on the volume", level="ERROR", request_id=API
    )
    lines = [api, received, api_error, conductor_error]
    without = analyse_request(API, [], lines)
    assert without.root_cause is not None
    assert without.root_cause.service == "nova-api"  # ids alone: one depth, earliest
    with_hops = analyse_request(API, [], lines, hops=[(0, 1)])
    assert with_hops.root_cause is not None
    assert with_hops.root_cause.service == "nova-conductor"


def test_a_chain_grows_through_repeats_to_an_info_line_of_the_origin() -> None:
    """ "X: Y" at ERROR repeats "Y" at ERROR, which the callee logged as "Z: Y" at
    INFO: one chain, and its origin is the callee's line."""
    logs = [
        log(
            "network",
            1,
            "Port quota exceeded for project p1: Quota exceeded for resources: port",
            request_id=VOLUME,
            global_request_id=G,
        ),
        log(
            "compute",
            2,
            "Failed to allocate network: Quota exceeded for resources: port",
            level="ERROR",
            request_id=COMPUTE,
            global_request_id=G,
        ),
        log(
            "compute-api",
            3,
            "Quota exceeded for resources: port",
            level="ERROR",
            request_id=API,
            global_request_id=G,
        ),
    ]
    a = analyse_request(G, [], logs)
    assert a.root_cause is not None
    assert a.root_cause.service == "network"
    assert len(a.candidates) == 1
