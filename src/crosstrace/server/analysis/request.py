"""Root cause of one request: every trace and every log line of a global or
local request id, including requests known only from imported log files.

With traces, each trace is analysed (:mod:`.trace`) and the request takes the
worst verdict; the trace whose cause failed first leads. Without any trace the
log lines decide:

1. **Order.** Lines are placed in a call tree from caller -> callee evidence:
   a line with global id G and local id L says L was called on behalf of G, and a
   ``... used request id req-X`` line logged under L says L called X; an RPC
   message id logged by its sender and by the server that took it (a hop the log
   follower finds) places services that share one request id. A line's depth is
   the deeper of its local id's and its service's; lines are ordered by time.
2. **Collapse.** An error line and the lines of other services that repeat its
   message (at any level: a callee often logs the first copy as a warning or as
   information) are one chain; the chain starts at its deepest line, the
   earliest of those.
3. **Origin.** Of the chains, the one starting deepest leads, then the earliest:
   the earliest error in the deepest callee, not the first ERROR line in a file.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from typing import Final

from crosstrace.server.analysis.result import Analysis, Candidate, Evidence, Reason, Verdict
from crosstrace.server.analysis.signature import normalise_message
from crosstrace.server.analysis.trace import UsualDurations, analyse_trace, log_line
from crosstrace.server.model import RES_HOST_NAME, LogRecord, SpanRecord

__all__ = ["analyse_request", "is_error_line", "log_depths", "logs_origin", "site_depths"]

#: Lowest OTLP severity number of ERROR.
SEVERITY_ERROR: Final = 17
SEVERITY_WARNING: Final = 13
_USED_ID_RE: Final = re.compile(
    r"used request id (req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)
_INSTANCE_PREFIX_RE: Final = re.compile(r"^\[instance: [^\]]*\]\s*")
_TRACEBACK: Final = "Traceback (most recent call last)"
_EXC_LINE_RE: Final = re.compile(r"^([A-Za-z_][\w.]*):\s?(.*)$")
#: Shortest normalised message that may match inside a longer one.
MIN_CONTAINED: Final = 16


def is_error_line(record: LogRecord) -> bool:
    """An ERROR (or worse) line, or any line carrying an exception or traceback."""
    return (
        record.severity_number >= SEVERITY_ERROR
        or "exception.type" in record.attributes
        or _TRACEBACK in record.body
    )


def log_depths(logs: Sequence[LogRecord]) -> dict[str, int]:
    """Local request id -> depth in the call tree the lines reveal (0 = entry)."""
    edges: dict[str, set[str]] = {}
    callees: set[str] = set()
    nodes: set[str] = set()
    for r in logs:
        local, glob = r.request_id, r.global_request_id
        if local:
            nodes.add(local)
        if glob:
            nodes.add(glob)
        if glob and local and glob != local:
            edges.setdefault(glob, set()).add(local)
            callees.add(local)
        if local:
            for callee in _USED_ID_RE.findall(r.body):
                if callee != local:
                    edges.setdefault(local, set()).add(callee)
                    callees.add(callee)
                    nodes.add(callee)
    depth: dict[str, int] = {}
    queue = deque(sorted(n for n in nodes if n not in callees))
    for n in queue:
        depth[n] = 0
    while queue:
        n = queue.popleft()
        for m in sorted(edges.get(n, ())):
            if m not in depth:
                depth[m] = depth[n] + 1
                queue.append(m)
    for n in sorted(nodes):  # only in cycles: no entry reaches them
        depth.setdefault(n, 0)
    return depth


def _core(record: LogRecord) -> str:
    first = record.body.split("\n", 1)[0]
    return normalise_message(_INSTANCE_PREFIX_RE.sub("", first)).rstrip(" .")


def _same_message(a: str, b: str) -> bool:
    if a == b:
        return bool(a)
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= MIN_CONTAINED and short in long_


def _exception_of(record: LogRecord) -> tuple[str, str]:
    type_ = record.attributes.get("exception.type")
    message = record.attributes.get("exception.message")
    if isinstance(type_, str) and type_:
        return type_, message if isinstance(message, str) else ""
    if _TRACEBACK in record.body:
        tail = record.body.split(_TRACEBACK, 1)[1]
        for line in reversed(tail.rstrip().split("\n")):
            if line[:1].isspace():
                continue
            m = _EXC_LINE_RE.match(line)
            if m:
                return m.group(1), m.group(2)
    return "", ""


def site_depths(
    logs: Sequence[LogRecord], hops: Sequence[tuple[int, int]]
) -> dict[tuple[str, str | None], int]:
    """(service, host) -> depth in the call tree that *hops* show: (caller line,
    callee line) index pairs into *logs*, e.g. an RPC message id a caller logged
    when it sent the call and its server logged when it took it. A site no hop
    reaches is an entry (0)."""
    if not logs:
        return {}
    edges: dict[tuple[str, str | None], set[tuple[str, str | None]]] = {}
    for caller, callee in hops:
        if 0 <= caller < len(logs) and 0 <= callee < len(logs):
            a, b = _site(logs[caller]), _site(logs[callee])
            if a != b:
                edges.setdefault(a, set()).add(b)
    callees = {b for targets in edges.values() for b in targets}
    depth = {site: 0 for site in sorted(edges, key=str) if site not in callees}
    queue = deque(depth)
    while queue:
        site = queue.popleft()
        for nxt in sorted(edges.get(site, ()), key=str):
            if nxt not in depth:
                depth[nxt] = depth[site] + 1
                queue.append(nxt)
    return depth


def _site(record: LogRecord) -> tuple[str, str | None]:
    host = record.resource.get(RES_HOST_NAME)
    return record.service, host if isinstance(host, str) and host else None


def logs_origin(logs: Sequence[LogRecord], hops: Sequence[tuple[int, int]] = ()) -> list[Candidate]:
    """Root-cause candidates from log lines alone, best first (see the module
    docstring); empty when no line is an error. *hops* (caller line, callee line
    index pairs into *logs*, see :func:`site_depths`) add the calls the lines
    show to the call tree their ids reveal."""
    sites = site_depths(logs, hops) if hops else {}
    lines = sorted(logs, key=lambda r: (r.time_ns, r.service))
    errors = [i for i, r in enumerate(lines) if is_error_line(r)]
    if not errors:
        return []
    depths = log_depths(lines)

    def depth(i: int) -> int:
        rid = lines[i].request_id
        by_id = depths.get(rid, 0) if rid else 0
        return max(by_id, sites.get(_site(lines[i]), 0))

    # Copies at any level: a callee often logs the first one at WARNING or INFO.
    cores = {i: _core(lines[i]) for i in range(len(lines))}
    chains: list[list[int]] = []
    member: set[int] = set()
    for e in errors:
        if e in member:
            continue
        chain = [e]
        member.add(e)
        # Through warnings and errors the chain grows transitively ("X failed: Y"
        # repeats "Y", which a callee logged as "Z: Y").
        todo = [e]
        while todo:
            m = todo.pop()
            for j, core in cores.items():
                if j not in member and _same_message(cores[m], core):
                    chain.append(j)
                    member.add(j)
                    if lines[j].severity_number >= SEVERITY_WARNING:
                        todo.append(j)
        chains.append(chain)
    origins = []
    for chain in chains:
        start = max(chain, key=lambda i: (depth(i), -lines[i].time_ns, -i))
        origins.append((start, chain))
    origins.sort(key=lambda oc: (-depth(oc[0]), lines[oc[0]].time_ns, oc[0]))
    out = []
    for start, chain in origins:
        record = lines[start]
        type_, message = _exception_of(record)
        if not message:
            message = record.body.split("\n", 1)[0]
        origin = log_line(record)
        origin.copies = sorted({lines[i].service for i in chain if i != start} - {record.service})
        ordered = sorted(chain, key=lambda i: (-depth(i), lines[i].time_ns))
        evidence = Evidence(
            kind="log",
            status_message=record.body.split("\n", 1)[0],
            stacktrace=record.body if _TRACEBACK in record.body else "",
            logs=[log_line(lines[i]) for i in ordered],
        )
        out.append(
            Candidate(
                span_id=record.span_id,
                service=record.service,
                name=record.logger or record.service,
                reason=Reason.LOG_ORIGIN,
                exception_type=type_,
                message=message,
                trace_id=record.trace_id,
                start_ns=record.time_ns,
                end_ns=record.time_ns,
                failed_at_ns=record.time_ns,
                evidence=evidence,
                log=origin,
            )
        )
    return out


def analyse_request(
    request_id: str,
    traces: Sequence[Sequence[SpanRecord]],
    logs: Sequence[LogRecord] = (),
    *,
    hops: Sequence[tuple[int, int]] = (),
    slow_threshold_ns: int | None = None,
    usual: UsualDurations | None = None,
) -> Analysis:
    """Analyse every trace and log line of one request (see the module docstring;
    *hops* as for :func:`logs_origin`)."""
    analyses = [
        analyse_trace(spans, logs, slow_threshold_ns=slow_threshold_ns, usual=usual)
        for spans in traces
        if spans
    ]
    trace_ids = [a.trace_id for a in analyses if a.trace_id is not None]
    failed = [a for a in analyses if a.verdict is Verdict.ERROR]
    slow = [a for a in analyses if a.verdict is Verdict.SLOW]
    if failed:
        failed.sort(key=lambda a: a.root_cause.failed_at_ns if a.root_cause else a.start_ns)
        lead = failed[0]
        for other in failed[1:]:
            lead.candidates.extend(other.candidates)
            lead.consequences.extend(other.consequences)
            lead.recovered.extend(other.recovered)
    elif slow:
        lead = max(slow, key=lambda a: a.duration_ns)
    elif analyses:
        lead = min(analyses, key=lambda a: a.start_ns)
    else:
        lead = Analysis(Verdict.OK)
        if logs:
            lead.start_ns = min(r.time_ns for r in logs)
            lead.duration_ns = max(r.time_ns for r in logs) - lead.start_ns
        from_logs = logs_origin(logs, hops)
        if from_logs:
            lead.verdict = Verdict.ERROR
            lead.candidates = from_logs
        if not logs:
            lead.notes.append("nothing is stored for this request")
    lead.request_id = request_id
    lead.trace_ids = trace_ids
    for a in analyses:
        if a is not lead:
            lead.notes.extend(n for n in a.notes if n not in lead.notes)
    return lead
