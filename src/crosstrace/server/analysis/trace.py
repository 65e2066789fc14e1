"""Root cause of one trace: pure rules over its spans (and its log lines).

The rules, in the order they apply:

- **Verdict.** The request failed when a root span failed (error status or an
  HTTP status of 400 or more); it is slow when it did not fail and its duration
  reaches the slow threshold; else it is ok, and an ok request has no candidate
  even when a handled error (a cache miss) sits inside it.
- **Recovered errors.** A failed span followed by a later sibling of the same
  service and operation that succeeded was retried: not a cause.
- **Deep chain.** A failed span with failed children only passed their error on:
  it is a consequence, and the search goes down into the children.
- **Sibling errors.** Among failed children, the one that failed first (the
  earliest failure in its subtree) leads; a failed sibling that only started
  after that failure (a rollback, a clean-up) is a consequence. Siblings that
  were already running when the first one failed are independent causes: each
  is a candidate, earliest first.
- **Masked timeout.** A failed span without failed children that gave up
  waiting (a timeout) while something beneath it was still running is not the
  cause: the search goes down through the callee still running at that moment to
  the deepest span that accounts for the time, whatever its status.
- **Never replied.** A timeout with nothing running beneath it blames the last
  element that can be seen below it (its publish, else the call itself).
- **Statements.** A database span names a statement, not an operation: the
  cause is the operation that ran it (its parent in the same service), with the
  statement as evidence.
- **Slow requests** (see :mod:`.slow`): the spans whose own time makes up most of
  the critical path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from crosstrace.server.analysis.result import (
    Analysis,
    Candidate,
    Consequence,
    Evidence,
    LogLine,
    Reason,
    SpanRef,
    Verdict,
)
from crosstrace.server.analysis.slow import slow_candidates
from crosstrace.server.analysis.tree import (
    KIND_PRODUCER,
    TraceIndex,
    exception_info,
    http_status,
    kind_name,
)
from crosstrace.server.model import LogRecord, SpanRecord

__all__ = [
    "DEFAULT_SLOW_THRESHOLD_NS",
    "MAX_CANDIDATES",
    "analyse_trace",
    "log_line",
    "slow_threshold",
]

#: A request without history is slow from this duration on.
DEFAULT_SLOW_THRESHOLD_NS: Final = 1_000_000_000
#: With history: slow from this many times the usual duration...
SLOW_FACTOR: Final = 3
#: ...and at least this much above it.
SLOW_MIN_EXCESS_NS: Final = 250_000_000
MAX_CANDIDATES: Final = 10
#: Longest chain, consequence and recovered lists in an answer (a pathological
#: trace 100,000 spans deep still gets a readable one).
MAX_LISTED: Final = 1000
#: Log lines kept as evidence per candidate.
MAX_EVIDENCE_LOGS: Final = 10
#: A log line this close to a candidate's span (same service) is near it.
LOG_NEAR_NS: Final = 1_000_000_000

UsualDurations = Mapping[tuple[str, str], int]


def slow_threshold(usual_root_ns: int | None) -> int:
    """The duration from which a request is slow, given its usual duration."""
    if not usual_root_ns or usual_root_ns <= 0:
        return DEFAULT_SLOW_THRESHOLD_NS
    return max(usual_root_ns * SLOW_FACTOR, usual_root_ns + SLOW_MIN_EXCESS_NS)


def log_line(record: LogRecord) -> LogLine:
    """A stored log record as evidence."""
    name = record.attributes.get("log.file.name")
    line = record.attributes.get("log.file.line")
    source = f"{name}:{line}" if name and line is not None else (str(name) if name else None)
    return LogLine(
        time_ns=record.time_ns,
        service=record.service,
        severity=record.severity_text or str(record.severity_number),
        body=record.body,
        logger=record.logger,
        span_id=record.span_id,
        trace_id=record.trace_id,
        request_id=record.request_id,
        source=source,
    )


def analyse_trace(
    spans: Sequence[SpanRecord],
    logs: Sequence[LogRecord] = (),
    *,
    slow_threshold_ns: int | None = None,
    usual: UsualDurations | None = None,
) -> Analysis:
    """Analyse one trace (see the module docstring). *usual* maps (service,
    operation) to its usual duration (p50, ns) for the evidence; the slow
    threshold defaults to :func:`slow_threshold` of the root's usual duration."""
    idx = TraceIndex(spans)
    usual = usual or {}
    trace_id = idx.spans[0].trace_id if idx.spans else None
    if not idx.spans:
        return Analysis(Verdict.OK, notes=["the trace has no spans"])
    start = min(s.start_ns for s in idx.spans)
    end = max(s.end_ns for s in idx.spans)
    analysis = Analysis(
        Verdict.OK,
        trace_id=trace_id,
        start_ns=start,
        duration_ns=max(0, end - start),
        span_count=len(idx),
        notes=list(idx.notes),
    )
    failed_roots = [r for r in idx.roots if idx.failed[r]]
    if failed_roots:
        analysis.verdict = Verdict.ERROR
        _error_rules(idx, failed_roots, analysis)
    else:
        main = max(idx.roots, key=lambda r: (idx.spans[r].duration_ns, -r))
        root = idx.spans[main]
        threshold = slow_threshold_ns
        if threshold is None:
            threshold = slow_threshold(usual.get((root.service, root.name)))
        if root.duration_ns >= threshold:
            analysis.verdict = Verdict.SLOW
            for i, self_ns in slow_candidates(idx, main):
                cand = _candidate(idx, i, Reason.SLOW_SELF_TIME)
                cand.evidence.self_time_ns = self_ns
                analysis.candidates.append(cand)
            if analysis.candidates:
                top = analysis.candidates[0]
                analysis.chain = _chain_of(idx, top)
        latest = max(range(len(idx)), key=lambda i: (idx.spans[i].start_ns, i))
        analysis.last_traced_element = _ref(idx, latest)
    for cand in analysis.candidates:
        cand.evidence.chain = _shorten(_chain_of(idx, cand))
        cand.evidence.usual_duration_ns = usual.get((cand.service, cand.name))
        cand.evidence.logs = _near_logs(idx, cand, logs)
    if len(analysis.chain) > MAX_LISTED:
        analysis.notes.append(
            f"the chain of {len(analysis.chain)} spans is shown by its first and last "
            f"{MAX_LISTED // 2}"
        )
        analysis.chain = _shorten(analysis.chain)
    if len(analysis.consequences) > MAX_LISTED:
        analysis.notes.append(
            f"{len(analysis.consequences) - MAX_LISTED} more consequences are not listed"
        )
        del analysis.consequences[MAX_LISTED:]
    if len(analysis.recovered) > MAX_LISTED:
        del analysis.recovered[MAX_LISTED:]
    return analysis


