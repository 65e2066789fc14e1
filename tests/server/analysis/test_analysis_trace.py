"""The per-trace root-cause rules, each on a hand-built trace."""

from __future__ import annotations

from analysis_builders import CLIENT, CONSUMER, MS, PRODUCER, SERVER, TRACE_ID, Trace, sid

from crosstrace.server.analysis import Reason, Verdict, analyse_trace
from crosstrace.server.model import SpanRecord


def test_deep_chain_blames_the_deepest_error_and_links_callers_to_it() -> None:
    t = Trace()
    t.add("api", None, 0, 100, service="api", kind=SERVER, http=500, error="HTTP 500")
    t.add("call", "api", 5, 90, service="api", kind=CLIENT, http=500, error="HTTP 500")
    t.add("worker", "call", 10, 85, service="worker", kind=SERVER, error="Failed: disk full")
    t.add("write", "worker", 20, 30, service="worker", error="OSError: disk full")
    a = analyse_trace(t.list())
    assert a.verdict is Verdict.ERROR
    assert a.root_cause is not None
    assert (a.root_cause.service, a.root_cause.name) == ("worker", "write")
    assert a.root_cause.reason is Reason.DEEPEST_ERROR
    assert a.root_cause.exception_type == "OSError"
    assert a.chain == [t.id("api"), t.id("call"), t.id("worker"), t.id("write")]
    linked = {c.span_id: c.cause_span_id for c in a.consequences}
    assert linked == {n: t.id("write") for n in (t.id("api"), t.id("call"), t.id("worker"))}
    assert len(a.candidates) == 1


def test_http_4xx_without_error_status_still_fails_the_request() -> None:
    t = Trace()
    t.add("api", None, 0, 10, service="api", kind=SERVER, http=400)
    t.add("get", "api", 1, 9, service="api", kind=CLIENT, http=404)
    t.add("image", "get", 2, 8, service="image", kind=SERVER, http=404)
    t.add("lookup", "image", 3, 4, service="image", error="ImageNotFound: Image x not found")
    a = analyse_trace(t.list())
    assert a.verdict is Verdict.ERROR
    assert a.root_cause is not None
    assert a.root_cause.name == "lookup"


def test_masked_timeout_blames_the_callee_still_running_not_the_caller() -> None:
    t = Trace()
    t.add("api", None, 0, 1100, service="api", kind=SERVER, http=504, error="HTTP 504")
    t.add("call", "api", 10, 1010, service="api", kind=CLIENT, error="ReadTimeout: read timed out")
    t.add("vol", "call", 20, 2500, service="volume", kind=SERVER, http=202)
    t.add("early", "vol", 21, 30, service="volume")
    t.add("query", "vol", 30, 2400, service="volume")
    t.add(
        "sql",
        "query",
        31,
        2390,
        service="volume",
        kind=CLIENT,
        attrs={"db.system": "sqlite", "db.query.text": "SELECT sleep(3)"},
    )
    t.add("insert", "vol", 2400, 2450, service="volume")
    a = analyse_trace(t.list())
    top = a.root_cause
    assert top is not None
    assert (top.service, top.name, top.reason) == ("volume", "query", Reason.MASKED_TIMEOUT)
    assert top.evidence.db_statement == "SELECT sleep(3)"
    assert top.evidence.timed_out_span_id == t.id("call")
    assert top.exception_type == "ReadTimeout"  # what the caller saw
    assert a.last_traced_element is not None
    assert a.last_traced_element.span_id == t.id("sql")  # still running when the caller gave up
    assert t.id("call") in {c.span_id for c in a.consequences}


def test_masked_timeout_descends_through_the_publish_of_an_rpc_call() -> None:
    t = Trace()
    t.add("api", None, 0, 3100, service="api", kind=SERVER, http=504, error="HTTP 504")
    t.add("call", "api", 10, 3010, service="api", kind=CLIENT, error="MessagingTimeout: no reply")
    t.add("publish", "call", 11, 12, service="api", kind=PRODUCER)
    t.add("consume", "publish", 15, 3300, service="compute", kind=CONSUMER)
    t.add("build", "consume", 16, 3299, service="compute")
    a = analyse_trace(t.list())
    assert a.root_cause is not None
    assert (a.root_cause.service, a.root_cause.name) == ("compute", "build")
    assert a.root_cause.reason is Reason.MASKED_TIMEOUT


