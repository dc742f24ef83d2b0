"""What the agent verbs share: the config option, the client, tables, JSON output and times."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Sequence
from typing import Any

from agent.api.client import AgentClient
from agent.api.models import to_json


def config_option() -> argparse.ArgumentParser:
    """A parent parser with ``--config`` (default: ``$REPOPILOT_CONFIG`` or the user's config file)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="config file (default: $REPOPILOT_CONFIG or the user config dir's repopilot/config.toml)",
    )
    return parent


def json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    return parent


def client(args: argparse.Namespace) -> AgentClient:
    """The client of the running agent (AgentNotRunning, i.e. `title: message` and exit 1, when none runs)."""
    return AgentClient.connect(getattr(args, "config", None))


def print_json(value: Any) -> None:
    print(json.dumps(to_json(value), indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "(none)") -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    if not rows:
        print(empty)
        return
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)) + "  " + row[-1])


def when(timestamp: float | None) -> str:
    """A time as people read it: ``14:02`` today, ``Mar 3 14:02`` otherwise, ``-`` if None."""
    if not timestamp:
        return "-"
    moment = dt.datetime.fromtimestamp(timestamp)
    return moment.strftime("%H:%M" if moment.date() == dt.date.today() else "%b %d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def elapsed(start: float | None, end: float | None) -> str:
    if not start:
        return "-"
    return duration((end or time.time()) - start)


def short(sha: str | None) -> str:
    return sha[:10] if sha else "-"