def _shorten(chain: list[bytes]) -> list[bytes]:
    """A chain of at most :data:`MAX_LISTED` ids: its first and last halves."""
    if len(chain) <= MAX_LISTED:
        return chain
    half = MAX_LISTED // 2
    return chain[:half] + chain[-half:]


# ----------------------------------------------------------------- error rules


def _error_rules(idx: TraceIndex, failed_roots: list[int], analysis: Analysis) -> None:
    spans = idx.spans
    n = len(idx)
    # Which failed children count: those not recovered by a later retry.
    live: list[list[int]] = [[] for _ in range(n)]
    recovered: list[int] = []
    for i in idx.order:
        kids = _effective_children(idx, i)
        if not kids:
            continue
        ok_after: dict[tuple[str, str], int] = {}  # latest start of a success
        for c in kids:
            if not idx.failed[c]:
                key = (spans[c].service, spans[c].name)
                ok_after[key] = max(ok_after.get(key, -1), spans[c].start_ns)
        for c in kids:
            if not idx.failed[c]:
                continue
            key = (spans[c].service, spans[c].name)
            if ok_after.get(key, -1) >= spans[c].end_ns:
                recovered.append(c)
            else:
                live[i].append(c)
    # When each failed span's failure happened: the earliest failure beneath it.
    fail_at = [0] * n
    for i in reversed(idx.order):
        if not idx.failed[i]:
            continue
        if live[i]:
            fail_at[i] = min(fail_at[c] for c in live[i])
        else:
            info_time = exception_info(spans[i]).time_ns
            fail_at[i] = info_time if info_time is not None else spans[i].end_ns

    causes: list[tuple[int, Reason, int | None, int | None]] = []  # (span, reason, via, db)
    passed_on: list[int] = []
    after_failure: list[int] = []
    stack = sorted(failed_roots, key=lambda r: fail_at[r], reverse=True)
    while stack:
        i = stack.pop()
        kids = live[i]
        if kids:
            first = min(fail_at[c] for c in kids)
            independent = [c for c in kids if spans[c].start_ns <= first]
            after_failure.extend(c for c in kids if spans[c].start_ns > first)
            passed_on.append(i)
            stack.extend(sorted(independent, key=lambda c: fail_at[c], reverse=True))
            continue
        causes.append(_leaf_cause(idx, i))

    # Rank: earliest failure first; one candidate per element.
    causes.sort(key=lambda c: (fail_at[c[2]] if c[2] is not None else fail_at[c[0]], c[0]))
    seen: set[int] = set()
    cause_spans: list[int] = []
    for span_i, reason, via, db in causes:
        if span_i in seen or len(analysis.candidates) >= MAX_CANDIDATES:
            continue
        seen.add(span_i)
        cand = _candidate(idx, span_i, reason)
        if via is not None:
            cand.evidence.timed_out_span_id = spans[via].span_id
            cand.failed_at_ns = spans[via].end_ns
            if not cand.exception_type:
                # What the caller saw is what the operator searches for.
                info = exception_info(spans[via])
                cand.exception_type, cand.message = info.type, info.message
        else:
            cand.failed_at_ns = fail_at[span_i] or spans[span_i].end_ns
        if db is not None:
            cand.evidence.db_statement = _statement(spans[db])
            cand.evidence.db_span_id = spans[db].span_id
            if not cand.exception_type and idx.failed[db]:
                info = exception_info(spans[db])
                cand.exception_type, cand.message = info.type, info.message
        analysis.candidates.append(cand)
        cause_spans.append(span_i)
        # The last element seen of the top cause: the call never answered, the
        # statement still running or failing, else the cause itself.
        if analysis.last_traced_element is None:
            analysis.last_traced_element = _ref(idx, db if db is not None else span_i)
    if not analysis.candidates:
        return
    analysis.chain = _chain_of(idx, analysis.candidates[0])
    # Consequences, each linked to the cause it follows.
    owner: dict[int, int] = {}
    for c in reversed(cause_spans):  # the best-ranked cause wins
        for a in idx.path_to_root(c):
            owner[a] = c
    top_cause = cause_spans[0]
    listed = set(cause_spans)
    for i in passed_on:
        if i not in listed and idx.failed[i]:
            cause = owner.get(i, top_cause)
            analysis.consequences.append(
                Consequence(
                    spans[i].span_id,
                    spans[i].service,
                    spans[i].name,
                    "passed the error of a callee on",
                    spans[cause].span_id,
                )
            )
            listed.add(i)
    for i in after_failure:
        for j in [i, *_descendants(idx, i, limit=1000)]:
            if j in listed or not idx.failed[j]:
                continue
            listed.add(j)
            analysis.consequences.append(
                Consequence(
                    spans[j].span_id,
                    spans[j].service,
                    spans[j].name,
                    "failed after the cause had failed (rollback or clean-up)",
                    spans[top_cause].span_id,
                )
            )
    for i in causes_timed_out(causes):
        if i in listed:
            continue
        listed.add(i)
        analysis.consequences.append(
            Consequence(
                spans[i].span_id,
                spans[i].service,
                spans[i].name,
                "gave up waiting for a callee (timeout)",
                spans[owner.get(i, top_cause)].span_id,
            )
        )
    for i in recovered:
        analysis.recovered.append(_ref(idx, i))


