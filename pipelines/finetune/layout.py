"""Where a run keeps what: one place, shared by the launcher side and the ranks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        """The exact arguments and resolved settings the run trains with."""
        return self.root / "config.json"

    @property
    def ds_config(self) -> Path:
        return self.root / "ds_config.json"

    @property
    def progress(self) -> Path:
        """JSON lines: start, log (step, loss, lr, tokens/s, ETA, memory), checkpoint, eval, done."""
        return self.root / "progress.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def trained(self) -> Path:
        """What the ranks saved (for LoRA: the adapter)."""
        return self.root / "trained"

    @property
    def model(self) -> Path:
        """The final full model (LoRA merged), complete when it exists: written beside and renamed."""
        return self.root / "model"

    @property
    def base(self) -> Path:
        """The tiny base model, when the run made one."""
        return self.root / "base"

    @property
    def smoke(self) -> Path:
        return self.root / "smoke.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def stop_request(self) -> Path:
        """Created to ask the ranks to checkpoint and stop."""
        return self.root / "STOP"

    @property
    def ranks_lock(self) -> Path:
        """Held (shared) by every live rank, so a resume cannot start beside survivors of a crash."""
        return self.root / ".ranks.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def append_event(path: Path, event: str, **fields: Any) -> None:
    """One JSON line, appended and flushed (readers tail the file)."""
    line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, sort_keys=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return events


def last_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was written completely (its trainer_state.json is written last)."""
    if not folder.is_dir():
        return None
    done = []
    for child in folder.iterdir():
        if child.name.startswith("checkpoint-") and (child / "trainer_state.json").exists():
            try:
                done.append((int(child.name.split("-")[1]), child))
            except ValueError:
                continue
    return max(done)[1] if done else None
