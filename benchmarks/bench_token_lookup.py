"""Token lookup time: a valid token, an unknown one and one with one character
changed, measured in the same run, interleaved, against an auth file of N
identities. The lookup hashes the token once and compares every digest without
stopping, so the three medians should agree within noise.

    .venv/bin/python benchmarks/bench_token_lookup.py --identities 200 --rounds 20000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from crosstrace.server.auth.identities import IdentityFile, add_identity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "auth.toml"
        tokens = [add_identity(path, f"id{i}", ["reader"]) for i in range(args.identities)]
        ids = IdentityFile(path)
        valid = tokens[len(tokens) // 2]
        cases = {
            "valid (middle of the file)": valid,
            "valid (last)": tokens[-1],
            "unknown": "ctk_" + "x" * (len(valid) - 4),
            "one character changed": valid[:-1] + ("A" if valid[-1] != "A" else "B"),
        }
        samples: dict[str, list[int]] = {name: [] for name in cases}
        clock = time.perf_counter_ns
        for _ in range(args.rounds):
            for name, token in cases.items():  # interleaved: drift hits all cases alike
                t0 = clock()
                ids.lookup(token)
                samples[name].append(clock() - t0)
        base = statistics.median(samples["valid (middle of the file)"])
        print(f"{args.identities} identities, {args.rounds} rounds, median ns (ratio to valid):")
        for name, values in samples.items():
            med = statistics.median(values)
            print(f"  {name:28s} {med:9.0f}  {med / base:.3f}")


if __name__ == "__main__":
    main()
