"""A persistent job queue on the agent's :class:`~agent.store.Store`.

Jobs depend on other jobs, hold at most one slot of a named resource (``"gpu:local"``) and may carry a
``run_if`` condition checked against their dependencies' results. Every state change happens in one
SQLite write transaction, so several claimers (threads or processes) never take the same job.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.api.models import RETRYABLE, JobKind, JobState
from agent.errors import JobError, UnknownJob
from agent.procs import pid_alive
from agent.store import Store
from pipelines.errors import RepopilotError

FINISHED_BADLY = frozenset({JobState.FAILED, JobState.CANCELLED})
GATE_PASSED = "gate_passed"


class JobCancelled(Exception):
    """Raised inside an executor when the job it runs was cancelled."""


def outcome_for_exception(exc: BaseException) -> tuple[JobState, str, str]:
    """The one place that maps an exception raised by a job to (state, error title, error message)."""
    if isinstance(exc, JobCancelled):
        return JobState.CANCELLED, "Cancelled", str(exc) or "the job was cancelled"
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return JobState.INTERRUPTED, "Interrupted", "the agent stopped while this job was running"
    if isinstance(exc, RepopilotError):
        return JobState.FAILED, exc.title, exc.message
    return JobState.FAILED, f"Unexpected error ({type(exc).__name__})", str(exc) or repr(exc)


@dataclass(frozen=True)
class Job:
    """One row of the queue."""

    id: int
    kind: JobKind
    params: dict[str, Any]
    state: JobState
    depends_on: tuple[int, ...]
    resource: str | None
    run_if: str | None
    attempts: int
    """The attempt number: 1 when enqueued, +1 per retry or recovery."""
    created_at: float
    started_at: float | None
    finished_at: float | None
    error_title: str | None
    error_message: str | None
    result: dict[str, Any] | None
    progress: dict[str, Any] | None
    cancelled_by: int | None
    """The dependency whose failure, cancellation or gate cancelled this job (None otherwise)."""
    owner: str | None
    """``host:pid`` of the agent that claimed it."""


@dataclass(frozen=True)
class JobSpec:
    """One step of :meth:`JobQueue.chain`; it depends on the step before it."""

    kind: JobKind
    params: dict[str, Any]
    resource: str | None = None
    run_if: str | None = None


ResourcesFree = Callable[[str], bool] | Iterable[str] | None


def this_owner() -> str:
    """The owner tag of this process: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the process that wrote ``owner`` still runs (owners on other hosts count as dead)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return pid_alive(int(pid))


