"""When to retrain and which models to prune: pure functions, no I/O, no clock of their own.

The agent calls :func:`should_retrain` with the changes since the serving model was trained and the
current time; it answers a :class:`Decision` with a reason that the API and the GUI show as is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.quiet_hours import parse_quiet_hours

if TYPE_CHECKING:
    from agent.config import PolicyConfig


@dataclass(frozen=True)
class Decision:
    """The answer of :func:`should_retrain`."""

    retrain: bool
    """Whether a retrain should be queued now."""
    reason: str
    """Why, in words a user can read (shown by the API and the GUI)."""
    next_allowed: dt.datetime | None = None
    """When quiet hours block a retrain: the moment they end; otherwise None."""


def in_quiet_hours(now: dt.datetime, spec: str) -> bool:
    """Whether ``now`` (its wall-clock time) falls in ``[start, end)``; windows may wrap midnight."""
    window = parse_quiet_hours(spec)
    if window is None:
        return False
    start, end = window
    t = now.time().replace(tzinfo=None)
    if start < end:
        return start <= t < end
    return t >= start or t < end


def quiet_hours_end(now: dt.datetime, spec: str) -> dt.datetime | None:
    """The end of the quiet window ``now`` is in (same tzinfo as ``now``), or None outside quiet hours."""
    if not in_quiet_hours(now, spec):
        return None
    window = parse_quiet_hours(spec)
    assert window is not None
    end = window[1]
    candidate = now.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if candidate <= now:
        candidate += dt.timedelta(days=1)
    return candidate


def should_retrain(
    changes_since_serving: tuple[int, int],
    last_trained_at: dt.datetime | None,
    now: dt.datetime,
    policy: PolicyConfig,
    *,
    force: bool = False,
) -> Decision:
    """Decide whether to retrain now.

    ``changes_since_serving`` is (changed lines, changed files) since the serving model's data.
    A retrain is triggered when lines >= ``min_changed_lines`` or files >= ``min_changed_files``, or
    when the schedule is due: ``schedule_hours`` > 0, there is at least one change, and the last
    training is that old (or there never was one). A triggered retrain inside quiet hours is held
    back: the decision says ``"quiet hours until HH:MM"`` and carries ``next_allowed``.

    ``force=True`` is the user's "retrain now": it bypasses thresholds, the schedule *and* quiet hours,
    since the user asked for it explicitly.
    """
    if force:
        return Decision(True, "manual retrain requested")
    lines, files = changes_since_serving
    trigger = _trigger(lines, files, last_trained_at, now, policy)
    if trigger is None:
        return Decision(
            False,
            f"no retrain needed: {lines} changed lines (< {policy.min_changed_lines}), "
            f"{files} changed files (< {policy.min_changed_files})",
        )
    until = quiet_hours_end(now, policy.quiet_hours)
    if until is not None:
        return Decision(False, f"quiet hours until {until:%H:%M}", next_allowed=until)
    return Decision(True, trigger)


def _trigger(
    lines: int, files: int, last_trained_at: dt.datetime | None, now: dt.datetime, policy: PolicyConfig
) -> str | None:
    if lines >= policy.min_changed_lines:
        return f"{lines} changed lines >= {policy.min_changed_lines}"
    if files >= policy.min_changed_files:
        return f"{files} changed files >= {policy.min_changed_files}"
    if policy.schedule_hours > 0 and (lines > 0 or files > 0):
        if last_trained_at is None:
            return "scheduled retrain: no model trained yet"
        if now - last_trained_at >= dt.timedelta(hours=policy.schedule_hours):
            return f"scheduled retrain: last trained over {policy.schedule_hours:g} h ago"
    return None


def models_to_prune(models: Sequence[tuple[str, dt.datetime, bool]], keep: int) -> list[str]:
    """Versions to delete, oldest first: all but the newest ``keep`` by creation time.

    ``models`` holds (version, created_at, serving). A serving model is never pruned, even when it is
    not among the newest ``keep`` (it is then kept in addition to them).
    """
    newest_first = sorted(models, key=lambda m: m[1], reverse=True)
    pruned = [m for m in newest_first[max(keep, 0) :] if not m[2]]
    return [version for version, _, _ in reversed(pruned)]
