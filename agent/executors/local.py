"""Training on this machine: `repopilot train` in a subprocess (the DeepSpeed launcher when GPUs are there)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from agent.errors import ExecutorError
from agent.executors.base import (
    Executor,
    IsCancelled,
    Report,
    TrainTask,
    read_json,
    repopilot_command,
    run_logged,
    stop_orphan,
    train_progress,
)
from agent.logs import tail


class ProgressTail:
    """Follows a run's progress.jsonl and reports what is new."""

    def __init__(self, path: Path, report: Report) -> None:
        self.path, self.report, self.offset = path, report, 0

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            progress = train_progress(event)
            if progress:
                self.report(progress)


class LocalExecutor(Executor):
    """This machine; ``gpus`` limits the CUDA devices used (empty: all visible, or the CPU without any)."""

    def __init__(self, name: str = "local", gpus: list[int] | None = None, work_dir: Path | None = None) -> None:
        self.name, self.gpus, self.work_dir = name, list(gpus or []), work_dir

    def train(self, task: TrainTask, report: Report, is_cancelled: IsCancelled) -> dict[str, Any]:
        result = read_json(task.run_dir / "result.json")
        if result and result.get("status") == "done" and (task.run_dir / "model").is_dir():
            return result  # finished before the agent went down
        if task.run_dir.exists() and not (task.run_dir / "config.json").exists():
            shutil.rmtree(task.run_dir)  # set-up did not finish: nothing in it is worth keeping
        cmd = train_command(task, self.gpus)
        log = task.log_file or task.run_dir.with_suffix(".log")
        code = run_logged(
            cmd,
            job_id=task.job_id,
            log_file=log,
            pid_file=self._pid_file(task),
            is_cancelled=is_cancelled,
            on_tick=ProgressTail(task.run_dir / "progress.jsonl", report),
        )
        result = read_json(task.run_dir / "result.json")
        if code != 0 or not result:
            raise ExecutorError(f"`repopilot train` exited with code {code}.\n{tail(log, 15)}", title="Training failed")
        return result

    def cleanup_orphans(self, job_id: int) -> None:
        stop_orphan(self._pid_dir() / f"train-{job_id}.pid", job_id)

    def _pid_file(self, task: TrainTask) -> Path:
        return self._pid_dir() / f"train-{task.job_id}.pid"

    def _pid_dir(self) -> Path:
        if self.work_dir is None:
            raise ExecutorError("the local executor has no work folder", title="Agent problem")
        return self.work_dir


def train_command(task: TrainTask, gpus: list[int], cli: list[str] | None = None) -> list[str]:
    """`repopilot train` for a fresh run, or `--resume` when the run folder already holds one."""
    cli = cli or repopilot_command()
    if (task.run_dir / "config.json").exists():
        return [*cli, "train", "--resume", "-o", str(task.run_dir), "--json"]
    extra = ["--include", "localhost:" + ",".join(map(str, gpus))] if gpus else []
    return [*cli, "train", str(task.dataset_dir), "-o", str(task.run_dir), *task.train_args, *extra, "--json"]
