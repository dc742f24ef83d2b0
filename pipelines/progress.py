"""Progress for long work: a status line on a terminal, JSON lines for the agent, or nothing."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

MODES = ("auto", "text", "json", "none")


class Progress:
    """Reports ``done/total`` with rates, at most every ``interval`` seconds, on stderr."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "text"
        self.mode = mode
        self.interval = interval
        self._stage = ""
        self._unit = "files"
        self._total = 0
        self._done = 0
        self._bytes = 0
        self._started = 0.0
        self._last = 0.0

    def start(self, stage: str, total: int, unit: str = "files") -> None:
        self._stage, self._total, self._done, self._bytes, self._unit = stage, total, 0, 0, unit
        self._started = self._last = time.monotonic()
        self._emit(force=True)

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        self._done += items
        self._bytes += nbytes
        if time.monotonic() - self._last >= self.interval:
            self._emit()

    def finish(self) -> None:
        self._emit(force=True, final=True)

    def event(self, name: str, **fields: Any) -> None:
        """A one-off message (e.g. 'update planned: 3 files changed')."""
        if self.mode == "json":
            self._write(json.dumps({"event": name, **fields}, sort_keys=True))
        elif self.mode == "text":
            detail = ", ".join(f"{k}={v}" for k, v in fields.items())
            self._write(f"{name}: {detail}" if detail else name)

    def _emit(self, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        mbps = self._bytes / elapsed / 1e6
        remaining = (self._total - self._done) / rate if rate > 0 and self._total else None
        if self.mode == "json":
            self._write(
                json.dumps(
                    {
                        "event": "done" if final else "progress",
                        "stage": self._stage,
                        "done": self._done,
                        "total": self._total,
                        "unit": self._unit,
                        "per_s": round(rate, 1),
                        "mb_per_s": round(mbps, 2),
                        "eta_s": None if remaining is None else round(remaining, 1),
                    },
                    sort_keys=True,
                )
            )
        elif self.mode == "text":
            eta = "" if remaining is None or final else f", ETA {remaining:.0f}s"
            self._write(
                f"{self._stage}: {self._done}/{self._total} {self._unit}, {rate:.0f} {self._unit}/s, "
                f"{mbps:.1f} MB/s{eta}" + (f" (done in {elapsed:.1f}s)" if final else "")
            )

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
