"""crosstrace's own verdict on each boot request, scored against the injected truth.

For every boot request the demo asks the backend for the analysis of its trace
(``GET /api/v1/traces/{id}/analysis``, with the demo's slow threshold) and
compares it with the fault catalogue:

- a failing fault is found when the verdict is ``error`` and the top candidate's
  service and operation are the fault's true root cause;
- the slow fault is found when the verdict is ``slow`` and the top candidate is
  the slow element;
- a clean request that was not slow is right when the verdict is ``ok`` with no
  candidate (clean requests that were slow, from load alone, are counted apart).

Each failure's root cause also has an error group; a fault kind should fall into
one group, however many services repeated its error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from crosstrace.demo.faults import CATALOGUE, FaultKind
from crosstrace.demo.groundtruth import RequestOutcome

__all__ = ["KindScore", "score_verdicts"]

#: (trace id, slow threshold in seconds) -> the analysis JSON, or None.
Analyse = Callable[[str, float], dict[str, Any] | None]


@dataclass(slots=True)
class KindScore:
    """How crosstrace did on the requests of one fault kind."""

    kind: FaultKind
    truth: str
    requests: int = 0
    right: int = 0
    #: Clean requests left out because the client saw them slow (load alone).
    slow_clean: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    groups: set[str] = field(default_factory=set)

    @property
    def accuracy(self) -> float | None:
        return self.right / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        top = self.answers.most_common(1)
        return {
            "truth": self.truth,
            "requests": self.requests,
            "right": self.right,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
            "slow_clean_left_out": self.slow_clean,
            "most_common_answer": top[0][0] if top else None,
            "answers": dict(self.answers),
            "error_groups": sorted(self.groups),
        }


def _truth(kind: FaultKind) -> str:
    cause = CATALOGUE[kind].root_cause
    return f"{cause.service} / {cause.operation}" if cause else "nothing"


def _answer(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return "no analysis"
    root = doc.get("root_cause")
    if not root:
        return f"{doc.get('verdict')}: nothing"
    return f"{doc.get('verdict')}: {root.get('service')} / {root.get('name')}"


def score_verdicts(
    outcomes: Iterable[tuple[RequestOutcome, str | None]],
    analyse: Analyse,
    slow_threshold_s: float,
) -> dict[FaultKind, KindScore]:
    """Score each (boot request, its trace id) by the analysis *analyse* returns."""
    scores = {kind: KindScore(kind, _truth(kind)) for kind in CATALOGUE}
    for outcome, trace_id in outcomes:
        score = scores[outcome.fault]
        slow = outcome.latency_s is not None and outcome.latency_s > slow_threshold_s
        if outcome.fault is FaultKind.NONE and slow:
            score.slow_clean += 1
            continue
        score.requests += 1
        doc = analyse(trace_id, slow_threshold_s) if trace_id else None
        answer = _answer(doc)
        score.answers[answer] += 1
        spec = CATALOGUE[outcome.fault]
        root = (doc or {}).get("root_cause")
        verdict = (doc or {}).get("verdict")
        if spec.root_cause is None:
            right = verdict == "ok" and root is None
        else:
            expected = "error" if spec.is_failure else "slow"
            right = (
                verdict == expected
                and root is not None
                and root.get("service") == spec.root_cause.service
                and root.get("name") == spec.root_cause.operation
            )
            if spec.is_failure and root is not None and root.get("group_id"):
                score.groups.add(str(root["group_id"]))
        score.right += int(right)
    return scores
