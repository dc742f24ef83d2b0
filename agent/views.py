"""Read-side helpers of the agent: store rows and files turned into the API's dataclasses, change counts
for the retrain policy, and pruning of old models."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import StoreError
from agent.jobs import Job, JobKind, JobState
from agent.models import AgentState, AgentStatus, DatasetInfo, ErrorInfo, JobInfo, ModelInfo, RepoInfo
from agent.policy import models_to_prune, should_retrain
from agent.store import Model, Repo
from agent.watcher import find_git_dir, resolve
from pipelines.dataset.folder import read_stats
from pipelines.errors import InputError

if TYPE_CHECKING:
    from agent.core import Agent

log = logging.getLogger(__name__)
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's well-known empty tree


RUNNING_STATE = {
    JobKind.DATASET: AgentState.INDEXING,
    JobKind.TRAIN: AgentState.TRAINING,
    JobKind.EVAL: AgentState.EVALUATING,
    JobKind.CONVERT: AgentState.CONVERTING,
    JobKind.DEPLOY: AgentState.DEPLOYING,
}


def agent_status(agent: Agent, last_error: ErrorInfo | None) -> AgentStatus:
    """The state at a glance (what the tray icon shows)."""
    running = agent.queue.list(JobState.RUNNING)
    queued = agent.queue.list(JobState.QUEUED)
    serving = agent.store.current_deployment()
    progress, state, detail = None, AgentState.IDLE, "idle"
    if running:
        job = running[0]
        state = RUNNING_STATE[job.kind]
        info = job.progress or {}
        progress = info.get("fraction")
        detail = f"{job.kind.value} (job {job.id})" + (f": {info['message']}" if info.get("message") else "")
        if info.get("eta_s") is not None:
            detail += f", ETA {_duration(info['eta_s'])}"
    elif last_error is not None:
        state, detail = AgentState.ERROR, f"{last_error.title}: {last_error.message}"
    elif serving:
        detail = f"serving {serving.model}"
    if agent.watcher.paused and state == AgentState.IDLE:
        detail += " (watching paused)"
    return AgentStatus(
        state=state,
        detail=detail.splitlines()[0][:300],
        progress=progress,
        paused=agent.watcher.paused,
        repos=len(agent.store.list_repos()),
        jobs_queued=len(queued),
        running_job=running[0].id if running else None,
        serving_model=serving.model if serving else None,
        server_running=agent.server.running(),
        last_error=last_error,
        pid=os.getpid(),
        version=__version__,
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def repo_info(agent: Agent, repo: Repo) -> RepoInfo:
    head, problem = None, None
    path = Path(repo.path)
    git_dir = find_git_dir(path) if path.exists() else None
    if not path.exists():
        problem = f"{repo.path} no longer exists"
    elif git_dir is None:
        problem = f"{repo.path} is no longer a git repository"
    else:
        head = resolve(git_dir, repo.ref)
        if head is None:
            problem = f"ref {repo.ref} not found"
    stats = _latest_stats(agent).get("repos", {}).get(repo.name, {})
    return RepoInfo(
        name=repo.name,
        path=repo.path,
        ref=repo.ref,
        include=list(repo.include),
        exclude=list(repo.exclude),
        last_indexed_commit=repo.last_indexed_commit,
        head_commit=head,
        problem=problem,
        files_kept=stats.get("files_kept", stats.get("files")),
        bytes_kept=stats.get("bytes_kept"),
    )


def job_info(agent: Agent, job: Job, with_losses: bool = False) -> JobInfo:
    error = ErrorInfo(job.error_title, job.error_message or "", job.id) if job.error_title else None
    losses: list[list[float]] = []
    if with_losses and job.kind == JobKind.TRAIN:
        losses = _losses(agent.paths.runs / f"v{job.id}" / "progress.jsonl")
    return JobInfo(
        id=job.id,
        kind=job.kind.value,
        state=job.state.value,
        params=job.params,
        depends_on=list(job.depends_on),
        resource=job.resource,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=error,
        result=job.result,
        progress=job.progress,
        losses=losses,
    )


def _losses(progress: Path) -> list[list[float]]:
    points: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for line in progress.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "log" and "loss" in event:
                    points[int(event["step"])] = float(event["loss"])
    return [[step, loss] for step, loss in sorted(points.items())]


def model_info(agent: Agent, model: Model, serving: str | None) -> ModelInfo:
    run_dir = Path(model.run_dir)
    train = _read_json(run_dir / "result.json")
    report = _read_json(Path(model.eval_report)) if model.eval_report else None
    return ModelInfo(
        version=model.version,
        parent=model.parent,
        dataset_version=model.dataset_version,
        status=model.status.value,
        created_at=model.created_at,
        serving=model.version == serving,
        run_dir=str(run_dir),
        model_dir=str(run_dir / "model"),
        converted_dirs=dict(model.converted_dirs),
        train=train,
        eval=report or None,
    )


def dataset_info(agent: Agent) -> DatasetInfo:
    latest = agent.latest_dataset()
    stats = _latest_stats(agent)
    lines, files = changes_since_serving(agent) if latest else (0, 0)
    models = agent.store.list_models()
    last = max((m.created_at for m in models), default=None)
    decision = should_retrain(
        (lines, files), dt.datetime.fromtimestamp(last) if last else None, dt.datetime.now(), agent.config.policy
    )
    return DatasetInfo(
        version=latest["dataset_version"] if latest else None,
        path=latest["snapshot"] if latest else None,
        files_kept=stats.get("files_kept", 0),
        bytes_kept=stats.get("bytes_kept", 0),
        files_dropped=stats.get("files_dropped", 0),
        dropped=stats.get("dropped", {}),
        languages={k: v.get("files", 0) if isinstance(v, dict) else v for k, v in stats.get("languages", {}).items()},
        redactions=stats.get("redactions", {}),
        changed_files_since_serving=files,
        changed_lines_since_serving=lines,
        retrain_decision=decision.reason if latest else "no dataset yet",
    )


def _latest_stats(agent: Agent) -> dict[str, Any]:
    latest = agent.latest_dataset()
    if not latest:
        return {}
    return read_stats(Path(latest["snapshot"]))


def changes_since_serving(agent: Agent) -> tuple[int, int]:
    """(changed lines, changed files) between the serving model's data and the latest dataset, per git."""
    versions = {v.version: v for v in agent.store.list_dataset_versions()}
    latest = agent.latest_dataset()
    if not latest or latest["dataset_version"] not in versions:
        return 0, 0
    now_commits = versions[latest["dataset_version"]].stats.get("commits", {})
    base_commits: dict[str, str] = {}
    serving = agent.store.current_deployment()
    if serving:
        with contextlib.suppress(StoreError):
            model = agent.store.get_model(serving.model)
            if model.dataset_version in versions:
                base_commits = versions[model.dataset_version].stats.get("commits", {})
    repos = {r.name: r for r in agent.store.list_repos()}
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


