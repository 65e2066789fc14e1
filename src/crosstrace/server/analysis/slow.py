"""Slow requests: which spans' own time makes up the critical path.

The critical path of a span runs backwards from its end: the child that finished
last before that point is on it, then the child that finished last before that
child started, and so on; the gaps between them are the span's own time on the
path (Jaeger's critical-path algorithm). Children that ran in parallel and
finished earlier do not count. Computed without recursion, each span visited once.
"""

from __future__ import annotations

from typing import Final

from crosstrace.server.analysis.tree import TraceIndex

__all__ = ["MAX_SLOW_CANDIDATES", "MIN_SHARE", "critical_self_time", "slow_candidates"]

#: A span is a candidate when its own time is at least this share of the path.
MIN_SHARE: Final = 0.2
MAX_SLOW_CANDIDATES: Final = 3


def critical_self_time(idx: TraceIndex, root: int) -> dict[int, int]:
    """Span index -> its own time on the critical path below *root* (ns)."""
    spans = idx.spans
    own: dict[int, int] = {}
    stack = [(root, spans[root].start_ns, spans[root].end_ns)]
    while stack:
        i, lo, hi = stack.pop()
        t = hi
        total = 0
        # A child's end is its subtree's: a message consumed after its publish
        # span ended still belongs to the publish's time.
        ends = idx.subtree_end
        kids = sorted(idx.children[i], key=lambda c: ends[c], reverse=True)
        for c in kids:
            if t <= lo:
                break
            k_end = min(ends[c], t)
            k_start = max(spans[c].start_ns, lo)
            if k_end <= k_start:
                continue
            total += t - k_end
            stack.append((c, k_start, k_end))
            t = k_start
        total += max(0, t - lo)
        own[i] = own.get(i, 0) + total
    return own


def slow_candidates(idx: TraceIndex, root: int) -> list[tuple[int, int]]:
    """(span index, own time on the critical path), largest first: the spans with
    at least :data:`MIN_SHARE` of the path (always at least one). A database span's
    time is counted for the operation that ran it."""
    own = critical_self_time(idx, root)
    folded: dict[int, int] = {}
    for i, t in own.items():
        p = idx.parent[i]
        at = p if idx.is_db(i) and p >= 0 and idx.spans[p].service == idx.spans[i].service else i
        folded[at] = folded.get(at, 0) + t
    total = sum(folded.values())
    if total <= 0:
        return []
    ranked = sorted(folded.items(), key=lambda kv: (-kv[1], kv[0]))
    out = [ranked[0]]
    out.extend(kv for kv in ranked[1:MAX_SLOW_CANDIDATES] if kv[1] >= MIN_SHARE * total)
    return out
