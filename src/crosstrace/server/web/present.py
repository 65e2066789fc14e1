"""Small formatting helpers the templates share: times, durations, windows, levels."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from crosstrace.server.web.waterfall import format_duration

__all__ = [
    "DEFAULT_WINDOW",
    "WINDOWS",
    "bar",
    "format_duration",
    "format_offset",
    "format_time",
    "level_class",
    "parse_window",
    "sparkline_points",
    "tracing_rows",
]

#: Windows offered in the pickers: (value, label).
WINDOWS: Final = (
    ("15m", "last 15 minutes"),
    ("1h", "last hour"),
    ("6h", "last 6 hours"),
    ("24h", "last 24 hours"),
    ("7d", "last 7 days"),
)
DEFAULT_WINDOW: Final = "1h"
_MIN_WINDOW_NS: Final = 60 * 1_000_000_000
_MAX_WINDOW_NS: Final = 31 * 24 * 3600 * 1_000_000_000
#: A report older than this is shown as stale (tracers report every poll, 30 s).
STALE_REPORT_S: Final = 120.0
#: Reported overhead above the budget by more than this share is shown as over.
OVER_BUDGET: Final = 1.1


def parse_window(text: str | None) -> tuple[str, int]:
    """(value, nanoseconds) of a window such as ``1h``; ``ValueError`` if unusable."""
    from crosstrace.server.settings import parse_duration_ns as parse_duration

    value = (text or DEFAULT_WINDOW).strip()
    ns = parse_duration(value)
    if not _MIN_WINDOW_NS <= ns <= _MAX_WINDOW_NS:
        raise ValueError(f"window {value!r} must be between 1m and 31d")
    return value, ns


def format_time(ns: Any) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS.mmm``."""
    try:
        moment = datetime.fromtimestamp(int(ns) / 1e9, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_offset(ns: int) -> str:
    """``+12.5 ms`` from a start (negative offsets keep their sign)."""
    sign = "-" if ns < 0 else "+"
    return sign + format_duration(abs(ns))


def level_class(severity_number: int) -> str:
    if severity_number >= 17:
        return "lv-error"
    if severity_number >= 13:
        return "lv-warn"
    if severity_number and severity_number < 9:
        return "lv-debug"
    return "lv-info"


def bar(value: int, biggest: int) -> float:
    """Width in percent of *value* against *biggest* (at least 0.5 so it shows)."""
    if biggest <= 0:
        return 0.5
    return max(0.5, min(100.0, 100.0 * value / biggest))


def sparkline_points(series: list[int], width: int = 100, height: int = 24) -> str:
    """SVG polyline points of *series* scaled into width x height."""
    if not series:
        return ""
    top = max(series) or 1
    step = width / max(1, len(series) - 1)
    return " ".join(
        f"{i * step:.1f},{height - 2 - (height - 4) * v / top:.1f}" for i, v in enumerate(series)
    )


def request_timeline(
    spans: list[Any], logs: list[Any], start_ns: int, span_ns: int
) -> list[dict[str, Any]]:
    """One lane per service for the request page: where each trace was busy in
    that service (first span start to last span end), and its log lines as ticks,
    in percent of the request's time range."""
    lanes: dict[str, dict[str, Any]] = {}
    busy: dict[tuple[str, bytes], list[int]] = {}
    for s in spans:
        key = (s.service, s.trace_id)
        seg = busy.setdefault(key, [s.start_ns, s.end_ns, 0])
        seg[0] = min(seg[0], s.start_ns)
        seg[1] = max(seg[1], s.end_ns)
        seg[2] |= s.status_code == 2
    for (service, trace_id), (s0, s1, err) in sorted(busy.items(), key=lambda kv: kv[1][0]):
        lane = lanes.setdefault(service, {"service": service, "segments": [], "ticks": []})
        lane["segments"].append(
            {
                "left": 100.0 * (s0 - start_ns) / span_ns,
                "width": max(0.3, 100.0 * (s1 - s0) / span_ns),
                "error": bool(err),
                "trace_id": trace_id.hex(),
                "label": f"{service}: {format_duration(s1 - s0)}",
            }
        )
    for r in logs:
        lane = lanes.setdefault(r.service, {"service": r.service, "segments": [], "ticks": []})
        lane["ticks"].append(
            {
                "left": 100.0 * (r.time_ns - start_ns) / span_ns,
                "cls": level_class(r.severity_number),
            }
        )

    def first(lane: dict[str, Any]) -> float:
        lefts = [s["left"] for s in lane["segments"]] + [t["left"] for t in lane["ticks"]]
        return min(lefts, default=0.0)

    return sorted(lanes.values(), key=lambda lane: (first(lane), lane["service"]))


def _percent(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{100 * value:.2g} %" if 0 < value < 0.01 else f"{100 * value:.3g} %"


def tracing_rows(rows: list[dict[str, Any]], now_s: float) -> list[dict[str, Any]]:
    """The services page's tracing table from ``SamplingRegistry.overhead()``:
    per service, the budget set centrally against what its tracer reports."""
    out = []
    for row in rows:
        reported = row.get("reported") or {}
        budget = row.get("budget")
        overhead = reported.get("overhead")
        floor = reported.get("floor")
        at = reported.get("reported_at")
        age = now_s - at if isinstance(at, int | float) else None
        state = "none"
        if age is not None:
            state = "stale" if age > STALE_REPORT_S else "ok"
            if (
                state == "ok"
                and isinstance(budget, int | float)
                and isinstance(overhead, int | float)
            ):
                state = "over" if overhead > budget * OVER_BUDGET else "ok"
                if state == "over" and isinstance(floor, int | float) and floor > budget:
                    state = "floor"  # over even with nothing traced
        out.append(
            {
                "service": row.get("service", ""),
                "budget": _percent(budget),
                "overhead": _percent(overhead),
                "floor": _percent(floor),
                "traced": _percent(reported.get("trace_fraction")),
                "ratio": _percent(reported.get("effective_ratio")),
                "dropped": reported.get("spans_dropped", "—"),
                "age": "never" if age is None else f"{max(0, round(age))} s ago",
                "state": state,
            }
        )
    return out