def prune_models(agent: Agent) -> list[str]:
    """Delete models beyond ``[policy] keep_models`` (never the serving one or one a pending job needs)."""
    serving = agent.store.current_deployment()
    models = agent.store.list_models()
    pending = {
        job.params.get("model")
        for state in (JobState.QUEUED, JobState.RUNNING)
        for job in agent.queue.list(state)
        if job.kind == JobKind.DEPLOY
    }
    candidates = [
        (m.version, dt.datetime.fromtimestamp(m.created_at), bool(serving and serving.model == m.version))
        for m in models
    ]
    removed = []
    for version in models_to_prune(candidates, agent.config.policy.keep_models):
        if version in pending:
            continue
        model = agent.store.get_model(version)
        agent.store.remove_model(version)  # forget first: a half-deleted folder is never offered for deploy
        for folder in [Path(model.run_dir), agent.paths.evals(version), *map(Path, model.converted_dirs.values())]:
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(version)
        log.info("pruned model %s", version)
    keep = {m.dataset_version for m in agent.store.list_models()}
    latest = agent.latest_dataset()
    if latest:
        keep.add(latest["dataset_version"])
    snapshots = agent.paths.datasets / "snapshots"
    if removed and snapshots.is_dir():
        for snapshot in snapshots.iterdir():
            if snapshot.name not in keep and not snapshot.name.endswith(".tmp"):
                shutil.rmtree(snapshot, ignore_errors=True)
    return removed


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A repository's name: it becomes part of paths, file names and dataset URLs."""


def repo_name(asked: str | None, folder: Path, taken: set[str]) -> str:
    """The name a new repository gets: ``asked`` if it is a valid name, else (None) one made from the folder's
    name (other characters become ``-``) that no repository in ``taken`` has."""
    if asked is not None:
        if not REPO_NAME.fullmatch(asked):
            raise InputError(
                f"{asked!r} cannot be a repository name: use letters, digits, '.', '_' and '-' (up to 64, starting "
                "with a letter or digit).",
                title="Invalid repository name",
            )
        return asked
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name.removesuffix(".git")).strip("-._")[:64] or "repo"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name