def test_never_replied_blames_the_last_traced_element() -> None:
    t = Trace()
    t.add("api", None, 0, 3100, service="api", kind=SERVER, http=504, error="HTTP 504")
    t.add("call", "api", 10, 3010, service="api", kind=CLIENT, error="MessagingTimeout: no reply")
    t.add("publish", "call", 11, 12, service="api", kind=PRODUCER)
    a = analyse_trace(t.list())
    assert a.root_cause is not None
    assert a.root_cause.reason is Reason.NEVER_REPLIED
    assert a.root_cause.span_id == t.id("publish")
    assert a.last_traced_element is not None
    assert a.last_traced_element.span_id == t.id("publish")


def test_never_replied_without_a_publish_blames_the_call_itself() -> None:
    t = Trace()
    t.add("api", None, 0, 3100, service="api", kind=SERVER, error="HTTP 504")
    t.add("call", "api", 10, 3010, service="api", kind=CLIENT, error="TimeoutError: timed out")
    a = analyse_trace(t.list())
    assert a.root_cause is not None
    assert a.root_cause.span_id == t.id("call")
    assert a.root_cause.reason is Reason.NEVER_REPLIED


def test_sibling_that_failed_first_is_the_cause_and_a_later_rollback_a_consequence() -> None:
    t = Trace()
    t.add("api", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t.add("create", "api", 10, 40, service="db", error="IntegrityError: duplicate")
    t.add("rollback", "api", 45, 60, service="db", error="OperationalError: rollback failed")
    a = analyse_trace(t.list())
    assert a.root_cause is not None
    assert a.root_cause.name == "create"
    assert [c.name for c in a.candidates] == ["create"]
    rollback = next(c for c in a.consequences if c.span_id == t.id("rollback"))
    assert rollback.cause_span_id == t.id("create")


def test_concurrent_branches_that_both_fail_are_independent_causes_earliest_first() -> None:
    t = Trace()
    t.add("api", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t.add("slow_branch", "api", 5, 80, service="net", error="ConnectionError: refused late")
    t.add("fast_branch", "api", 6, 20, service="vol", error="ValueError: bad size")
    a = analyse_trace(t.list())
    assert [c.name for c in a.candidates] == ["fast_branch", "slow_branch"]


def test_failure_time_comes_from_the_deepest_failure_not_the_branch_end() -> None:
    t = Trace()
    t.add("api", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t.add("a", "api", 1, 90, service="a", error="Failed: a")
    t.add("a_leaf", "a", 2, 5, service="a", error="KeyError: k")
    t.add("b", "api", 3, 30, service="b", error="Failed: b")
    a = analyse_trace(t.list())
    assert [c.name for c in a.candidates] == ["a_leaf", "b"]


def test_a_failed_attempt_retried_successfully_is_not_a_cause() -> None:
    t = Trace()
    t.add("api", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t.add("try1", "api", 1, 10, service="img", op="image.get", error="ConnectionError: reset")
    t.add("try2", "api", 11, 20, service="img", op="image.get")
    t.add("port", "api", 30, 40, service="net", error="OverQuota: quota exceeded")
    a = analyse_trace(t.list())
    assert [c.name for c in a.candidates] == ["port"]
    assert [r.span_id for r in a.recovered] == [t.id("try1")]


def test_a_successful_request_has_no_root_cause_even_with_a_handled_error() -> None:
    t = Trace()
    t.add("api", None, 0, 50, service="api", kind=SERVER, http=200)
    t.add("cache", "api", 1, 2, service="api", error="CacheMiss: key not cached")
    t.add("db", "api", 3, 20, service="api")
    a = analyse_trace(t.list())
    assert a.verdict is Verdict.OK
    assert a.root_cause is None
    assert a.candidates == []
    assert a.consequences == []


def test_slow_request_blames_the_span_with_most_own_time_on_the_critical_path() -> None:
    t = Trace()
    t.add("api", None, 0, 1000, service="api", kind=SERVER, http=200)
    t.add("image", "api", 0, 100, service="image")
    t.add("sched_call", "api", 100, 900, service="api", kind=CLIENT)
    t.add("publish", "sched_call", 101, 102, service="api", kind=PRODUCER)
    t.add("schedule", "publish", 110, 890, service="scheduler", kind=CONSUMER)
    t.add("select", "schedule", 111, 880, service="scheduler")
    t.add("parallel_fast", "api", 150, 200, service="net")
    t.add("build", "api", 900, 1000, service="compute")
    a = analyse_trace(t.list(), slow_threshold_ns=500 * MS)
    assert a.verdict is Verdict.SLOW
    assert a.root_cause is not None
    assert (a.root_cause.service, a.root_cause.name) == ("scheduler", "select")
    assert a.root_cause.reason is Reason.SLOW_SELF_TIME
    assert a.root_cause.evidence.self_time_ns == 769 * MS
    assert "parallel_fast" not in [c.name for c in a.candidates]


def test_fast_request_is_ok_and_usual_duration_sets_the_default_threshold() -> None:
    t = Trace()
    t.add("api", None, 0, 400, service="api", kind=SERVER, http=200)
    assert analyse_trace(t.list()).verdict is Verdict.OK  # under the 1 s default
    usual = {("api", "api"): 100 * MS}
    assert analyse_trace(t.list(), usual=usual).verdict is Verdict.SLOW  # 4x its usual


def test_evidence_carries_usual_duration_and_logs_near_the_span() -> None:
    from analysis_builders import log

    t = Trace()
    t.add("api", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t.add("db", "api", 10, 20, service="vol", error="IntegrityError: dup")
    logs = [log("vol", 21, "insert failed", level="WARNING"), log("net", 21, "unrelated")]
    a = analyse_trace(t.list(), logs, usual={("vol", "db"): 5 * MS})
    top = a.root_cause
    assert top is not None
    assert top.evidence.usual_duration_ns == 5 * MS
    assert top.evidence.ratio_to_usual == 2.0
    assert [line.body for line in top.evidence.logs] == ["insert failed"]


def test_json_form_has_the_contract_fields() -> None:
    t = Trace()
    t.add("api", None, 0, 100, service="api", kind=SERVER, error="HTTP 500")
    t.add("db", "api", 10, 20, service="vol", error="IntegrityError: dup 42")
    doc = analyse_trace(t.list()).to_json()
    assert doc["trace_id"] == TRACE_ID.hex()
    assert doc["verdict"] == "error"
    assert set(doc) >= {"root_cause", "candidates", "chain", "consequences", "last_traced_element"}
    root = doc["root_cause"]
    for key in ("span_id", "service", "name", "reason", "exception_type", "message", "evidence"):
        assert key in root
    assert root["span_id"] == t.id("db").hex()
    assert root["signature"]["message"] == "dup <n>"
    assert len(root["group_id"]) == 16


# ------------------------------------------------------------------ bad shapes


def _span(n: int, parent: int | None, start: int, end: int, error: bool = False) -> SpanRecord:
    return SpanRecord(
        trace_id=TRACE_ID,
        span_id=sid(n),
        parent_span_id=sid(parent) if parent is not None else None,
        name=f"op{n}",
        kind=1,
        start_ns=start,
        end_ns=end,
        service="svc",
        status_code=2 if error else 0,
    )


def test_parent_cycles_are_cut_and_still_give_an_answer() -> None:
    spans = [_span(1, 2, 0, 100, error=True), _span(2, 1, 10, 50, error=True)]
    a = analyse_trace(spans)
    assert a.verdict is Verdict.ERROR
    assert a.root_cause is not None
    assert a.root_cause.span_id == sid(2)
    assert any("cycle" in n for n in a.notes)


def test_missing_parents_and_duplicate_ids_are_tolerated() -> None:
    spans = [_span(1, 99, 0, 100, error=True), _span(1, 99, 0, 100), _span(2, 1, 5, 6, error=True)]
    a = analyse_trace(spans)
    assert a.root_cause is not None
    assert a.root_cause.span_id == sid(2)
    assert any("parent" in n for n in a.notes)
    assert any("duplicate" in n for n in a.notes)


def test_empty_trace_is_ok_with_a_note() -> None:
    a = analyse_trace([])
    assert a.verdict is Verdict.OK
    assert a.notes


def test_a_chain_100000_deep_and_a_fan_out_of_100000_are_analysed() -> None:
    n = 100_000
    deep = [_span(i, i - 1 if i > 1 else None, i, 2 * n - i, error=True) for i in range(1, n + 1)]
    a = analyse_trace(deep)
    assert a.root_cause is not None
    assert a.root_cause.span_id == sid(n)
    assert len(a.chain) == 1000  # its first and last 500
    assert a.chain[0] == sid(1)
    assert a.chain[-1] == sid(n)
    assert len(a.consequences) == 1000
    assert any("chain" in note for note in a.notes)
    wide = [_span(1, None, 0, 10 * n, error=True)]
    wide += [_span(i, 1, i, i + 1, error=(i == n)) for i in range(2, n + 1)]
    b = analyse_trace(wide)
    assert b.root_cause is not None
    assert b.root_cause.span_id == sid(n)
