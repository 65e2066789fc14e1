"""One request followed across services and hosts, from its log lines alone.

:func:`follow_request` gathers the lines of a request id (global or local) and the
lines its calls left elsewhere, in time order, and marks the caller -> callee hops
that the lines show:

``rpc``
    an oslo.messaging call or cast: the caller logs ``CALL msg_id: <id>`` (or
    ``CAST unique_id: <id>``), the server that takes it ``received message msg_id:
    <id>`` (those lines carry no request id: they are found by the id's text).
``used_request_id``
    an HTTP call through keystoneauth: the caller logs ``... used request id
    req-<callee's id>``; the callee's lines are those of that request id.
``request_id`` / ``global_request_id``
    a service or host that starts logging the same local (or global) request id:
    its caller is the service and host of the request's line just before it (the
    id travels in the RPC context or the ``X-OpenStack-Request-ID`` header, but no
    line says which call carried it).

A hop joins two *sites* (service, host). Every site after the first is reached by
at most one hop: the first of the kinds above that explains it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from crosstrace.ids import is_valid_request_id
from crosstrace.server.logs.fields import RES_HOST_NAME
from crosstrace.server.model import LogQuery, LogRecord

__all__ = [
    "HOP_GLOBAL_REQUEST_ID",
    "HOP_REQUEST_ID",
    "HOP_RPC",
    "HOP_USED_REQUEST_ID",
    "MAX_FOLLOWED",
    "FollowedRequest",
    "Hop",
    "follow_request",
    "host_of",
]

HOP_RPC: Final = "rpc"
HOP_USED_REQUEST_ID: Final = "used_request_id"
HOP_REQUEST_ID: Final = "request_id"
HOP_GLOBAL_REQUEST_ID: Final = "global_request_id"

#: Searches made beyond the request's own (callee request ids, RPC message ids).
MAX_FOLLOWED: Final = 32
#: Where the server's lines of an RPC message are looked for, around the send.
RPC_WINDOW_BEFORE_NS: Final = 60 * 10**9
RPC_WINDOW_AFTER_NS: Final = 3600 * 10**9

#: A caller's line naming the RPC message it sends (oslo.messaging's AMQP driver).
_RPC_SENT_RE = re.compile(r"\b(?:CALL msg_id|CAST unique_id): ([0-9a-f]{32})\b")
#: keystoneauth's line after an HTTP call: "... used request id req-<uuid>".
_USED_ID_RE = re.compile(r"\bused request id (req-[0-9a-f-]{36})\b")

Site = tuple[str, str | None]
#: ``search(query)``: the store's log search (with the caller's access scope).
Search = Callable[[LogQuery], list[LogRecord]]


@dataclass(frozen=True, slots=True)
class Hop:
    """A call from the line at index ``caller`` to the line at index ``callee``
    (indexes into :attr:`FollowedRequest.lines`), shown by ``via`` (an id)."""

    kind: str
    via: str
    caller: int
    callee: int


@dataclass(slots=True)
class FollowedRequest:
    request_id: str
    #: Oldest first; each record's host is :func:`host_of`.
    lines: list[LogRecord] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    #: Ids searched besides ``request_id``: callee request ids and RPC message ids.
    followed: list[str] = field(default_factory=list)
    #: True when ``limit`` cut the lines short.
    truncated: bool = False


def host_of(record: LogRecord) -> str | None:
    """The ``host.name`` of a record's resource, if it has one."""
    host = record.resource.get(RES_HOST_NAME)
    return host if isinstance(host, str) and host else None


