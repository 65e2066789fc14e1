"""Imported logs: every request with an ERROR line or a traceback gets a verdict
that names its originating line.

    crosstrace logs import --db sqlite:///real.sqlite3 ../shared/realdata/openstack-logs/*.txt
    python benchmarks/analysis_logs_origin.py sqlite:///real.sqlite3
"""

from __future__ import annotations

import sys

from crosstrace.server.analysis import is_error_line
from crosstrace.server.model import LogQuery, LogRecord
from crosstrace.server.query.diagnose import Diagnoser
from crosstrace.server.store import open_store


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    store = open_store(sys.argv[1])
    diag = Diagnoser(store)
    records = store.search_logs(LogQuery(limit=10_000_000))
    requests: dict[str, list[LogRecord]] = {}
    unowned = 0
    for r in records:
        if not is_error_line(r):
            continue
        ids = {i for i in (r.request_id, r.global_request_id) if i}
        unowned += not ids
        for rid in ids:
            requests.setdefault(rid, []).append(r)
    print(
        f"{len(records)} log lines; {len(requests)} request(s) with an ERROR line or a "
        f"traceback; {unowned} such line(s) logged outside any request ([-])"
    )
    named = 0
    for rid, lines in sorted(requests.items()):
        a = diag.request(rid)
        top = a.root_cause if a else None
        line = top.log if top else None
        ok = bool(
            a
            and a.verdict == "error"
            and line is not None
            and any(line.time_ns == r.time_ns and line.body == r.body for r in lines)
        )
        named += ok
        first = line.body.split("\n", 1)[0][:70] if line else ""
        print(
            f"  {rid}: {a.verdict if a else None}; origin {top.service if top else '-'} "
            f"{line.source if line else '-'} {top.exception_type if top else ''} {first!r}"
        )
    print(f"{named}/{len(requests)} named their originating line")
    store.close()


if __name__ == "__main__":
    main()
