"""When to retrain and what a retrain is: the policy applied to the agent's state (with what changed in the
watched repositories since the serving model's data, per git), the chain of jobs it queues, the arguments
training gets, and what a new model is compared with."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import subprocess
from pathlib import Path
from typing import Any

from agent.config import TrainingConfig
from agent.errors import StoreError
from agent.executors.base import read_json
from agent.jobs import GATE_PASSED, Job, JobKind, JobQueue, JobSpec, JobState
from agent.policy import Decision, should_retrain
from agent.services import Services
from agent.watcher import find_git_dir

log = logging.getLogger(__name__)
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's well-known empty tree

RESOURCES = {
    JobKind.DATASET: "dataset",
    JobKind.EVAL: "eval",
    JobKind.CONVERT: "convert",
    JobKind.DEPLOY: "deploy",
}


def apply_policy(svc: Services, now: dt.datetime) -> Decision | None:
    """Queue a retrain chain when the policy says so (the caller holds the agent's policy lock)."""
    if svc.watcher.paused or pending_retrain(svc.queue) is not None:
        return None
    dataset = svc.latest_dataset()
    if dataset is None:
        return None
    version = dataset["dataset_version"]
    if any(m.dataset_version == version for m in svc.store.list_models()):
        return None  # a model was already trained on this data (deployed or rejected)
    trains = svc.queue.list(kind=JobKind.TRAIN)
    if trains and trains[-1].params.get("dataset_version") == version and trains[-1].state != JobState.DONE:
        return None  # the last attempt on this data failed: the user retries it
    decision, _ = decide(svc, now)
    if decision.retrain:
        jobs = svc.queue.chain(retrain_steps(svc, {"dataset_version": version, "reason": decision.reason}))
        log.info("retrain queued (job %s): %s", jobs[0].id, decision.reason)
        svc.changed("job", id=jobs[0].id, state="queued", message=decision.reason)
        svc.kick()
    return decision


def decide(svc: Services, now: dt.datetime) -> tuple[Decision, tuple[int, int]]:
    """The policy's answer now, and what it was given: (changed lines, changed files) since the serving model."""
    models = svc.store.list_models()
    last = max((m.created_at for m in models), default=None)
    changes = changes_since_serving(svc)
    last_at = dt.datetime.fromtimestamp(last) if last else None
    return should_retrain(changes, last_at, now, svc.config.policy), changes


def retrain_steps(svc: Services, train_params: dict[str, Any]) -> list[JobSpec]:
    train_executor = svc.executor(train_params.get("box"))
    return [
        JobSpec(JobKind.TRAIN, {**train_params, "box": train_executor.name}, train_executor.resource),
        JobSpec(JobKind.EVAL, {}, RESOURCES[JobKind.EVAL]),
        JobSpec(JobKind.CONVERT, {}, RESOURCES[JobKind.CONVERT], run_if=GATE_PASSED),
        JobSpec(JobKind.DEPLOY, {"reason": "retrain"}, RESOURCES[JobKind.DEPLOY], run_if=GATE_PASSED),
    ]


def pending_retrain(queue: JobQueue) -> Job | None:
    for state in (JobState.RUNNING, JobState.QUEUED):
        for job in queue.list(state):
            if job.kind in (JobKind.TRAIN, JobKind.EVAL, JobKind.CONVERT):
                return job
            if job.kind == JobKind.DATASET and job.params.get("reason") == "retrain now":
                return job
    return None


def train_args(t: TrainingConfig) -> list[str]:
    args = ["--base-model", t.base_model, "--micro-batch-size", str(t.batch_size), "--grad-accum", "1"]
    args += ["--lora" if t.lora else "--no-lora"]
    if t.max_steps:
        args += ["--max-steps", str(t.max_steps)]
    if t.learning_rate:
        args += ["--learning-rate", str(t.learning_rate)]
    return [*args, *t.train_args]


def baseline_for(svc: Services, version: str, run_dir: Path) -> tuple[Path, str]:
    """What a new model is compared with: the serving model, else the base it was trained from."""
    serving = svc.store.current_deployment()
    if serving and serving.model != version:
        with contextlib.suppress(StoreError):
            model = svc.store.get_model(serving.model)
            if (Path(model.run_dir) / "model").is_dir():
                return Path(model.run_dir) / "model", serving.model
    result = read_json(run_dir / "result.json") or {}
    base = result.get("base_model") or svc.config.training.base_model
    return Path(base) if Path(base).exists() else Path(str(base)), "the base model"


def changes_since_serving(svc: Services) -> tuple[int, int]:
    """(changed lines, changed files) between the serving model's data and the latest dataset, per git."""
    versions = {v.version: v for v in svc.store.list_dataset_versions()}
    latest = svc.latest_dataset()
    if not latest or latest["dataset_version"] not in versions:
        return 0, 0
    now_commits = versions[latest["dataset_version"]].stats.get("commits", {})
    base_commits: dict[str, str] = {}
    serving = svc.store.current_deployment()
    if serving:
        with contextlib.suppress(StoreError):
            model = svc.store.get_model(serving.model)
            if model.dataset_version in versions:
                base_commits = versions[model.dataset_version].stats.get("commits", {})
    repos = {r.name: r for r in svc.store.list_repos()}
    lines = files = 0
    for name, commit in now_commits.items():
        if not commit or name not in repos:
            continue
        old = base_commits.get(name) or EMPTY_TREE
        if old == commit:
            continue
        changed_lines, changed_files = _shortstat(repos[name].path, old, commit)
        lines, files = lines + changed_lines, files + changed_files
    return lines, files


def _shortstat(path: str, old: str, new: str) -> tuple[int, int]:
    git_dir = find_git_dir(Path(path))
    if git_dir is None:
        return 0, 0
    proc = subprocess.run(
        ["git", "--git-dir", str(git_dir), "diff", "--shortstat", old, new],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:  # e.g. history rewritten: count it as a full change
        proc = subprocess.run(
            ["git", "--git-dir", str(git_dir), "diff", "--shortstat", EMPTY_TREE, new],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    numbers = [int(part.split()[0]) for part in proc.stdout.strip().split(",") if part.strip()]
    files = numbers[0] if numbers else 0
    return sum(numbers[1:]), files