def causes_timed_out(causes: list[tuple[int, Reason, int | None, int | None]]) -> list[int]:
    return [
        via
        for _, reason, via, _ in causes
        if via is not None and reason is not Reason.NEVER_REPLIED
    ]


def _leaf_cause(idx: TraceIndex, i: int) -> tuple[int, Reason, int | None, int | None]:
    """The cause below a failed span without failed children: (span, reason,
    timed-out span, folded database span)."""
    spans = idx.spans
    deadline = spans[i].end_ns
    outlived = idx.subtree_end[i] > deadline
    if idx.is_timeout(i) or outlived:
        if outlived:
            cur = i
            while True:
                running = [
                    c
                    for c in idx.children[cur]
                    if spans[c].start_ns <= deadline and idx.subtree_end[c] >= deadline
                ]
                if not running:
                    break
                cur = max(running, key=lambda c: (idx.subtree_end[c], -c))
            if cur != i:
                target, db = _fold_statement(idx, cur)
                return target, Reason.MASKED_TIMEOUT, i, db
        if idx.is_timeout(i):
            # Nothing beneath it outlived the call: the last element that can be seen.
            below = _descendants(idx, i, limit=10_000)
            sent = [j for j in below if spans[j].kind == KIND_PRODUCER] or below
            last = max(sent, key=lambda j: (spans[j].start_ns, j)) if sent else i
            return last, Reason.NEVER_REPLIED, i, None
    target, db = _fold_statement(idx, i)
    return target, Reason.DEEPEST_ERROR, None, db


