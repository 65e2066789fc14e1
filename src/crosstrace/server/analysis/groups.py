"""Error groups: root causes with one signature, counted over a time window.

Each failed trace (or logs-only request) contributes one row: the group id and
signature of its root cause, when it started, and its project. Copies of one
error logged or raised by several services are not rows of their own: a trace
has one root cause, the origin, so they all count in the origin's group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from crosstrace.server.analysis.signature import Signature

__all__ = ["SERIES_BUCKETS", "CauseRow", "ErrorGroup", "group_causes"]

#: Buckets in a group's time series.
SERIES_BUCKETS: Final = 24
#: Sample traces kept per group (newest first).
MAX_SAMPLES: Final = 5


@dataclass(frozen=True, slots=True)
class CauseRow:
    """The root cause of one failed trace."""

    trace_id: bytes
    start_ns: int
    signature: Signature
    project_id: str | None = None

    @property
    def group_id(self) -> str:
        return self.signature.group_id


@dataclass(slots=True)
class ErrorGroup:
    group_id: str
    signature: Signature
    count: int = 0
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    projects: list[str] = field(default_factory=list)
    sample_trace_ids: list[bytes] = field(default_factory=list)
    #: (bucket start, failures in the bucket), oldest first.
    series: list[tuple[int, int]] = field(default_factory=list)
    bucket_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "signature": self.signature.to_json(),
            "count": self.count,
            "first_seen_ns": self.first_seen_ns,
            "last_seen_ns": self.last_seen_ns,
            "projects": list(self.projects),
            "sample_trace_ids": [t.hex() for t in self.sample_trace_ids],
            "bucket_ns": self.bucket_ns,
            "series": [{"start_ns": s, "count": c} for s, c in self.series],
        }


def group_causes(
    rows: Iterable[CauseRow],
    start_ns: int | None = None,
    end_ns: int | None = None,
    buckets: int = SERIES_BUCKETS,
) -> list[ErrorGroup]:
    """Group *rows* by signature, most frequent first (then most recent). The
    series covers [start_ns, end_ns) (default: the rows' own span of time)."""
    items = list(rows)
    if not items:
        return []
    lo = start_ns if start_ns is not None else min(r.start_ns for r in items)
    hi = end_ns if end_ns is not None else max(r.start_ns for r in items) + 1
    hi = max(hi, lo + 1)
    width = max(1, -(-(hi - lo) // max(1, buckets)))
    n_buckets = max(1, -(-(hi - lo) // width))
    groups: dict[str, ErrorGroup] = {}
    counts: dict[str, list[int]] = {}
    projects: dict[str, set[str]] = {}
    samples: dict[str, list[tuple[int, bytes]]] = {}
    for row in items:
        gid = row.group_id
        group = groups.get(gid)
        if group is None:
            group = groups[gid] = ErrorGroup(
                gid, row.signature, first_seen_ns=row.start_ns, last_seen_ns=row.start_ns
            )
            counts[gid] = [0] * n_buckets
            projects[gid] = set()
            samples[gid] = []
        group.count += 1
        group.first_seen_ns = min(group.first_seen_ns, row.start_ns)
        group.last_seen_ns = max(group.last_seen_ns, row.start_ns)
        b = (row.start_ns - lo) // width
        if 0 <= b < n_buckets:
            counts[gid][b] += 1
        if row.project_id:
            projects[gid].add(row.project_id)
        samples[gid].append((row.start_ns, row.trace_id))
    for gid, group in groups.items():
        group.projects = sorted(projects[gid])
        newest = sorted(samples[gid], reverse=True)[:MAX_SAMPLES]
        group.sample_trace_ids = [t for _, t in newest]
        group.bucket_ns = width
        group.series = [(lo + k * width, c) for k, c in enumerate(counts[gid])]
    return sorted(groups.values(), key=lambda g: (-g.count, -g.last_seen_ns, g.group_id))
