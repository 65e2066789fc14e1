"""The query layer's use of the analysis: fetch what a verdict needs, analyse,
and keep the error index current.

:class:`Diagnoser` reads spans, logs and usual durations from the store, runs the
pure rules of :mod:`crosstrace.server.analysis`, and writes each failed trace's
root cause into the store's error index, so error groups are one indexed range
query. The index is kept current by a background thread in ``serve`` (a few
seconds behind ingest) and, for the window asked, by the query itself: any error
trace there not analysed yet (or changed since) is analysed first, at most
:data:`CATCH_UP_BUDGET` per query.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from crosstrace.server.analysis import (
    Analysis,
    CauseRow,
    ErrorGroup,
    Signature,
    Verdict,
    analyse_request,
    analyse_trace,
    group_causes,
    signature_of,
)
from crosstrace.server.logs.follow import HOP_RPC, HOP_USED_REQUEST_ID, follow_request
from crosstrace.server.model import ErrorCause, LogQuery, LogRecord, SpanRecord
from crosstrace.server.scope import Scope
from crosstrace.server.store.base import Store
from crosstrace.server.store.causes import SqlScope

__all__ = [
    "CATCH_UP_BUDGET",
    "DEFAULT_WINDOW_NS",
    "Diagnoser",
    "GroupDetail",
    "scoped_logs",
]

log = logging.getLogger(__name__)

DAY_NS: Final = 86_400 * 1_000_000_000
#: Error groups cover the last hour unless a start is given.
DEFAULT_WINDOW_NS: Final = 3_600 * 1_000_000_000
#: Most error traces one query analyses before it answers.
CATCH_UP_BUDGET: Final = 2_000
#: Traces sampled for an operation's usual duration, and how long it is cached.
USUAL_SAMPLE_TRACES: Final = 10
USUAL_TTL_NS: Final = 60 * 1_000_000_000
#: Most traces and log lines read for one request.
MAX_REQUEST_TRACES: Final = 20
MAX_REQUEST_LOGS: Final = 5_000  # per id the log follower searches
MAX_TRACE_LOGS: Final = 1_000
PRECISE_HOPS: Final = frozenset({HOP_RPC, HOP_USED_REQUEST_ID})
#: Traces listed with one error group.
MAX_GROUP_TRACES: Final = 100


@dataclass(slots=True)
class GroupDetail:
    """One error group and its traces (newest first)."""

    group: ErrorGroup
    traces: list[ErrorCause]
    start_ns: int
    end_ns: int


def scoped_logs(store: Store, scope: Scope) -> Callable[[LogQuery], list[LogRecord]]:
    """``store.search_logs`` reading only the lines in *scope* (for code that
    builds its own queries, like :func:`follow_request`)."""

    def search(query: LogQuery) -> list[LogRecord]:
        return store.search_logs(dataclasses.replace(query, scope=scope))

    return search


class Diagnoser:
    """See the module docstring. Thread-safe."""

    def __init__(self, store: Store, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.clock = clock
        self._usual: dict[tuple[str, str], tuple[int | None, int]] = {}
        self._usual_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------ usual times
    def usual_durations(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(service, operation) -> p50 duration over the last day, from a sample
        of its newest traces; pairs without history are left out."""
        now = self.clock()
        out: dict[tuple[str, str], int] = {}
        for pair in dict.fromkeys(pairs):
            with self._usual_lock:
                cached = self._usual.get(pair)
            if cached is None or cached[1] < now:
                durations = self.store.operation_durations(
                    pair[0], pair[1], now - DAY_NS, USUAL_SAMPLE_TRACES
                )
                value = int(statistics.median(durations)) if durations else None
                with self._usual_lock:
                    if len(self._usual) > 10_000:
                        self._usual.clear()
                    self._usual[pair] = (value, now + USUAL_TTL_NS)
                cached = (value, 0)
            if cached[0] is not None:
                out[pair] = cached[0]
        return out

    def _with_usual(self, analysis: Analysis) -> Analysis:
        pairs = [(c.service, c.name) for c in analysis.candidates[:5] if c.span_id is not None]
        usual = self.usual_durations(pairs)
        for cand in analysis.candidates:
            cand.evidence.usual_duration_ns = usual.get((cand.service, cand.name))
        return analysis

    def _root_usual(self, spans: list[SpanRecord]) -> dict[tuple[str, str], int]:
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if not s.parent_span_id or s.parent_span_id not in ids]
        if not roots:
            return {}
        root = max(roots, key=lambda s: s.duration_ns)
        return self.usual_durations([(root.service, root.name)])

    # --------------------------------------------------------------- analyses
    def trace(
        self, trace_id: bytes, slow_threshold_ns: int | None = None, scope: Scope = Scope.ALL
    ) -> Analysis | None:
        """The analysis of one stored trace; ``None`` when it is unknown or out of
        *scope*."""
        spans = self.store.get_trace(trace_id, scope)
        if not spans:
            return None
        logs = self.store.search_logs(
            LogQuery(trace_id=trace_id, limit=MAX_TRACE_LOGS, scope=scope)
        )
        usual = self._root_usual(spans) if slow_threshold_ns is None else {}
        analysis = analyse_trace(spans, logs, slow_threshold_ns=slow_threshold_ns, usual=usual)
        return self._with_usual(analysis)

    def request(
        self, request_id: str, slow_threshold_ns: int | None = None, scope: Scope = Scope.ALL
    ) -> Analysis | None:
        """The analysis of every trace and log line of a global or local request
        id (those in *scope*); ``None`` when nothing is stored for it."""
        summaries = self.store.traces_for_request(request_id, limit=MAX_REQUEST_TRACES, scope=scope)
        followed = follow_request(scoped_logs(self.store, scope), request_id, MAX_REQUEST_LOGS)
        # Asked by a callee's local id: the lines of the whole request carry its global id.
        globals_ = {r.global_request_id for r in followed.lines if r.global_request_id}
        for s in summaries:
            globals_.update(s.global_request_ids)
        globals_.discard(request_id)
        if len(globals_) == 1:
            (gid,) = globals_
            seen = {s.trace_id for s in summaries}
            for s in self.store.traces_for_request(gid, limit=MAX_REQUEST_TRACES, scope=scope):
                if s.trace_id not in seen:
                    summaries.append(s)
            followed = follow_request(scoped_logs(self.store, scope), gid, MAX_REQUEST_LOGS)
        logs = followed.lines
        # Only the hops a line names (an RPC message id, a callee's request id):
        # the others guess the caller from the line before.
        hops = [(h.caller, h.callee) for h in followed.hops if h.kind in PRECISE_HOPS]
        if not summaries and not logs:
            return None
        traces = [self.store.get_trace(s.trace_id, scope) for s in summaries]
        usual: dict[tuple[str, str], int] = {}
        if slow_threshold_ns is None:
            for spans in traces:
                usual.update(self._root_usual(spans))
        analysis = analyse_request(
            request_id, traces, logs, hops=hops, slow_threshold_ns=slow_threshold_ns, usual=usual
        )
        return self._with_usual(analysis)

    # ------------------------------------------------------------ error index
    def catch_up(
        self, start_ns: int | None, end_ns: int | None, budget: int = CATCH_UP_BUDGET
    ) -> int:
        """Analyse error traces of the window the index lacks; return how many."""
        done = 0
        with self._index_lock:
            while done < budget:
                pending = self.store.error_traces_to_analyse(
                    start_ns, end_ns, limit=min(200, budget - done)
                )
                if not pending:
                    break
                causes = []
                for p in pending:
                    spans = self.store.get_trace(p.trace_id)
                    analysis = analyse_trace(spans, slow_threshold_ns=1 << 62)
                    top = analysis.root_cause if analysis.verdict is Verdict.ERROR else None
                    sig = signature_of(top) if top is not None else None
                    causes.append(
                        ErrorCause(
                            trace_id=p.trace_id,
                            start_ns=p.start_ns,
                            project_id=p.project_id,
                            domain_id=p.domain_id,
                            span_count=p.span_count,
                            error_count=p.error_count,
                            group_id=sig.group_id if sig else None,
                            service=sig.service if sig else "",
                            operation=sig.operation if sig else "",
                            exception_type=sig.exception_type if sig else "",
                            message=sig.message if sig else "",
                        )
                    )
                self.store.put_error_causes(causes)
                done += len(pending)
        return done

    def groups(
        self,
        start_ns: int | None,
        end_ns: int | None,
        *,
        service: str | None = None,
        project_id: str | None = None,
        scope: SqlScope | None = None,
    ) -> tuple[list[ErrorGroup], int, int]:
        """Error groups of the window (default: the last hour up to now), most
        frequent first; returns (groups, start, end)."""
        end = end_ns if end_ns is not None else self.clock()
        start = start_ns if start_ns is not None else end - DEFAULT_WINDOW_NS
        if start > end:
            raise ValueError("start is after end")
        self.catch_up(start, end)
        rows = self.store.error_causes(
            start, end, service=service, project_id=project_id, scope=scope
        )
        return group_causes(_cause_rows(rows), start, end + 1), start, end

    def group(
        self,
        group_id: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        scope: SqlScope | None = None,
    ) -> GroupDetail | None:
        """One error group over the window (default: the last day) with its
        traces; ``None`` when no failure of it is stored there."""
        end = end_ns if end_ns is not None else self.clock()
        start = start_ns if start_ns is not None else end - DAY_NS
        if start > end:
            raise ValueError("start is after end")
        self.catch_up(start, end)
        rows = self.store.error_causes(start, end, group_id=group_id, scope=scope)
        if not rows:
            return None
        (group,) = group_causes(_cause_rows(rows), start, end + 1)
        return GroupDetail(group, rows[:MAX_GROUP_TRACES], start, end)

    # -------------------------------------------------------------- background
    def start(self, interval_s: float = 5.0) -> None:
        """Keep the index current in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="crosstrace-error-index", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self, interval_s: float) -> None:
        rounds = 0
        while not self._stop.wait(interval_s):
            try:
                now = self.clock()
                self.catch_up(now - DAY_NS, None)
                rounds += 1
                if rounds % 120 == 0:
                    self.store.prune_error_causes()
            except Exception as exc:
                log.warning("error index update failed: %s", exc)


def _cause_rows(rows: list[ErrorCause]) -> list[CauseRow]:
    return [
        CauseRow(
            r.trace_id,
            r.start_ns,
            Signature(r.service, r.operation, r.exception_type, r.message),
            r.project_id,
        )
        for r in rows
    ]
