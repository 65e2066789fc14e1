"""Root-cause accuracy over several demo runs, per fault kind.

Each ``crosstrace demo --once`` run writes ``summary.json`` with crosstrace's
verdict on every boot request scored against the injected truth ("verdicts").
This adds the runs up::

    for s in 21 22 23; do crosstrace demo --once --seed $s --requests 400 --data-dir d$s; done
    python benchmarks/analysis_accuracy.py d21 d22 d23
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:]]
    if not dirs:
        sys.exit(__doc__)
    totals: dict[str, dict[str, object]] = {}
    groups: Counter[str] = Counter()
    seeds = []
    for d in dirs:
        doc = json.loads((d / "summary.json").read_text())
        seeds.append(str(doc["seed"]))
        for kind, v in doc["verdicts"].items():
            t = totals.setdefault(
                kind,
                {
                    "truth": v["truth"],
                    "requests": 0,
                    "right": 0,
                    "left_out": 0,
                    "answers": Counter(),
                    "groups": set(),
                },
            )
            t["requests"] += v["requests"]  # type: ignore[operator]
            t["right"] += v["right"]  # type: ignore[operator]
            t["left_out"] += v["slow_clean_left_out"]  # type: ignore[operator]
            t["answers"].update(v["answers"])  # type: ignore[attr-defined]
            t["groups"].update(v["error_groups"])  # type: ignore[attr-defined]
        groups[str(doc["seed"])] = doc.get("error_groups") or 0
    n = sum(int(t["requests"]) for t in totals.values())  # type: ignore[call-overload]
    print(f"seeds {', '.join(seeds)}: {n} boot requests scored")
    print("| fault kind | true root cause | requests | right | accuracy | error groups |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, t in totals.items():
        req, right = int(t["requests"]), int(t["right"])  # type: ignore[call-overload]
        acc = f"{100 * right / req:.1f} %" if req else "-"
        g = len(t["groups"]) if kind not in ("none", "slow_scheduler") else "-"  # type: ignore[arg-type]
        print(f"| {kind} | {t['truth']} | {req} | {right} | {acc} | {g} |")
        wrong = {a: c for a, c in t["answers"].items() if c and a.split(": ", 1)[-1] != t["truth"]}  # type: ignore[attr-defined]
        if wrong and kind != "none":
            print(f"|  | other answers: {wrong} | | | | |")
    left = int(totals.get("none", {}).get("left_out", 0))  # type: ignore[call-overload]
    print(f"clean requests slow from load alone, left out: {left}")
    print(f"error groups the backend held per run: {dict(groups)}")


if __name__ == "__main__":
    main()
