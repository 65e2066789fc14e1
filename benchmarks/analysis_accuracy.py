"""Root-cause accuracy over several demo runs, per fault kind.

Each ``crosstrace demo --once`` run writes ``summary.json`` with crosstrace's
verdict on every boot request scored against the injected truth ("verdicts").
This adds the runs up and, from each run's store and ground truth, scores two
rules of other tools on the same failed requests for comparison: Jaeger's
"deepest error span with no errored children" and OSProfiler's "span that
started last" (right when that span's service and operation are the truth); and
crosstrace's logs-only verdict on the same requests (their log lines alone, as for
a request known only from log files; right when the origin line's service is the
true root cause's service, since a log line names no operation)::

    for s in 21 22 23; do crosstrace demo --once --seed $s --requests 400 --data-dir d$s; done
    python benchmarks/analysis_accuracy.py d21 d22 d23
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def _baselines(d: Path, totals: dict[str, Counter[str]]) -> None:
    from crosstrace.server.analysis import analyse_request
    from crosstrace.server.logs.follow import follow_request
    from crosstrace.server.model import STATUS_ERROR, SpanRecord
    from crosstrace.server.query.diagnose import PRECISE_HOPS
    from crosstrace.server.store import open_store

    truth = json.loads((d / "groundtruth.json").read_text())
    store = open_store(f"sqlite:///{d / 'crosstrace.sqlite3'}")
    try:
        for entry in truth["faults"]:
            cause = entry.get("root_cause")
            if not cause or len(entry["trace_ids"]) != 1:
                continue
            spans = store.get_trace(bytes.fromhex(entry["trace_ids"][0]))
            ids = {s.span_id: s for s in spans}

            def depth(span: object, ids: dict[bytes, SpanRecord] = ids) -> int:
                n, seen = 0, set()
                p = getattr(span, "parent_span_id", None)
                while p in ids and p not in seen:
                    seen.add(p)
                    n += 1
                    p = ids[p].parent_span_id
                return n

            errors = [s for s in spans if s.status_code == STATUS_ERROR]
            parents = {s.parent_span_id for s in errors}
            leaves = [s for s in errors if s.span_id not in parents]
            jaeger = max(leaves, key=lambda s: (depth(s), -s.start_ns), default=None)
            followed = follow_request(store.search_logs, entry["global_request_id"], 5000)
            hops = [(h.caller, h.callee) for h in followed.hops if h.kind in PRECISE_HOPS]
            from_logs = analyse_request(entry["global_request_id"], [], followed.lines, hops=hops)
            origin = from_logs.root_cause
            last = max(spans, key=lambda s: s.start_ns, default=None)
            t = totals.setdefault(entry["fault"], Counter())
            t["n"] += 1
            for name, span in (("jaeger", jaeger), ("osprofiler", last)):
                if span and (span.service, span.name) == (cause["service"], cause["operation"]):
                    t[name] += 1
            if origin is not None and origin.service == cause["service"]:
                t["logs"] += 1
    finally:
        store.close()


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
    base: dict[str, Counter[str]] = {}
    for d in dirs:
        if (d / "crosstrace.sqlite3").exists():
            _baselines(d, base)
    if base:
        print()
        print(
            "| fault kind | crosstrace | Jaeger: deepest error leaf | OSProfiler: last started "
            "| crosstrace, logs only (service) |"
        )
        print("|---|---:|---:|---:|---:|")
        for kind, c in base.items():
            t = totals[kind]
            ours = f"{100 * int(t['right']) / max(1, int(t['requests'])):.1f} %"  # type: ignore[call-overload]
            print(
                f"| {kind} | {ours} | {100 * c['jaeger'] / c['n']:.1f} % "
                f"| {100 * c['osprofiler'] / c['n']:.1f} % | {100 * c['logs'] / c['n']:.1f} % |"
            )
    left = int(totals.get("none", {}).get("left_out", 0))  # type: ignore[call-overload]
    print(f"clean requests slow from load alone, left out: {left}")
    print(f"error groups the backend held per run: {dict(groups)}")


if __name__ == "__main__":
    main()
