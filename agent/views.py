"""The agent's read side: store rows and files turned into the API's dataclasses (nothing here writes)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from agent import __version__
from agent.api.models import AgentState, AgentStatus, DatasetInfo, ErrorInfo, JobInfo, ModelInfo, RepoInfo
from agent.jobs import Job, JobKind, JobState
from agent.paths import AgentPaths
from agent.retrain import decide
from agent.services import Services
from agent.store import Model, Repo
from agent.watcher import find_git_dir, resolve
from pipelines.dataset.folder import read_stats
from pipelines.errors import InputError

log = logging.getLogger(__name__)


RUNNING_STATE = {
    JobKind.DATASET: AgentState.INDEXING,
    JobKind.TRAIN: AgentState.TRAINING,
    JobKind.EVAL: AgentState.EVALUATING,
    JobKind.CONVERT: AgentState.CONVERTING,
    JobKind.DEPLOY: AgentState.DEPLOYING,
}


def agent_status(svc: Services, last_error: ErrorInfo | None, server_running: bool) -> AgentStatus:
    """The state at a glance (what the tray icon shows)."""
    running = svc.queue.list(JobState.RUNNING)
    queued = svc.queue.list(JobState.QUEUED)
    serving = svc.store.current_deployment()
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
    if svc.watcher.paused and state == AgentState.IDLE:
        detail += " (watching paused)"
    return AgentStatus(
        state=state,
        detail=detail.splitlines()[0][:300],
        progress=progress,
        paused=svc.watcher.paused,
        repos=len(svc.store.list_repos()),
        jobs_queued=len(queued),
        running_job=running[0].id if running else None,
        serving_model=serving.model if serving else None,
        server_running=server_running,
        last_error=last_error,
        pid=os.getpid(),
        version=__version__,
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def repo_info(svc: Services, repo: Repo) -> RepoInfo:
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
    stats = _latest_stats(svc).get("repos", {}).get(repo.name, {})
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


def job_info(paths: AgentPaths, job: Job, with_losses: bool = False) -> JobInfo:
    error = ErrorInfo(job.error_title, job.error_message or "", job.id) if job.error_title else None
    losses: list[list[float]] = []
    if with_losses and job.kind == JobKind.TRAIN:
        losses = _losses(paths.runs / f"v{job.id}" / "progress.jsonl")
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


def model_info(model: Model, serving: str | None) -> ModelInfo:
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


def dataset_info(svc: Services) -> DatasetInfo:
    latest = svc.latest_dataset()
    stats = _latest_stats(svc)
    decision, (lines, files) = decide(svc, dt.datetime.now())
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


def _latest_stats(svc: Services) -> dict[str, Any]:
    latest = svc.latest_dataset()
    if not latest:
        return {}
    return read_stats(Path(latest["snapshot"]))


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
