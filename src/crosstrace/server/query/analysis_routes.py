"""Routes of the analysis and the error groups.

``GET /api/v1/traces/{trace_id}/analysis``, ``GET /api/v1/requests/{request_id}/analysis``,
``GET /api/v1/errors`` and ``GET /api/v1/errors/{group_id}``: unknown ids are
404, malformed ids and parameters 400, a store that fails 503.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.params import Depends

from crosstrace.server.analysis import ErrorGroup
from crosstrace.server.analysis.signature import GROUP_ID_RE
from crosstrace.server.query.analysis_models import (
    AnalysisOut,
    ErrorGroupDetailOut,
    ErrorGroupsOut,
    GroupTraceOut,
)
from crosstrace.server.query.caller import Reader
from crosstrace.server.query.diagnose import Diagnoser
from crosstrace.server.query.models import rfc3339

__all__ = ["analysis_router"]

_SLOW_HELP = "duration from which an ok request is slow (default: from its usual duration)"


def _group_out(g: ErrorGroup) -> dict[str, Any]:
    doc = g.to_json()
    doc["first_seen"] = rfc3339(g.first_seen_ns)
    doc["last_seen"] = rfc3339(g.last_seen_ns)
    return doc


def analysis_router(
    diagnoser: Diagnoser,
    dependencies: Sequence[Depends],
    read: Callable[[Callable[[], Any]], Any],
    *,
    bad: Callable[[str, str], HTTPException],
    time_param: Callable[[str, str | None], int | None],
    duration_param: Callable[[str, str | None], int | None],
    trace_id_param: Callable[[str, str], bytes],
    request_id_param: Callable[[str, str], str],
) -> APIRouter:
    """The router; the parameter parsers and ``read`` (store errors -> 503) are
    the API's own, so every route parses and fails the same way."""
    router = APIRouter(dependencies=list(dependencies))

    @router.get("/api/v1/traces/{trace_id}/analysis", response_model=AnalysisOut)
    def trace_analysis(
        trace_id: str,
        who: Reader,
        slow: Annotated[str | None, Query(description=_SLOW_HELP)] = None,
    ) -> Any:
        """Root cause of one trace: verdict, ranked candidates with evidence, the
        chain down to the cause, consequences and the last traced element."""
        tid = trace_id_param("trace_id", trace_id)
        threshold = duration_param("slow", slow)
        analysis = read(lambda: diagnoser.trace(tid, threshold, who.scope))
        if analysis is None:
            raise HTTPException(status_code=404, detail=f"trace {tid.hex()} not found")
        return analysis.to_json()

    @router.get("/api/v1/requests/{request_id}/analysis", response_model=AnalysisOut)
    def request_analysis(
        request_id: str,
        who: Reader,
        slow: Annotated[str | None, Query(description=_SLOW_HELP)] = None,
    ) -> Any:
        """The same over every trace and log line of a global or local request id
        (a request known only from imported logs too)."""
        rid = request_id_param("request_id", request_id)
        threshold = duration_param("slow", slow)
        analysis = read(lambda: diagnoser.request(rid, threshold, who.scope))
        if analysis is None:
            raise HTTPException(status_code=404, detail=f"request {rid} not found")
        return analysis.to_json()

    @router.get("/api/v1/errors", response_model=ErrorGroupsOut)
    def error_groups(
        who: Reader,
        start: Annotated[str | None, Query(description="RFC 3339 or relative (1h)")] = None,
        end: Annotated[str | None, Query(description="RFC 3339 or relative (15m)")] = None,
        service: Annotated[str | None, Query(max_length=1024)] = None,
        project: Annotated[str | None, Query(max_length=1024)] = None,
    ) -> Any:
        """Failures grouped by their root cause's signature over a window (default
        the last hour): count, first and last seen, projects, samples, series."""
        start_ns = time_param("start", start)
        end_ns = time_param("end", end)
        if start_ns is not None and end_ns is not None and start_ns > end_ns:
            raise bad("start", "start is after end")
        groups, lo, hi = read(
            lambda: diagnoser.groups(
                start_ns,
                end_ns,
                service=service or None,
                project_id=project or None,
                scope=who.scope,
            )
        )
        return {"start_ns": lo, "end_ns": hi, "groups": [_group_out(g) for g in groups]}

    @router.get("/api/v1/errors/{group_id}", response_model=ErrorGroupDetailOut)
    def error_group(
        group_id: str,
        who: Reader,
        start: Annotated[str | None, Query(description="RFC 3339 or relative (default 1d)")] = None,
        end: Annotated[str | None, Query(description="RFC 3339 or relative")] = None,
    ) -> Any:
        """One error group with its traces, newest first."""
        if not GROUP_ID_RE.fullmatch(group_id):
            raise bad("group_id", "a group id is 16 lowercase hex digits")
        start_ns = time_param("start", start)
        end_ns = time_param("end", end)
        if start_ns is not None and end_ns is not None and start_ns > end_ns:
            raise bad("start", "start is after end")
        detail = read(lambda: diagnoser.group(group_id, start_ns, end_ns, scope=who.scope))
        if detail is None:
            raise HTTPException(status_code=404, detail=f"error group {group_id} not found")
        doc = _group_out(detail.group)
        doc["start_ns"] = detail.start_ns
        doc["end_ns"] = detail.end_ns
        doc["traces"] = [
            GroupTraceOut(
                trace_id=t.trace_id.hex(),
                start_ns=t.start_ns,
                start=rfc3339(t.start_ns),
                project_id=t.project_id,
                domain_id=t.domain_id,
            )
            for t in detail.traces
        ]
        return doc

    return router
