"""Quiet hours: a daily window ("22:00-07:00", may wrap midnight) in which the agent starts no training."""

from __future__ import annotations

import datetime as dt


def parse_quiet_hours(spec: str) -> tuple[dt.time, dt.time] | None:
    """Parse ``"HH:MM-HH:MM"`` (may wrap midnight) into (start, end); ``""`` means no quiet hours.

    Raises ValueError with a readable message when the spec is malformed or start equals end.
    """
    spec = spec.strip()
    if not spec:
        return None
    parts = spec.split("-")
    if len(parts) != 2:
        raise ValueError(f'expected "HH:MM-HH:MM" (e.g. "22:00-07:00") or "", got {spec!r}')
    start, end = (_parse_hhmm(part.strip(), spec) for part in parts)
    if start == end:
        raise ValueError(f'start and end are equal in {spec!r}; use "" for no quiet hours')
    return start, end


def _parse_hhmm(text: str, spec: str) -> dt.time:
    hours, sep, minutes = text.partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(f'expected "HH:MM-HH:MM" (e.g. "22:00-07:00") or "", got {spec!r}')
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError(f"{text!r} is not a time of day in {spec!r}")
    return dt.time(int(hours), int(minutes))
