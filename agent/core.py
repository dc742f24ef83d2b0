"""The agent: one plain-Python API object that owns all state and side effects.

Methods take plain values and return the dataclasses of :mod:`agent.api.models`; failures raise a
:class:`~pipelines.errors.RepopilotError` (title + message). The HTTP binding (:mod:`agent.api`), the
CLI and the tray app are clients of this object and add no logic of their own.

Inside: the SQLite store and job queue, the repo watcher, worker threads that run jobs (see
:mod:`agent.steps`), a policy timer, the completion server (:mod:`agent.completion_server`) and an event log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from agent import retrain
from agent.api.models import (
    AgentStatus,
    DatasetInfo,
    ErrorInfo,
    EventBatch,
    JobInfo,
    ModelInfo,
    RepoInfo,
    ServerInfo,
)
from agent.completion_server import ServerControl
from agent.config import Config, config_path, config_to_dict, load_config, merge_settings, save_config
from agent.errors import AgentError, StoreError
from agent.events import EventLog
from agent.executors.base import stop_orphan
from agent.jobs import Job, JobCancelled, JobKind, JobQueue, JobSpec, JobState
from agent.logs import log_to, tail
from agent.paths import AgentPaths
from agent.policy import Decision
from agent.retrain import RESOURCES
from agent.services import Services
from agent.steps import STEPS, StepContext, disk_full
from agent.store import Repo, Store
from agent.views import agent_status, dataset_info, job_info, model_info, repo_info, repo_name
from agent.watcher import RepoWatch, Watcher, default_ref, find_git_dir, resolve
from pipelines.errors import InputError, RepoError, RepopilotError
from pipelines.fsutil import make_private

log = logging.getLogger(__name__)


class Agent:
    """The daemon's API. ``start()`` brings it to life; every other method may be called from any thread."""

    def __init__(self, config: Config | None = None, config_file: str | Path | None = None, workers: int = 2) -> None:
        self.config_file = config_path(config_file)
        config = config or load_config(self.config_file)
        self.paths = AgentPaths(Path(config.agent.data_dir).expanduser())
        self.paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.paths.jobs.mkdir(exist_ok=True, mode=0o700)
        self.store = Store(self.paths.state_db)
        self.queue = JobQueue(self.store)
        self.events = EventLog()
        self.watcher = Watcher(self._on_repo_change, debounce_s=1.0, poll_interval_s=5.0, on_error=self._on_watch_error)
        self.services = Services(
            config, self.config_file, self.paths, self.store, self.queue, self.events, self.watcher
        )
        self.server = ServerControl(self.services)
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stopping = self.services.stopping
        self._wake = self.services.wake
        self._lock_handle: Any = None
        self._last_error: ErrorInfo | None = None
        self._policy_lock = threading.Lock()
        self._started = False
        self._active: set[int] = set()  # jobs whose step runs in this process right now

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the data folder, recover what a dead agent left, start watching and working."""
        self._lock_handle = open(self.paths.lock_file, "a+")  # noqa: SIM115 - held while the agent lives
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            raise AgentError(
                f"Another agent already uses {self.paths.root}. Stop it first (`repopilot agent stop`).",
                title="Agent already running",
            ) from None
        log_to(self.paths.log_file)
        opened = make_private(self.paths.root)  # it holds internal code: datasets, checkpoints, models
        if opened:
            log.warning("made %d files and folders in %s readable by this user only", opened, self.paths.root)
        for job in self.queue.recover_after_restart():
            stop_orphan(self.paths.job_pid(job.id), job.id)
            if job.kind == JobKind.TRAIN:
                with contextlib.suppress(RepopilotError):
                    self.services.executor(job.params.get("box")).cleanup_orphans(job.id)
            log.info("job %s (%s) was interrupted and is re-queued", job.id, job.kind.value)
        for repo in self.store.list_repos():
            self._watch(repo)
            git_dir = find_git_dir(Path(repo.path))
            head = resolve(git_dir, repo.ref) if git_dir else None
            if head and head != repo.last_indexed_commit:
                self._queue_dataset(f"{repo.name} moved while the agent was stopped")
        if self.paths.paused_flag.exists():
            self.watcher.pause()
        self.watcher.start()
        self._stopping.clear()
        for i in range(self._workers):
            self._spawn(self._work, f"agent-worker-{i}")
        self._spawn(self._policy_timer, "agent-policy")
        self._started = True
        log.info("agent started (pid %s, data %s)", os.getpid(), self.paths.root)
        self.events.publish("status", {"message": "agent started"})
        self.check_for_changes()

    def stop(self) -> None:
        """Stop watching and working. Running jobs are stopped (training checkpoints) and resume at next start."""
        self._stopping.set()
        self.watcher.stop()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads.clear()
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None
        self._started = False
        self.store.close()
        log.info("agent stopped")

    @property
    def config(self) -> Config:
        """The configuration in force (replaced by :meth:`update_settings`)."""
        return self.services.config

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- status and events ------------------------------------------------------------------------------------
    def status(self) -> AgentStatus:
        """The state at a glance (what the tray icon shows)."""
        return agent_status(self.services, self._last_error, self.server.running())

    def wait_events(self, since: int = 0, timeout: float = 25.0) -> EventBatch:
        """Events after ``since`` (waits up to ``timeout`` s for one); pass the batch's cursor next time."""
        return self.events.wait(since, min(max(timeout, 0.0), 60.0))

    def clear_error(self) -> AgentStatus:
        """Forget the last error (the tray's "dismiss")."""
        self._last_error = None
        self.changed("status")
        return self.status()

    def agent_log(self, lines: int = 200) -> str:
        return tail(self.paths.log_file, lines)

    # -- repos ------------------------------------------------------------------------------------------------
    def add_repo(
        self,
        path: str,
        name: str | None = None,
        ref: str | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> RepoInfo:
        """Watch a git repository (working tree or bare) and index it now."""
        folder = Path(path).expanduser().resolve()
        if not folder.exists():
            raise RepoError(f"{folder} does not exist. Pick the folder of a git repository.")
        git_dir = find_git_dir(folder)
        if git_dir is None:
            raise RepoError(f"{folder} is not a git repository (no .git). Pick the folder you cloned.")
        ref = ref or default_ref(git_dir)
        if resolve(git_dir, ref) is None:
            raise RepoError(f"{folder} has no commit on {ref!r}. Commit something first, or pick another ref.")
        name = repo_name(name, folder, {r.name for r in self.store.list_repos()})
        if any(r.path == str(folder) and r.ref == ref for r in self.store.list_repos()):
            raise InputError(f"{folder} ({ref}) is already watched.", title="Already watched")
        repo = self.store.add_repo(
            Repo(name, str(folder), ref, list(include or []), list(exclude or []), added_at=time.time())
        )
        if self._started:
            self._watch(repo)
        self.changed("repo", name=name, action="added")
        self._queue_dataset(f"repository {name} added")
        return repo_info(self.services, repo)

    def remove_repo(self, name: str) -> None:
        """Stop watching ``name``; the dataset is rebuilt without it."""
        self.store.get_repo(name)
        self.watcher.remove(name)
        self.store.remove_repo(name)
        self.changed("repo", name=name, action="removed")
        if self.store.list_repos():
            self._queue_dataset(f"repository {name} removed")

    def list_repos(self) -> list[RepoInfo]:
        return [repo_info(self.services, r) for r in self.store.list_repos()]

    def dataset(self) -> DatasetInfo:
        """The current dataset, its stats, and what the retrain policy thinks of it."""
        return dataset_info(self.services)

    def pause_watching(self) -> None:
        self.paths.paused_flag.touch()
        self.watcher.pause()
        self.changed("status", message="watching paused")

    def resume_watching(self) -> None:
        self.paths.paused_flag.unlink(missing_ok=True)
        self.watcher.resume()
        self.changed("status", message="watching resumed")
        self.check_for_changes()

    def check_for_changes(self) -> None:
        """Look at every watched ref now (as a commit would) and apply the retrain policy."""
        if self._started and not self.watcher.paused:
            self.watcher.check_now()
        self.apply_policy()

    # -- jobs -------------------------------------------------------------------------------------------------
    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[JobInfo]:
        """Jobs, newest first."""
        jobs = self.queue.list(state)
        return [job_info(self.paths, j) for j in reversed(jobs[-limit:])] if limit > 0 else []

    def get_job(self, job_id: int) -> JobInfo:
        return job_info(self.paths, self.queue.get(job_id), with_losses=True)

    def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job (a running one is stopped) and the jobs waiting on it."""
        job = self.queue.cancel(job_id)
        self.changed("job", id=job_id, state=job.state.value)
        return job_info(self.paths, job)

    def retry_job(self, job_id: int) -> JobInfo:
        """Run a failed, cancelled or interrupted job again (and the jobs it took down with it)."""
        deadline = time.monotonic() + 60
        while job_id in self._active and time.monotonic() < deadline:
            time.sleep(0.2)  # a cancelled job's processes are still stopping
        if job_id in self._active:
            raise AgentError(f"job {job_id} is still stopping; try again in a minute.", title="Job still stopping")
        job = self.queue.retry(job_id)
        self.changed("job", id=job_id, state=job.state.value)
        self.kick()
        return job_info(self.paths, job)

    def job_log(self, job_id: int, lines: int = 200) -> str:
        self.queue.get(job_id)
        return tail(self.paths.job_log(job_id), lines)

    def retrain_now(self) -> list[JobInfo]:
        """Update the dataset, then train, evaluate, convert and deploy, whatever the policy says."""
        pending = retrain.pending_retrain(self.queue)
        if pending is not None:
            raise AgentError(
                f"A retrain is already queued or running (job {pending.id}, {pending.kind.value}).",
                title="Retrain already pending",
            )
        if not self.store.list_repos():
            raise AgentError("Add a repository first (`repopilot repo add PATH`).", title="Nothing to train on")
        jobs = self.queue.chain(
            [
                JobSpec(JobKind.DATASET, {"reason": "retrain now"}, RESOURCES[JobKind.DATASET]),
                *retrain.retrain_steps(self.services, {}),
            ]
        )
        self.changed("job", id=jobs[0].id, state="queued", message="retrain requested")
        self.kick()
        return [job_info(self.paths, j) for j in jobs]

    # -- models and serving -----------------------------------------------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        """Models, newest first."""
        serving = self.store.current_deployment()
        models = sorted(self.store.list_models(), key=lambda m: m.created_at, reverse=True)
        return [model_info(m, serving.model if serving else None) for m in models]

    def get_model(self, version: str) -> ModelInfo:
        serving = self.store.current_deployment()
        return model_info(self.store.get_model(version), serving.model if serving else None)

    def deploy_model(self, version: str) -> JobInfo:
        """Queue serving ``version`` (any kept model: this is also how to roll back to an older one)."""
        model = self.store.get_model(version)
        if not (Path(model.run_dir) / "model").is_dir():
            raise AgentError(f"model {version}'s files are gone ({model.run_dir}); pick another.", title="Model gone")
        job = self.queue.enqueue(JobKind.DEPLOY, {"model": version, "reason": "manual"}, (), RESOURCES[JobKind.DEPLOY])
        self.changed("job", id=job.id, state="queued")
        self.kick()
        return job_info(self.paths, job)

    def rollback(self) -> JobInfo:
        """Queue serving the model that served before the current one."""
        deployments = self.store.list_deployments()
        current = self.store.current_deployment()
        if current is None:
            raise AgentError("No model is deployed, so there is nothing to roll back.", title="Nothing to roll back")
        earlier = [d for d in deployments if d.id < current.id and d.model != current.model]
        for deployment in reversed(earlier):
            with contextlib.suppress(StoreError):
                model = self.store.get_model(deployment.model)
                if (Path(model.run_dir) / "model").is_dir():
                    job = self.queue.enqueue(
                        JobKind.DEPLOY, {"model": model.version, "reason": "rollback"}, (), RESOURCES[JobKind.DEPLOY]
                    )
                    self.changed("job", id=job.id, state="queued")
                    self.kick()
                    return job_info(self.paths, job)
        raise AgentError(f"{current.model} is the only model that served; nothing to roll back to.",
                         title="Nothing to roll back")  # fmt: skip

    def server_status(self) -> ServerInfo:
        return self.server.info(probe=True)

    def start_server(self) -> ServerInfo:
        """Start the completion server with the deployed model."""
        info = self.server.start()
        self.changed("server", running=info.running)
        return info

    def stop_server(self) -> ServerInfo:
        info = self.server.stop()
        self.changed("server", running=info.running)
        return info

    def test_completion(self, prompt: str, max_tokens: int = 32) -> str:
        """Ask the running server to complete ``prompt`` (what the IDE would get)."""
        return self.server.complete(prompt, max_tokens)

    def vscode_settings(self) -> dict[str, Any]:
        """Settings for the VS Code FauxPilot extension pointing at this server."""
        return self.server.vscode_settings()

    # -- settings ---------------------------------------------------------------------------------------------
    def get_settings(self) -> dict[str, Any]:
        """The configuration as TOML-shaped data (sections -> keys)."""
        return config_to_dict(self.config)

    def update_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Validate (all problems at once), save to the TOML file, and apply."""
        new = merge_settings(self.config, settings)
        if Path(new.agent.data_dir).expanduser() != self.paths.root:
            raise InputError("agent.data_dir cannot change while the agent runs; edit the file and restart it.")
        save_config(new, self.config_file)
        self.services.config = new
        self.changed("settings")
        self.apply_policy()
        return config_to_dict(new)

    # -- internals: policy, workers, watcher ------------------------------------------------------------------
    def apply_policy(self, now: dt.datetime | None = None) -> Decision | None:
        """Queue a retrain chain when the policy says so (called after each dataset update and on a timer)."""
        with self._policy_lock:
            return retrain.apply_policy(self.services, now or dt.datetime.now())

    def _queue_dataset(self, reason: str) -> None:
        if any(j.kind == JobKind.DATASET for j in self.queue.list(JobState.QUEUED)):
            return  # the queued update will see this change too
        job = self.queue.enqueue(JobKind.DATASET, {"reason": reason}, (), RESOURCES[JobKind.DATASET])
        self.changed("job", id=job.id, state="queued", message=reason)
        self.kick()

    # -- internals: watcher -----------------------------------------------------------------------------------
    def _watch(self, repo: Repo) -> None:
        with contextlib.suppress(ValueError):
            self.watcher.add(RepoWatch(repo.name, repo.path, repo.ref))

    def _on_repo_change(self, name: str, ref: str | None, commit: str | None) -> None:
        log.info("%s: %s moved to %s", name, ref, commit)
        self.changed("repo", name=name, action="changed", commit=commit)
        self._queue_dataset(f"new commit on {name} ({ref})")

    def _on_watch_error(self, name: str, message: str) -> None:
        self._last_error = ErrorInfo(f"Repository {name}", message)
        self.changed("repo", name=name, action="problem", message=message)
        self.notify(f"Repository {name}", message)

    # -- internals: workers -----------------------------------------------------------------------------------
    def kick(self) -> None:
        """Wake the workers: a job was queued."""
        self.services.kick()

    def changed(self, event: str, **data: Any) -> None:
        """Publish an event (``job``, ``repo``, ``model``, ``server``, ``status``, ``settings``)."""
        self.services.changed(event, **data)

    def notify(self, title: str, message: str) -> None:
        """A desktop notification for the tray (model trained/deployed/rolled back, job failed)."""
        self.services.notify(title, message)

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.queue.claim_next()
            except Exception:  # the store is busy or broken: log, back off, keep the agent alive
                log.exception("claiming a job failed")
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(1.0)
                continue
            self._active.add(job.id)
            try:
                self._run(job)
            except Exception:  # a bug in the agent itself: the job fails, the agent lives on
                log.exception("running job %s failed", job.id)
                with contextlib.suppress(Exception):
                    self.queue.fail(job.id, "Agent error", "the agent hit an internal error; see its log")
            finally:
                self._active.discard(job.id)

    def _run(self, job: Job) -> None:
        self.changed("job", id=job.id, kind=job.kind.value, state="running")
        last = {"t": 0.0, "progress": {}}

        def report(progress: dict[str, Any]) -> None:
            merged = {**last["progress"], **{k: v for k, v in progress.items() if v is not None}}
            last["progress"] = merged
            self.queue.update_progress(job.id, merged)
            if time.monotonic() - last["t"] >= 0.5:
                last["t"] = time.monotonic()
                self.changed("job", id=job.id, kind=job.kind.value, state="running", progress=merged)

        def is_cancelled() -> bool:
            return self._stopping.is_set() or self.queue.get(job.id).state != JobState.RUNNING

        try:
            try:
                result = STEPS[job.kind](StepContext(job, self.services, self.server, report, is_cancelled))
            except OSError as exc:  # the agent's own writes (snapshot, store, logs)
                full = disk_full(self.paths.root, job.id, str(exc))
                if full is None:
                    raise
                raise full from exc
        except BaseException as exc:
            if self._stopping.is_set() and isinstance(exc, JobCancelled):
                return  # left running in the store: resumed at the next start
            ended = self.queue.fail_with(job.id, exc)
            if ended.state == JobState.FAILED:
                log.warning(
                    "job %s (%s) failed: %s: %s", job.id, job.kind.value, ended.error_title, ended.error_message
                )
                self._last_error = ErrorInfo(ended.error_title or "Job failed", ended.error_message or "", job.id)
                self.notify(f"Job {job.id} ({job.kind.value}) failed", f"{ended.error_title}: {ended.error_message}")
            self.changed("job", id=job.id, kind=job.kind.value, state=ended.state.value)
            if not isinstance(exc, Exception):
                raise
            return
        if job.kind == JobKind.DATASET:
            # Before the dataset job reads as done, so nobody sees a moment of "idle" between the two.
            with contextlib.suppress(Exception):
                self.apply_policy()
        self.queue.finish(job.id, result)
        if self._last_error is not None and self._last_error.job is not None:
            self._last_error = None  # a job succeeded since: the error was dealt with
        self.changed("job", id=job.id, kind=job.kind.value, state="done")

    def _policy_timer(self) -> None:
        while not self._stopping.wait(60.0):
            with contextlib.suppress(Exception):
                self.apply_policy()
