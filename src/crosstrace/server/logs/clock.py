"""Timestamps of log lines as nanoseconds since the epoch.

oslo.log writes local wall-clock times without a zone, journalctl's short format
has no year, JSON lines carry RFC 3339 times. A :class:`Clock` reads all three: a
time without a zone is in the clock's zone (UTC by default); a journal line's year
is the one given, else the one of a ``-- Logs begin at`` header, else a fallback,
and it moves to the next year when the month goes back (December -> January).
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re

__all__ = ["MONTHS", "Clock", "frac_ns"]

MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}

_RFC3339_RE = re.compile(
    r"(?P<date>\d{4}-\d\d-\d\d)[Tt ](?P<time>\d\d:\d\d:\d\d)(?:[.,](?P<frac>\d{1,9}))?"
    r"(?P<zone>[Zz]|[+-]\d\d:?\d\d)?",
    re.ASCII,
)
#: Wall-clock seconds remembered per clock (a log file repeats its seconds).
_EPOCH_CACHE_SIZE = 4096


def frac_ns(frac: str | None) -> int:
    """Nanoseconds of the digits after a time's decimal point."""
    return int(frac.ljust(9, "0")) if frac else 0


class Clock:
    """Turns the times of one file into nanoseconds (see the module docstring)."""

    def __init__(self, tz: _dt.tzinfo | None, year: int | None, fallback_year: int | None) -> None:
        self.tz = tz
        self.year = year
        self.year_fixed = year is not None
        self.fallback_year = fallback_year or _dt.datetime.now(_dt.UTC).year
        self._last_month = 0
        self._cache: dict[str, int] = {}

    def journal_begins(self, year: int) -> None:
        """A ``-- Logs begin at YYYY-...`` header: the year of the lines after it,
        unless the year was given."""
        if not self.year_fixed:
            self.year = year

    def _epoch(self, key: str, y: int, mo: int, d: int, h: int, mi: int, s: int) -> int | None:
        """Seconds since the epoch of a wall-clock time in the clock's zone."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            wall = _dt.datetime(y, mo, d, h, mi, s)  # naive: the zone is applied below
        except ValueError:
            return None
        if self.tz is None:
            seconds = calendar.timegm(wall.timetuple())
        else:
            seconds = int(wall.replace(tzinfo=self.tz).timestamp())
        if len(self._cache) > _EPOCH_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = seconds
        return seconds

    def oslo(self, date: str, time: str, frac: str | None) -> int | None:
        """``YYYY-MM-DD``, ``HH:MM:SS`` and the fraction of an oslo.log line."""
        seconds = self._epoch(
            date + time,
            int(date[0:4]),
            int(date[5:7]),
            int(date[8:10]),
            int(time[0:2]),
            int(time[3:5]),
            int(time[6:8]),
        )
        if seconds is None:
            return None
        return seconds * 1_000_000_000 + frac_ns(frac)

    def journal(self, mon: str, day: str, time: str, frac: str | None) -> int | None:
        """``Mon``, ``DD``, ``HH:MM:SS`` and the fraction of a journalctl line."""
        month = MONTHS[mon]
        if self.year is None:
            self.year = self.fallback_year
        if month < self._last_month and not self.year_fixed:
            self.year += 1  # December -> January
        self._last_month = month
        seconds = self._epoch(
            f"{self.year}|{month}|{day}|{time}",
            self.year,
            month,
            int(day),
            int(time[0:2]),
            int(time[3:5]),
            int(time[6:8]),
        )
        if seconds is None:
            return None
        return seconds * 1_000_000_000 + frac_ns(frac)

    def rfc3339(self, value: object) -> int | None:
        """An RFC 3339 time (a zone-less one is in the clock's zone), else ``None``."""
        if not isinstance(value, str):
            return None
        m = _RFC3339_RE.fullmatch(value)
        if m is None:
            return None
        zone = m["zone"]
        date, time = m["date"], m["time"]
        try:
            wall = _dt.datetime.fromisoformat(f"{date}T{time}")
        except ValueError:
            return None
        if zone is None:
            tz = self.tz or _dt.UTC
        elif zone in ("Z", "z"):
            tz = _dt.UTC
        else:
            digits = zone[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 23 or minutes > 59:
                return None
            offset = _dt.timedelta(hours=hours, minutes=minutes)
            tz = _dt.timezone(-offset if zone[0] == "-" else offset)
        seconds = int(wall.replace(tzinfo=tz).timestamp())
        return seconds * 1_000_000_000 + frac_ns(m["frac"])
