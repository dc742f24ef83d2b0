"""Training on a remote GPU box over SSH, with the OpenSSH client and rsync.

On the box, under ``work_dir`` (default ``~/.repopilot-box``): ``src/`` (this checkout's ``agent/``,
``pipelines/``, ``scripts/``, ``pyproject.toml``), ``venv/`` (set up when ``python`` is not given),
``datasets/<version>/``, ``runs/<run>/`` and ``jobs/<id>.{sh,pid,log,exit}``. The training runs there
detached (its own session), so a dropped connection or a dead agent leaves it running: the executor
polls it, retries a lost connection for ``reconnect_timeout_s``, and a later ``train()`` of the same
task reattaches to it instead of starting another. When it ends the run folder (without checkpoints)
is fetched and the paths in ``result.json`` are made local.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import agent
from agent.config import GpuBox
from agent.errors import ExecutorError
from agent.executors.base import (
    Executor,
    IsCancelled,
    Report,
    TrainTask,
    read_json,
    train_progress,
)
from agent.executors.local import train_command
from agent.executors.sshutil import (
    ENV_CHECK,
    ENV_MARK,
    ConnectionLost,
    RemoteRun,
    RemoteState,
    SshTarget,
    control_dir_for,
    install_script,
    q,
    training_requirements,
)
from agent.jobs import JobCancelled
from agent.logs import tail
from pipelines.dataset.folder import MANIFEST, STATS, is_dataset
from pipelines.fsutil import write_json_atomic

T = TypeVar("T")
SOURCE_ITEMS = ("agent", "pipelines", "scripts", "pyproject.toml")
DATASET_EXCLUDES = ["--exclude=/cache/", "--exclude=/candidate/"]  # the token cache; a dataset update's work area
DATASET_FILES = (MANIFEST, STATS)
FETCH_EXCLUDES = ["--exclude=/checkpoints/", "--exclude=/trained/", "--exclude=/result.json", "--exclude=/.*lock"]

log = logging.getLogger(__name__)


class SshExecutor(Executor):
    """A ``[[gpu_boxes]]`` entry with ``kind = "ssh"``.

    ``detach``: when it returns true at the moment ``is_cancelled()`` does (the agent is shutting down),
    the remote job is left running and reattached by the next ``train()``; otherwise it is stopped.
    """

    def __init__(
        self,
        box: GpuBox,
        local_work_dir: Path,
        *,
        reconnect_timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        poll_s: float = 1.5,
        stop_grace_s: float = 30.0,
        detach: Callable[[], bool] | None = None,
        install_requirements: list[str] | None = None,
    ) -> None:
        self.box, self.name = box, box.name
        self.local_work_dir = Path(local_work_dir)
        self.local_work_dir.mkdir(parents=True, exist_ok=True)
        self.target = SshTarget(
            host=box.host, port=box.port, user=box.user, key_file=box.key_file,
            known_hosts=self.local_work_dir / "known_hosts", control_dir=control_dir_for(self.local_work_dir),
            connect_timeout_s=connect_timeout_s, session=secrets.token_hex(8),
        )  # fmt: skip
        self.reconnect_timeout_s, self.poll_s, self.stop_grace_s = reconnect_timeout_s, poll_s, stop_grace_s
        self.detach = detach
        self.install_requirements = install_requirements
        self.last_sync: dict[str, dict[str, int]] = {}
        """rsync statistics of the last copies (``source``, ``dataset``, ``fetch``)."""
        self._work, self._home, self._datasets = "", "", []

    # -- the Executor API ------------------------------------------------------------------------------------
    def check(self) -> str:
        try:
            self._hello()
            info, problem = self._probe_env()
        finally:
            self.target.close()
        where = f"{self.name} ({self.target.label})"
        if info is None and self.box.python:
            raise ExecutorError(self._python_problem(problem))
        if info is None:
            return f"{where}: reachable; the training environment is set up in {self._work}/venv at the first job"
        gpus = info["gpus"]
        return f"{where}: ready, python {info['python']}, torch {info['torch']}, {gpus} GPU{'s' * (gpus != 1)}"

    def cleanup_orphans(self, job_id: int) -> None:
        """Nothing to do: a job a dead agent left on the box keeps running, and ``train()`` reattaches to it."""

    def train(self, task: TrainTask, report: Report, is_cancelled: IsCancelled) -> dict[str, Any]:
        done = read_json(task.run_dir / "result.json")
        if done and done.get("status") == "done" and (task.run_dir / "model").is_dir():
            return done  # fetched before the agent went down
        try:
            self._hello()
            run = RemoteRun(self._work, task)
            state = self._poll(run)
            if state.alive:
                self._note(task, report, f"reattaching to the training job running on {self.name} (pid {state.pid})")
            elif not state.has_result:
                self._prepare(task, report, is_cancelled)
                if is_cancelled():
                    raise JobCancelled("cancelled before the training started")
                self._retry(lambda: self._start(run, task, report), task, report, is_cancelled, "starting the job")
            return self._follow_and_fetch(run, task, report, is_cancelled)
        finally:
            self.target.close()

    # -- connecting and preparing ----------------------------------------------------------------------------
    def _hello(self) -> None:
        """Connect (failing fast when the box is unreachable), make the work folder, learn what is there."""
        key = self.box.key_file
        if key and not Path(key).expanduser().is_file():
            raise ExecutorError(f"The SSH key {key} of box {self.name} does not exist. Fix `key_file` in its entry.")
        work = (self.box.work_dir or "").strip() or "~/.repopilot-box"
        expr = q(work) if work.startswith("/") else '"$HOME"/' + q(work.removeprefix("~").lstrip("/") or ".")
        out = self.target.run(
            f"{{\nW={expr}\n"
            'err=$(mkdir -p "$W/src" "$W/datasets" "$W/runs" "$W/jobs" 2>&1) || '
            '{ printf "NOWORK %s\\n" "$err"; exit 0; }\n'
            # internal code lives in these; the folder itself is made private too unless it is the home folder
            'set -- "$W/src" "$W/datasets" "$W/runs" "$W/jobs"\n'
            '[ "$(cd "$W" && pwd -P)" = "$(cd && pwd -P)" ] || set -- "$W" "$@"\n'
            'if [ -n "$({ find "$@" -maxdepth 0 -perm /077; find "$@" -mindepth 1 ! -type l -perm /077; } 2>/dev/null '
            '| head -n 1)" ]; then chmod go-rwx "$@"; chmod -R go-rwx "$W/src" "$W/datasets" "$W/runs" "$W/jobs"; '
            "echo OPENED; fi 2>/dev/null\n"
            'printf "WORK %s\\nHOME %s\\n" "$(cd "$W" && pwd -P)" "$HOME"\n'
            "command -v rsync >/dev/null 2>&1 || echo NORSYNC\n"
            'ls -t "$W/datasets" | sed "s/^/DATASET /"\n} </dev/null',
            timeout=self.target.connect_timeout_s + 30,
        )
        lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        if "NOWORK" in lines:
            raise ExecutorError(
                f"Cannot create the work folder {work} on {self.target.label}: {lines['NOWORK']}. "
                f"Set `work_dir` of box {self.name} to a writable folder."
            )
        if "NORSYNC" in out.split():
            raise ExecutorError(
                f"rsync is not installed on {self.target.label}. Install it there (apt-get install rsync)."
            )
        self._work, self._home = lines["WORK"], lines["HOME"]
        if "OPENED" in out.split():
            log.warning("made the work folder %s on %s readable by its user only", self._work, self.target.label)
        self._datasets = [line[8:] for line in out.splitlines() if line.startswith("DATASET ")]

    def _python(self) -> str:
        python = self.box.python or f"{self._work}/venv/bin/python"
        return f"{self._home}/{python[2:]}" if python.startswith("~/") else python

    def _probe_env(self) -> tuple[dict[str, Any] | None, str]:
        """(versions and GPU count, "") when the box's Python can train, else (None, what is wrong)."""
        src = f"{self._work}/src"
        out = self.target.run(
            f"{{ cd {q(src)} && PYTHONPATH={q(src)} {q(self._python())} -c {q(ENV_CHECK)} 2>&1; "
            'echo "REPOPILOT-EXIT $?"; } </dev/null',
            timeout=300,
        )
        info = next((json.loads(line[len(ENV_MARK) :]) for line in out.splitlines() if line.startswith(ENV_MARK)), None)
        if info is not None and not info["missing"]:
            return info, ""
        if info is not None:
            return None, "missing " + ", ".join(info["missing"])
        if "REPOPILOT-EXIT 127" in out:
            return None, f"{self._python()} does not exist"
        lines = [line for line in out.splitlines() if line.strip() and not line.startswith("REPOPILOT-EXIT")]
        return None, lines[-1] if lines else "it did not run"

    def _python_problem(self, problem: str) -> str:
        reqs = " ".join(shlex.quote(r) for r in self._requirements())
        return (
            f"The Python {self._python()} on box {self.name} cannot train: {problem}. Install repopilot's training "
            f"dependencies into it ({self._python()} -m pip install {reqs}), or clear `python` in the box's entry "
            f"so that repopilot sets up its own environment in {self._work}/venv."
        )

    def _requirements(self) -> list[str]:
        if self.install_requirements is not None:
            return list(self.install_requirements)
        return training_requirements(source_root())

    def _ensure_env(self, task: TrainTask, report: Report) -> dict[str, Any]:
        info, problem = self._probe_env()
        if info is not None:
            return info
        if self.box.python:
            raise ExecutorError(self._python_problem(problem))
        self._note(task, report, f"installing the training environment in {self._work}/venv on {self.name} ({problem})")
        last = {"t": 0.0}

        def on_line(line: str) -> None:
            self._append_log(task, line + "\n")
            if time.monotonic() - last["t"] > 2:
                last["t"] = time.monotonic()
                report({"message": f"installing training environment: {line.strip()[:100]}"})

        code = self.target.stream(install_script(self._work, self._requirements()), on_line)
        info, problem = self._probe_env()
        if code != 0 or info is None:
            raise ExecutorError(
                f"Setting up the training environment in {self._work}/venv on {self.target.label} failed "
                f"({problem or f'exit {code}'}); its output is in the job log. Fix it there, or set `python` of box "
                f"{self.name} to a Python that has torch, transformers and deepspeed."
            )
        return info

    def _prepare(self, task: TrainTask, report: Report, is_cancelled: IsCancelled) -> None:
        if not is_dataset(task.dataset_dir):
            raise ExecutorError(
                f"The dataset {task.dataset_dir} is missing or incomplete here.", title="Dataset problem"
            )
        root = source_root()
        items = [str(root / name) for name in SOURCE_ITEMS if (root / name).exists()]
        dest = self.target.remote(f"{self._work}/src/")
        args = ["-a", "--delete", "--exclude=__pycache__", "--exclude=*.pyc", *items, dest]
        self.last_sync["source"] = self._retry(
            lambda: self.target.rsync(args), task, report, is_cancelled, "copying code"
        )
        info = self._retry(lambda: self._ensure_env(task, report), task, report, is_cancelled, "checking Python")
        gpus = f"{info['gpus']} GPUs" if info["gpus"] else "no GPU (CPU training)"
        self._note(task, report, f"{self.name}: python {info['python']}, torch {info['torch']}, {gpus}")
        self._sync_dataset(task, report, is_cancelled)

    def _sync_dataset(self, task: TrainTask, report: Report, is_cancelled: IsCancelled) -> None:
        """Shards and index (content-addressed: an equal name is an equal file, hard-linked from the versions
        already on the box), then the top-level files by checksum (same size and second, other content)."""
        name = task.dataset_dir.name
        links = [f"--link-dest=../{d}" for d in self._datasets if d != name and not d.endswith(".tmp")][:10]
        dest = self.target.remote(f"{self._work}/datasets/{name}/")
        folders = ["-a", "--delete", *DATASET_EXCLUDES, *links, "--include=/*/", "--exclude=/*", f"{task.dataset_dir}/"]
        tops = sorted(str(p) for p in task.dataset_dir.iterdir() if p.is_file() and p.name in DATASET_FILES)
        report({"message": f"copying dataset {name} to {self.name}"})
        stats = self._retry(lambda: self.target.rsync([*folders, dest]), task, report, is_cancelled, "copying data")
        more = self._retry(lambda: self.target.rsync(["-a", "-c", *tops, dest]), task, report, is_cancelled, "copying")
        self.last_sync["dataset"] = {key: stats[key] + more[key] for key in stats}
        copied, sent = stats["regular_files"] + more["regular_files"], stats["literal_bytes"] + more["literal_bytes"]
        self._note(task, report, f"dataset {name}: {copied} files copied ({sent} bytes)")

    # -- the remote job --------------------------------------------------------------------------------------
    def _start(self, run: RemoteRun, task: TrainTask, report: Report) -> None:
        """Start the job detached (unless it already runs: a retried start must not launch two)."""
        cli = [self._python(), "-m", "agent.cli"]
        fresh = train_command(
            replace(task, dataset_dir=Path(run.dataset), run_dir=Path(run.run_dir)), self.box.gpus, cli
        )
        resume = [*cli, "train", "--resume", "-o", run.run_dir, "--json"]
        out = self.target.run(run.start_script(self._python(), fresh, resume), timeout=60)
        word, _, rest = out.partition(" ")
        if word == "RUNNING":
            self._note(task, report, f"the job already runs on {self.name} (pid {rest.strip()}): reattaching")
        elif word == "STARTED":
            self._note(task, report, f"started the training on {self.name} (pid {rest.strip()}, log {run.job}.log)")
        else:
            raise ExecutorError(
                f"The training did not start on {self.target.label}:\n{out[-2000:]}", title="Training failed"
            )

    def _poll(self, run: RemoteRun, progress_offset: int = 0, log_offset: int = 0, cap: int = 0) -> RemoteState:
        script = run.poll_script(progress_offset, log_offset, cap)
        return run.parse_poll(self.target.run_raw(script, timeout=60), progress_offset, log_offset)

    def _follow_and_fetch(self, run: RemoteRun, task: TrainTask, report: Report, is_cancelled: IsCancelled) -> dict:
        offsets = {"progress": 0, "log": self._log_offset(task)}
        while True:
            if is_cancelled():
                self._cancel(run, task, report)
            state = self._retry(
                lambda: self._poll(run, offsets["progress"], offsets["log"], cap=1 << 20),
                task, report, is_cancelled, "following the job", started=True,
            )  # fmt: skip
            if state.log_size < offsets["log"]:  # the log on the box was replaced: start over
                offsets["log"] = 0
                continue
            offsets["progress"] += report_events(state.progress, report)
            if state.log:
                self._append_log(task, state.log.decode(errors="replace"))
                offsets["log"] += len(state.log)
                self._save_log_offset(task, offsets["log"])
            if not state.alive and not state.more:
                break
            if not state.more:
                time.sleep(self.poll_s)
        if not state.has_result:
            code = (
                "no exit code (killed, or the box restarted)" if state.exit_code is None else f"code {state.exit_code}"
            )
            raise ExecutorError(
                f"`repopilot train` on {self.name} ended with {code} and no result. Retry the job to resume it from "
                f"its last checkpoint. The last lines of its log ({run.job}.log):\n{tail(self._log_path(task), 15)}",
                title="Training failed",
            )
        report({"message": f"fetching the trained model from {self.name}"})
        return self._retry(
            lambda: self._fetch(run, task), task, report, is_cancelled, "fetching the model", started=True
        )

    def _cancel(self, run: RemoteRun, task: TrainTask, report: Report) -> None:
        """Stop the remote job (or, when the agent is shutting down and ``detach`` says so, leave it running)."""
        if self.detach and self.detach():
            raise JobCancelled(f"the agent stopped following; the job keeps running on {self.name}")
        try:
            self._retry(lambda: self._stop(run), task, report, lambda: False, "stopping", limit_s=60)
        except ExecutorError as exc:
            raise JobCancelled(f"cancelled; the training on {self.name} may still run: {exc.message}") from None
        raise JobCancelled("cancelled while running")

    def _stop(self, run: RemoteRun) -> str:
        """SIGTERM the job's process group (training checkpoints), SIGKILL it after the grace period."""
        return self.target.run(run.stop_script(self.stop_grace_s), timeout=self.stop_grace_s + 60).strip()

    def _fetch(self, run: RemoteRun, task: TrainTask) -> dict[str, Any]:
        """The run folder here (no checkpoints), then result.json with local paths, written last."""
        task.run_dir.mkdir(parents=True, exist_ok=True)
        source = self.target.remote(f"{run.run_dir}/")
        self.last_sync["fetch"] = self.target.rsync(["-a", *FETCH_EXCLUDES, source, f"{task.run_dir}/"])
        result = json.loads(self.target.run(f"cat {q(run.run_dir + '/result.json')} </dev/null"))
        result = localize(result, run.run_dir, task.run_dir)
        write_json_atomic(task.run_dir / "result.json", result)
        return result

    # -- reconnecting, logging ------------------------------------------------------------------------------
    def _retry(
        self,
        action: Callable[[], T],
        task: TrainTask,
        report: Report,
        is_cancelled: IsCancelled,
        doing: str,
        *,
        started: bool = False,
        limit_s: float | None = None,
    ) -> T:
        """``action()``, retried with back-off while the connection is lost, for up to ``reconnect_timeout_s``."""
        lost_at, delay, limit = None, 1.0, self.reconnect_timeout_s if limit_s is None else limit_s
        while True:
            try:
                value = action()
            except ConnectionLost as exc:
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    still = "; the job keeps running there" if started else ""
                    self._note(task, report, f"lost the connection to {self.target.label} ({exc.message}){still}")
                if now - lost_at >= limit:
                    then = " The job still runs there; retry the job to reattach to it." if started else ""
                    raise ExecutorError(
                        f"Lost the connection to {self.target.label} for {now - lost_at:.0f} s while {doing}: "
                        f"{exc.message}{then}"
                    ) from None
                if is_cancelled():
                    raise JobCancelled(f"cancelled while {self.target.label} was unreachable") from None
                time.sleep(min(delay, max(0.1, lost_at + limit - now)))
                delay = min(delay * 2, 15.0)
                continue
            if lost_at is not None:
                self._note(task, report, f"reconnected to {self.target.label}")
            return value

    def _note(self, task: TrainTask, report: Report, message: str) -> None:
        report({"message": message})
        self._append_log(task, f"[{self.name}] {message}\n")

    def _log_path(self, task: TrainTask) -> Path:
        return task.log_file or task.run_dir.with_suffix(".log")

    def _append_log(self, task: TrainTask, text: str) -> None:
        path = self._log_path(task)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def _offset_file(self, task: TrainTask) -> Path:
        return self.local_work_dir / "jobs" / f"{self.name}-{task.job_id}.log-offset"

    def _log_offset(self, task: TrainTask) -> int:
        try:
            return int(self._offset_file(task).read_text())
        except (OSError, ValueError):
            return 0

    def _save_log_offset(self, task: TrainTask, offset: int) -> None:
        path = self._offset_file(task)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(offset))


def report_events(data: bytes, report: Report) -> int:
    """Report the complete progress.jsonl lines in ``data``; how many bytes they took."""
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        try:
            progress = train_progress(json.loads(line))
        except ValueError:
            continue
        if progress:
            report(progress)
    return end


def localize(result: dict[str, Any], remote_run: str, local_run: Path) -> dict[str, Any]:
    """``result`` with the paths that point into the remote run folder pointing into the local one."""
    out = dict(result)
    for key in ("run_dir", "model", "base_model"):
        value = out.get(key)
        if isinstance(value, str) and (value == remote_run or value.startswith(remote_run + "/")):
            out[key] = str(local_run) + value[len(remote_run) :]
    return out


def source_root() -> Path:
    """This checkout (or install): the folder holding the ``agent`` package."""
    return Path(agent.__file__).resolve().parents[1]