def _effective_children(idx: TraceIndex, i: int) -> list[int]:
    """Children of *i*, looking through publish spans that succeeded: a message's
    consumer answers the call, not the publish, so it counts as the caller's child."""
    out: list[int] = []
    stack = list(reversed(idx.children[i]))
    while stack:
        c = stack.pop()
        if idx.spans[c].kind == KIND_PRODUCER and not idx.failed[c] and idx.children[c]:
            stack.extend(reversed(idx.children[c]))
        else:
            out.append(c)
    return out


def _fold_statement(idx: TraceIndex, i: int) -> tuple[int, int | None]:
    """A database span is reported at the operation that ran it."""
    if idx.is_db(i):
        p = idx.parent[i]
        if p >= 0 and idx.spans[p].service == idx.spans[i].service:
            return p, i
    return i, None


def _statement(span: SpanRecord) -> str:
    for key in ("db.query.text", "db.statement"):
        value = span.attributes.get(key)
        if isinstance(value, str) and value:
            return value[:2000]
    return span.name


def _descendants(idx: TraceIndex, i: int, limit: int) -> list[int]:
    out: list[int] = []
    stack = list(idx.children[i])
    while stack and len(out) < limit:
        j = stack.pop()
        out.append(j)
        stack.extend(idx.children[j])
    return out


# ----------------------------------------------------------------- building


def _ref(idx: TraceIndex, i: int) -> SpanRef:
    s = idx.spans[i]
    return SpanRef(s.span_id, s.service, s.name, kind_name(s.kind), s.start_ns, s.end_ns)


def _candidate(idx: TraceIndex, i: int, reason: Reason) -> Candidate:
    span = idx.spans[i]
    info = exception_info(span) if idx.failed[i] or span.events else None
    if info is not None and not idx.failed[i] and not info.type:
        info = None
    evidence = Evidence(
        kind=kind_name(span.kind),
        status_message=span.status_message,
        stacktrace=info.stacktrace if info else "",
        http_status=http_status(span),
        duration_ns=span.duration_ns,
    )
    return Candidate(
        span_id=span.span_id,
        service=span.service,
        name=span.name,
        reason=reason,
        exception_type=info.type if info else "",
        message=info.message if info else "",
        trace_id=span.trace_id,
        start_ns=span.start_ns,
        end_ns=span.end_ns,
        evidence=evidence,
    )


def _chain_of(idx: TraceIndex, cand: Candidate) -> list[bytes]:
    if cand.span_id is None or cand.span_id not in idx.by_id:
        return []
    return [idx.spans[i].span_id for i in idx.path_to_root(idx.by_id[cand.span_id])]


def _near_logs(idx: TraceIndex, cand: Candidate, logs: Sequence[LogRecord]) -> list[LogLine]:
    if not logs or cand.span_id is None:
        return []
    i = idx.by_id.get(cand.span_id)
    if i is None:
        return []
    own = {idx.spans[i].span_id}
    own.update(idx.spans[j].span_id for j in _descendants(idx, i, limit=1000))
    lo, hi = cand.start_ns - LOG_NEAR_NS, cand.end_ns + LOG_NEAR_NS
    picked = [
        r
        for r in logs
        if (r.span_id is not None and r.span_id in own)
        or (r.service == cand.service and lo <= r.time_ns <= hi)
    ]
    picked.sort(key=lambda r: (-r.severity_number, r.time_ns))
    chosen = sorted(picked[:MAX_EVIDENCE_LOGS], key=lambda r: r.time_ns)
    return [log_line(r) for r in chosen]