def follow_request(
    search: Search,
    request_id: str,
    limit: int = 1000,
    allowed_projects: frozenset[str] | None = None,
) -> FollowedRequest:
    """The lines of *request_id* and of the calls it made that its lines name (see the
    module docstring), at most *limit* lines, oldest first; every search is narrowed
    to *allowed_projects* when given (as :class:`LogQuery` does)."""
    result = FollowedRequest(request_id)
    found: dict[object, LogRecord] = {}

    def add(records: list[LogRecord]) -> None:
        for r in records:
            key = r.dedup_key or (r.time_ns, r.service, host_of(r), r.body)
            found.setdefault(key, r)

    own = search(LogQuery(request_id=request_id, limit=limit, allowed_projects=allowed_projects))
    result.truncated = len(own) >= limit
    add(own)
    searched = {request_id}
    queue = list(own)
    while queue and len(result.followed) < MAX_FOLLOWED:
        record = queue.pop(0)
        for m in _USED_ID_RE.finditer(record.body):
            callee = m[1]
            if callee not in searched and is_valid_request_id(callee):
                searched.add(callee)
                result.followed.append(callee)
                more = search(
                    LogQuery(request_id=callee, limit=limit, allowed_projects=allowed_projects)
                )
                add(more)
                queue += more
        for m in _RPC_SENT_RE.finditer(record.body):
            msg_id = m[1]
            if msg_id not in searched:
                searched.add(msg_id)
                result.followed.append(msg_id)
                query = LogQuery(
                    text=msg_id,
                    start_ns=record.time_ns - RPC_WINDOW_BEFORE_NS,
                    end_ns=record.time_ns + RPC_WINDOW_AFTER_NS,
                    limit=limit,
                    allowed_projects=allowed_projects,
                )
                add(search(query))
    lines = sorted(found.values(), key=lambda r: r.time_ns)
    if len(lines) > limit:
        lines, result.truncated = lines[:limit], True
    result.lines = lines
    result.hops = _hops(lines)
    return result


def _site(record: LogRecord) -> Site:
    return (record.service, host_of(record))


def _hops(lines: list[LogRecord]) -> list[Hop]:
    """The hops the lines show (see the module docstring), in callee order."""
    hops = _Hops(lines)
    # Precise hops first: the lines that name their callee.
    for i, r in enumerate(lines):
        site = _site(r)
        for m in _RPC_SENT_RE.finditer(r.body):
            msg_id = m[1]
            j = hops.first_elsewhere(site, text=msg_id)
            hops.reach(HOP_RPC, msg_id, i, j)
        for m in _USED_ID_RE.finditer(r.body):
            callee = m[1]
            j = hops.first_elsewhere(site, request_id=callee)
            hops.reach(HOP_USED_REQUEST_ID, callee, i, j)
    # Then each site not yet reached, from the site of the line just before it.
    for j, r in enumerate(lines):
        site = _site(r)
        if site in hops.reached:
            continue
        for i in range(j - 1, -1, -1):
            prev = lines[i]
            if _site(prev) == site:
                continue
            if r.request_id is not None and r.request_id == prev.request_id:
                hops.reach(HOP_REQUEST_ID, r.request_id, i, j)
            elif r.global_request_id is not None and r.global_request_id in (
                prev.global_request_id,
                prev.request_id,
            ):
                hops.reach(HOP_GLOBAL_REQUEST_ID, r.global_request_id, i, j)
            break
        hops.reached.add(site)
    return sorted(hops.hops, key=lambda h: (h.callee, h.caller))


class _Hops:
    """Hops found so far and the sites they reach (the first line's site is where
    the request was first seen: nothing reaches it)."""

    def __init__(self, lines: list[LogRecord]) -> None:
        self.lines = lines
        self.hops: list[Hop] = []
        self.reached: set[Site] = {_site(lines[0])} if lines else set()

    def first_elsewhere(
        self, site: Site, *, text: str | None = None, request_id: str | None = None
    ) -> int | None:
        """Index of the first line of another site whose body holds *text* (or whose
        local request id is *request_id*)."""
        for j, x in enumerate(self.lines):
            if _site(x) == site:
                continue
            if (text is not None and text in x.body) or (
                request_id is not None and x.request_id == request_id
            ):
                return j
        return None

    def reach(self, kind: str, via: str, caller: int, callee: int | None) -> None:
        """Add a hop unless there is no callee line or its site was reached."""
        if callee is None:
            return
        site = _site(self.lines[callee])
        if site not in self.reached:
            self.reached.add(site)
            self.hops.append(Hop(kind, via, caller, callee))
