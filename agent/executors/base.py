"""What an executor does: run one training job on a box, report progress, leave the model here.

The agent hands an executor a :class:`TrainTask` (local paths). The executor makes ``run_dir`` on this
machine hold the finished run (``model/``, ``result.json``, ``smoke.json``, ``config.json``) or raises a
:class:`~pipelines.errors.RepopilotError` saying what went wrong. It polls ``is_cancelled`` and stops the
work (raising :class:`~agent.jobs.JobCancelled`) when it turns true. A task that runs again after the
agent died resumes: training continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Report = Callable[[dict[str, Any]], None]
IsCancelled = Callable[[], bool]
JOB_ENV = "REPOPILOT_JOB_ID"


@dataclass(frozen=True)
class TrainTask:
    """One training run, in local paths."""

    job_id: int
    dataset_dir: Path
    """The dataset folder (manifest.json, shards...)."""
    run_dir: Path
    """Where the finished run must end up on this machine."""
    train_args: list[str] = field(default_factory=list)
    """Arguments of `repopilot train` after DATASET and -o RUN (e.g. --base-model, --max-steps)."""
    log_file: Path | None = None
    """The job's log on this machine (the executor appends the run's output)."""


class Executor(ABC):
    """A box that runs training jobs; ``resource`` is the queue slot it holds (one GPU job per box)."""

    name: str

    @property
    def resource(self) -> str:
        return f"gpu:{self.name}"

    @abstractmethod
    def train(self, task: TrainTask, report: Report, is_cancelled: IsCancelled) -> dict[str, Any]:
        """Run (or resume, or just collect) the training; the run's result.json as a dict."""

    def check(self) -> str:
        """Whether the box can train now; a one-line description, or ExecutorError saying what to fix."""
        return f"{self.name}: ready"

    def cleanup_orphans(self, job_id: int) -> None:  # noqa: B027 - optional hook
        """Stop what a dead agent left running for ``job_id`` (called before the job runs again)."""


def train_progress(event: dict[str, Any]) -> dict[str, Any] | None:
    """A progress.jsonl event of a training run as a job progress dict (None: nothing to show)."""
    kind = event.get("event")
    if kind == "log" and event.get("max_steps"):
        step, total = int(event.get("step", 0)), int(event["max_steps"])
        out = {"fraction": round(step / total, 4), "step": step, "max_steps": total, "eta_s": event.get("eta_s")}
        for key in ("loss", "eval_loss", "tokens_per_s", "learning_rate"):
            if event.get(key) is not None:
                out[key] = event[key]
        loss = f", loss {event['loss']:.4f}" if "loss" in event else ""
        out["message"] = f"step {step}/{total}{loss}"
        return out
    if kind == "eval":
        return {"eval_loss": event.get("eval_loss"), "message": f"validation loss {event.get('eval_loss')}"}
    if kind in ("launch", "start", "checkpoint", "stopping", "trained", "done"):
        return {"message": kind if kind != "checkpoint" else f"checkpoint at step {event.get('step')}"}
    return None


def repopilot_command(*args: str) -> list[str]:
    """This interpreter running the `repopilot` CLI (no reliance on PATH)."""
    return [sys.executable, "-m", "agent.cli", *args]


def job_env(job_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env[JOB_ENV] = str(job_id)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_logged(
    cmd: list[str],
    *,
    job_id: int,
    log_file: Path,
    pid_file: Path,
    is_cancelled: IsCancelled,
    on_line: Callable[[str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    cwd: Path | None = None,
    tick_s: float = 0.5,
) -> int:
    """Run ``cmd`` in its own process group, output appended to ``log_file``; its exit code.

    Each new output line goes to ``on_line``; ``on_tick`` runs about every ``tick_s``. When
    ``is_cancelled()`` turns true the group gets SIGTERM (then SIGKILL after 20 s) and JobCancelled is
    raised. ``pid_file`` records the group so a restarted agent can stop what a dead one left behind.
    """
    from agent.jobs import JobCancelled

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        start = log.tell()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=job_env(job_id),
            cwd=cwd, start_new_session=True,
        )  # fmt: skip
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(proc.pid))
    offset, partial = start, b""
    try:
        while True:
            code = proc.poll()
            with open(log_file, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            if on_line:
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
            if on_tick:
                on_tick()
            if code is not None:
                return code
            if is_cancelled():
                stop_group(proc.pid, proc=proc)
                proc.wait()
                raise JobCancelled("cancelled while running")
            time.sleep(tick_s)
    finally:
        if proc.poll() is None:  # the agent is going down: leave nothing behind
            stop_group(proc.pid, grace_s=5, proc=proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        pid_file.unlink(missing_ok=True)


def stop_group(pid: int, grace_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group ``pid`` (training checkpoints on it), SIGKILL it after ``grace_s``.

    Pass ``proc`` when the leader is our child, so that it is reaped (a zombie leader keeps the group "alive").
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        if not _group_alive(pid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_orphan(pid_file: Path, job_id: int) -> bool:
    """Stop the process group a dead agent recorded in ``pid_file`` for ``job_id``; True if one ran."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        environ = []
    if f"{JOB_ENV}={job_id}".encode() not in environ:  # gone, or the pid now belongs to something else
        pid_file.unlink(missing_ok=True)
        return False
    stop_group(pid)
    pid_file.unlink(missing_ok=True)
    return True


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