class JobQueue:
    """The queue API; all methods are atomic."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- adding -----------------------------------------------------------------------------------

    def enqueue(
        self,
        kind: JobKind | str,
        params: dict[str, Any] | None = None,
        depends_on: Sequence[int] = (),
        resource: str | None = None,
        run_if: str | None = None,
    ) -> Job:
        """Add a queued job; its dependencies must exist."""
        kind = JobKind(kind)
        if run_if not in (None, GATE_PASSED):
            raise JobError(f"unknown run_if condition {run_if!r}; known: {GATE_PASSED!r}")
        with self.store.transaction() as conn:
            deps = [int(d) for d in depends_on]
            for dep in deps:
                self._row(conn, dep)
            cur = conn.execute(
                "INSERT INTO jobs (kind, params, state, depends_on, resource, run_if, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    kind.value,
                    json.dumps(params or {}),
                    JobState.QUEUED.value,
                    json.dumps(deps),
                    resource,
                    run_if,
                    time.time(),
                ),
            )
            return self._row(conn, int(cur.lastrowid or 0))

    def chain(self, steps: Sequence[JobSpec], depends_on: Sequence[int] = ()) -> list[Job]:
        """Enqueue steps that each depend on the one before, in one transaction."""
        jobs: list[Job] = []
        with self.store.transaction():
            previous = list(depends_on)
            for step in steps:
                job = self.enqueue(step.kind, step.params, previous, step.resource, step.run_if)
                jobs.append(job)
                previous = [job.id]
        return jobs

    # -- claiming ---------------------------------------------------------------------------------

    def claim_next(self, resources_free: ResourcesFree = None, owner: str | None = None) -> Job | None:
        """Mark the oldest runnable queued job running and return it (None when nothing can run).

        Runnable: every dependency is done, its ``run_if`` holds, and its resource is free both here
        (no running job holds it) and by ``resources_free`` (a predicate or a set of free names; None:
        all free). Jobs whose dependency failed or was cancelled, or whose gate failed, are cancelled.
        """
        is_free = _free_predicate(resources_free)
        with self.store.transaction() as conn:
            self._settle(conn)
            busy = {
                r[0] for r in conn.execute("SELECT DISTINCT resource FROM jobs WHERE state = ?", ("running",)) if r[0]
            }
            for job in self._select(conn, "state = ?", (JobState.QUEUED.value,)):
                if any(self._row(conn, d).state != JobState.DONE for d in job.depends_on):
                    continue
                if job.resource is not None and (job.resource in busy or not is_free(job.resource)):
                    continue
                conn.execute(
                    "UPDATE jobs SET state = ?, started_at = ?, finished_at = NULL, owner = ? WHERE id = ?",
                    (JobState.RUNNING.value, time.time(), owner or this_owner(), job.id),
                )
                return self._row(conn, job.id)
        return None

    # -- ending -----------------------------------------------------------------------------------

    def finish(self, job_id: int, result: dict[str, Any] | None = None) -> Job:
        """Mark a running job done with ``result``; a job cancelled meanwhile stays cancelled."""
        with self.store.transaction() as conn:
            job = self._row(conn, job_id)
            if job.state == JobState.RUNNING:
                self._set_end(conn, job_id, JobState.DONE, None, None, result=result or {})
                self._settle(conn)
            return self._row(conn, job_id)

    def fail(self, job_id: int, title: str, message: str) -> Job:
        """Mark a running job failed; its dependents get cancelled."""
        with self.store.transaction() as conn:
            job = self._row(conn, job_id)
            if job.state == JobState.RUNNING:
                self._set_end(conn, job_id, JobState.FAILED, title, message)
                self._settle(conn)
            return self._row(conn, job_id)

    def fail_with(self, job_id: int, exc: BaseException) -> Job:
        """End a running job by the exception it raised (see :func:`outcome_for_exception`)."""
        state, title, message = outcome_for_exception(exc)
        if state == JobState.FAILED:
            return self.fail(job_id, title, message)
        with self.store.transaction() as conn:
            if self._row(conn, job_id).state == JobState.RUNNING:
                self._set_end(conn, job_id, state, title, message)
                self._settle(conn)
            return self._row(conn, job_id)

    def cancel(self, job_id: int, reason: str = "cancelled by the user") -> Job:
        """Cancel a queued or running job and, transitively, the jobs waiting on it."""
        with self.store.transaction() as conn:
            job = self._row(conn, job_id)
            if job.state not in (JobState.QUEUED, JobState.RUNNING):
                raise JobError(f"job {job_id} is {job.state.value}; only queued or running jobs can be cancelled")
            self._set_end(conn, job_id, JobState.CANCELLED, "Cancelled", reason)
            self._settle(conn)
            return self._row(conn, job_id)

    def retry(self, job_id: int) -> Job:
        """Re-queue a failed, cancelled or interrupted job, and the dependents cancelled because of it."""
        with self.store.transaction() as conn:
            job = self._row(conn, job_id)
            if job.state not in RETRYABLE:
                raise JobError(f"job {job_id} is {job.state.value}; only failed, cancelled or interrupted jobs retry")
            for dep in job.depends_on:
                if self._row(conn, dep).state in FINISHED_BADLY:
                    raise JobError(f"job {job_id} depends on job {dep}, which did not succeed; retry that one first")
            self._requeue(conn, job_id, bump=True)
            pending = [job_id]
            while pending:
                cause = pending.pop()
                for dependent in self._select(conn, "state = ? AND cancelled_by = ?", ("cancelled", cause)):
                    self._requeue(conn, dependent.id, bump=False)
                    pending.append(dependent.id)
            return self._row(conn, job_id)

    def update_progress(self, job_id: int, progress: dict[str, Any]) -> None:
        """Record the last progress line of a running job."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND state = ?",
                (json.dumps(progress), job_id, JobState.RUNNING.value),
            )

    def recover_after_restart(self, is_alive: Callable[[str], bool] = owner_alive) -> builtins.list[Job]:
        """Mark jobs left running by a dead agent interrupted, then re-queue them; returns them (re-queued)."""
        with self.store.transaction() as conn:
            orphans = [j for j in self._select(conn, "state = ?", ("running",)) if not is_alive(j.owner or "")]
            for job in orphans:
                message = f"the agent ({job.owner}) stopped while this job was running; it was re-queued"
                self._set_end(conn, job.id, JobState.INTERRUPTED, "Interrupted", message)
                self._requeue(conn, job.id, bump=True, keep_error=True)
            return [self._row(conn, j.id) for j in orphans]

    # -- reading ----------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job ``job_id``; JobError when unknown."""
        return self._row(self.store.conn(), job_id)

    def list(self, state: JobState | str | None = None, kind: JobKind | str | None = None) -> builtins.list[Job]:
        """Jobs in creation order, optionally filtered by state and kind."""
        where, args = ["1"], []
        if state is not None:
            where.append("state = ?")
            args.append(JobState(state).value)
        if kind is not None:
            where.append("kind = ?")
            args.append(JobKind(kind).value)
        return self._select(self.store.conn(), " AND ".join(where), tuple(args))

    # -- internals --------------------------------------------------------------------------------

    def _settle(self, conn: sqlite3.Connection) -> None:
        """Cancel queued jobs that can never run (a dependency failed or was cancelled, or a gate failed)."""
        changed = True
        while changed:
            changed = False
            for job in self._select(conn, "state = ?", (JobState.QUEUED.value,)):
                deps = [self._row(conn, d) for d in job.depends_on]
                bad = next((d for d in deps if d.state in FINISHED_BADLY), None)
                if bad is not None:
                    title = f"Dependency {bad.state.value}"
                    message = f"job {bad.id} ({bad.kind.value}) {bad.state.value}"
                    self._set_end(conn, job.id, JobState.CANCELLED, title, message, cancelled_by=bad.id)
                    changed = True
                elif job.run_if == GATE_PASSED and all(d.state == JobState.DONE for d in deps):
                    gate = self._nearest_gate(conn, deps)
                    if gate is None or (gate.result or {}).get("gate") != "pass":
                        cause = gate.id if gate else (deps[-1].id if deps else None)
                        message = f"job {cause} did not pass the deploy gate" if gate else "no dependency ran a gate"
                        self._set_end(conn, job.id, JobState.CANCELLED, "gate failed", message, cancelled_by=cause)
                        changed = True

    def _nearest_gate(self, conn: sqlite3.Connection, deps: builtins.list[Job]) -> Job | None:
        """The closest ancestor whose result holds a ``gate`` (an eval job upstream of convert)."""
        frontier, seen = builtins.list(deps), set()
        while frontier:
            job = frontier.pop(0)
            if "gate" in (job.result or {}):
                return job
            seen.add(job.id)
            frontier.extend(self._row(conn, d) for d in job.depends_on if d not in seen)
        return None

    def _set_end(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        state: JobState,
        title: str | None,
        message: str | None,
        *,
        result: dict[str, Any] | None = None,
        cancelled_by: int | None = None,
    ) -> None:
        conn.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, error_title = ?, error_message = ?, result = ?,"
            " cancelled_by = ? WHERE id = ?",
            (
                state.value,
                time.time(),
                title,
                message,
                None if result is None else json.dumps(result),
                cancelled_by,
                job_id,
            ),
        )

    def _requeue(self, conn: sqlite3.Connection, job_id: int, *, bump: bool, keep_error: bool = False) -> None:
        errors = "" if keep_error else ", error_title = NULL, error_message = NULL"
        conn.execute(
            "UPDATE jobs SET state = ?, attempts = attempts + ?, started_at = NULL, finished_at = NULL, result = NULL,"
            f" progress = NULL, cancelled_by = NULL, owner = NULL{errors} WHERE id = ?",
            (JobState.QUEUED.value, 1 if bump else 0, job_id),
        )

    def _row(self, conn: sqlite3.Connection, job_id: int) -> Job:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job with id {job_id}")
        return _job(row)

    def _select(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> builtins.list[Job]:
        return [_job(r) for r in conn.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY created_at, id", args)]


def _free_predicate(resources_free: ResourcesFree) -> Callable[[str], bool]:
    if resources_free is None:
        return lambda _: True
    if callable(resources_free):
        return resources_free
    free = set(resources_free)
    return free.__contains__


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=JobKind(row["kind"]),
        params=json.loads(row["params"]),
        state=JobState(row["state"]),
        depends_on=tuple(json.loads(row["depends_on"])),
        resource=row["resource"],
        run_if=row["run_if"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error_title=row["error_title"],
        error_message=row["error_message"],
        result=json.loads(row["result"] or "null"),
        progress=json.loads(row["progress"] or "null"),
        cancelled_by=row["cancelled_by"],
        owner=row["owner"],
    )
