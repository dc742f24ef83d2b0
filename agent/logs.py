"""The agent's own log file and reading the end of log files."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file (of its last 256 KiB); empty when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def log_to(path: Path) -> None:
    root = logging.getLogger("agent")
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
