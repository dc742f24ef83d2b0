"""The agent's SQLite store and persistent job queue, on real database files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.errors import JobError, StoreError
from agent.jobs import GATE_PASSED, Job, JobCancelled, JobKind, JobQueue, JobSpec, JobState
from agent.store import SCHEMA_VERSION, Model, ModelStatus, Repo, Store
from pipelines.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]
GPU = "gpu:local"


@pytest.fixture
def queue(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    yield JobQueue(store)
    store.close()


def pipeline(queue: JobQueue) -> list[Job]:
    return queue.chain(
        [
            JobSpec(JobKind.DATASET, {"repo": "r"}),
            JobSpec(JobKind.TRAIN, {}, resource=GPU),
            JobSpec(JobKind.EVAL, {}, resource=GPU),
            JobSpec(JobKind.CONVERT, {}),
            JobSpec(JobKind.DEPLOY, {}, run_if=GATE_PASSED),
        ]
    )


def states(queue: JobQueue, jobs: list[Job]) -> list[str]:
    return [queue.get(j.id).state.value for j in jobs]


def test_oldest_runnable_first_and_dependencies_wait(queue: JobQueue) -> None:
    a = queue.enqueue(JobKind.DATASET, {"n": 1})
    b = queue.enqueue(JobKind.TRAIN, {"n": 2}, depends_on=[a.id])
    c = queue.enqueue(JobKind.DATASET, {"n": 3})
    assert queue.claim_next().id == a.id
    assert queue.claim_next().id == c.id  # b waits for a
    assert queue.claim_next() is None
    queue.finish(a.id, {"version": "v1"})
    claimed = queue.claim_next()
    assert claimed.id == b.id and claimed.state == JobState.RUNNING and claimed.started_at is not None
    assert queue.get(a.id).result == {"version": "v1"}
    assert [j.id for j in queue.list(state=JobState.RUNNING)] == [b.id, c.id]
    assert [j.id for j in queue.list(kind="dataset")] == [a.id, c.id]
    with pytest.raises(JobError):
        queue.enqueue(JobKind.TRAIN, depends_on=[999])


def test_one_running_job_per_resource(queue: JobQueue) -> None:
    first = queue.enqueue(JobKind.TRAIN, resource=GPU)
    second = queue.enqueue(JobKind.EVAL, resource=GPU)
    cpu = queue.enqueue(JobKind.CONVERT, resource="cpu")
    assert queue.claim_next(resources_free={GPU}).id == first.id
    assert queue.claim_next(resources_free={GPU}) is None  # gpu taken, cpu not free by the caller
    assert queue.claim_next(resources_free=lambda r: r == "cpu").id == cpu.id
    queue.finish(first.id)
    assert queue.claim_next(resources_free=set()) is None
    assert queue.claim_next(resources_free={GPU}).id == second.id


def test_failed_dependency_cancels_dependents(queue: JobQueue) -> None:
    jobs = pipeline(queue)
    queue.claim_next()
    queue.fail(jobs[0].id, "Dataset problem", "repo vanished")
    assert states(queue, jobs) == ["failed"] + ["cancelled"] * 4
    train = queue.get(jobs[1].id)
    assert train.cancelled_by == jobs[0].id and train.error_title == "Dependency failed"
    assert queue.get(jobs[2].id).cancelled_by == jobs[1].id
    assert queue.claim_next() is None


def run_to_eval(queue: JobQueue, jobs: list[Job], gate: str) -> None:
    for job in jobs[:3]:
        if queue.get(job.id).state == JobState.DONE:
            continue
        assert queue.claim_next().id == job.id
        queue.finish(job.id, {"gate": gate} if job.kind == JobKind.EVAL else {})
    assert queue.claim_next().id == jobs[3].id
    queue.finish(jobs[3].id, {"dir": "ft"})


def test_gate_false_cancels_deploy_and_true_runs_it(tmp_path: Path) -> None:
    for gate, expected in (("fail", "cancelled"), ("pass", "running")):
        with Store(tmp_path / f"{gate}.db") as store:
            queue = JobQueue(store)
            jobs = pipeline(queue)
            run_to_eval(queue, jobs, gate)
            claimed = queue.claim_next()
            deploy = queue.get(jobs[4].id)
            assert deploy.state.value == expected
            if gate == "fail":
                assert claimed is None and deploy.error_title == "gate failed" and deploy.cancelled_by == jobs[2].id
            else:
                assert claimed.id == deploy.id


def test_cancel_cascades_and_only_from_queued_or_running(queue: JobQueue) -> None:
    jobs = pipeline(queue)
    queue.claim_next()
    queue.finish(jobs[0].id)
    running = queue.claim_next()
    assert running.id == jobs[1].id
    queue.cancel(running.id)
    assert states(queue, jobs) == ["done"] + ["cancelled"] * 4
    assert queue.finish(running.id, {"late": True}).state == JobState.CANCELLED  # the executor's late report
    with pytest.raises(JobError):
        queue.cancel(jobs[0].id)
    other = queue.enqueue(JobKind.DATASET)
    queue.cancel(other.id)
    assert queue.get(other.id).state == JobState.CANCELLED


def test_retry_requeues_the_chain_tail(queue: JobQueue) -> None:
    jobs = pipeline(queue)
    queue.claim_next()
    queue.finish(jobs[0].id)
    queue.claim_next()
    queue.update_progress(jobs[1].id, {"step": 5, "loss": 1.5})
    assert queue.get(jobs[1].id).progress == {"step": 5, "loss": 1.5}
    queue.fail_with(jobs[1].id, DatasetError("shards are corrupt"))
    failed = queue.get(jobs[1].id)
    assert (failed.state, failed.error_title, failed.error_message) == (
        JobState.FAILED,
        "Dataset problem",
        "shards are corrupt",
    )
    with pytest.raises(JobError):
        queue.retry(jobs[2].id)  # its dependency has not succeeded
    with pytest.raises(JobError):
        queue.retry(jobs[0].id)  # done jobs do not retry
    retried = queue.retry(jobs[1].id)
    assert retried.attempts == 2 and retried.error_title is None and retried.progress is None
    assert states(queue, jobs) == ["done"] + ["queued"] * 4
    assert [queue.get(j.id).attempts for j in jobs[2:]] == [1, 1, 1]
    run_to_eval(queue, jobs, "pass")
    assert queue.claim_next().id == jobs[4].id


def test_retry_after_gate_failure_requeues_deploy(queue: JobQueue) -> None:
    jobs = pipeline(queue)
    run_to_eval(queue, jobs, "fail")
    assert queue.claim_next() is None
    with pytest.raises(JobError):
        queue.retry(jobs[2].id)  # eval is done: the gate result stands
    queue.retry(jobs[4].id)
    assert queue.claim_next() is None and queue.get(jobs[4].id).state == JobState.CANCELLED


def test_exception_mapping(queue: JobQueue) -> None:
    for exc, state in (
        (JobCancelled("user asked"), JobState.CANCELLED),
        (KeyboardInterrupt(), JobState.INTERRUPTED),
        (ValueError("boom"), JobState.FAILED),
    ):
        job = queue.enqueue(JobKind.CONVERT)
        assert queue.claim_next().id == job.id
        ended = queue.fail_with(job.id, exc)
        assert ended.state == state and ended.error_title and ended.finished_at is not None
    assert queue.list(state="failed")[0].error_title == "Unexpected error (ValueError)"


CLAIM_AND_HANG = """
import sys, time
from agent.jobs import JobQueue
from agent.store import Store
queue = JobQueue(Store(sys.argv[1]))
job = queue.claim_next()
queue.update_progress(job.id, {"step": 3})
print(job.id, flush=True)
time.sleep(60)
"""


def test_recovery_after_sigkill_requeues_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store(db) as store:
        queue = JobQueue(store)
        train = queue.enqueue(JobKind.TRAIN, {"resume": True}, resource=GPU)
        after = queue.enqueue(JobKind.EVAL, depends_on=[train.id], resource=GPU)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HANG, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert int(proc.stdout.readline()) == train.id
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    with Store(db) as store:
        queue = JobQueue(store)
        assert queue.get(train.id).state == JobState.RUNNING
        assert queue.claim_next() is None  # the dead agent still holds the gpu
        # a live owner (this process) is never taken for dead
        live = queue.enqueue(JobKind.DATASET)
        assert queue.claim_next().id == live.id
        recovered = queue.recover_after_restart()
        assert [j.id for j in recovered] == [train.id]
        job = queue.get(train.id)
        assert job.state == JobState.QUEUED and job.attempts == 2 and job.error_title == "Interrupted"
        assert job.params == {"resume": True}
        assert queue.get(live.id).state == JobState.RUNNING
        assert queue.claim_next().id == train.id
        queue.finish(train.id)
        assert queue.claim_next().id == after.id


def test_recovery_of_jobs_left_by_another_store(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first = Store(db)
    job = JobQueue(first).enqueue(JobKind.TRAIN)
    JobQueue(first).claim_next(owner="elsewhere:1")
    second = Store(db)
    recovered = JobQueue(second).recover_after_restart(is_alive=lambda owner: owner != "elsewhere:1")
    assert [j.id for j in recovered] == [job.id]
    assert JobQueue(first).get(job.id).state == JobState.QUEUED
    first.close()
    second.close()


CLAIMER = """
import json, sys, time
from pathlib import Path
from agent.jobs import JobQueue
from agent.store import Store
queue = JobQueue(Store(sys.argv[1]))
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
claimed = []
for _ in range(int(sys.argv[3])):
    job = queue.claim_next()
    if job is None:
        break
    claimed.append(job.id)
print(json.dumps(claimed))
"""


def test_concurrent_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    db, go = tmp_path / "state.db", tmp_path / "go"
    with Store(db) as store:
        queue = JobQueue(store)
        ids = [queue.enqueue(JobKind.DATASET, {"i": i}).id for i in range(100)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(db), str(go), "100"], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    go.touch()
    claimed = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    flat = claimed[0] + claimed[1]
    assert len(flat) == len(set(flat)) == 100 and sorted(flat) == ids
    with Store(db) as store:
        assert len(JobQueue(store).list(state=JobState.RUNNING)) == 100


def test_concurrent_threads_never_claim_the_same_job(queue: JobQueue) -> None:
    ids = [queue.enqueue(JobKind.EVAL).id for _ in range(100)]
    claimed: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def claim(slot: int) -> None:
        barrier.wait()
        for _ in range(50):
            job = queue.claim_next()
            if job is not None:
                claimed[slot].append(job.id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    flat = claimed[0] + claimed[1]
    assert sorted(flat) == ids and len(set(flat)) == 100


def test_schema_and_rows_survive_reopening(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.add_repo(Repo("core", "/src/core", include=["*.py"], exclude=["vendor/"]))
        store.set_repo_indexed("core", "abc123")
        store.add_dataset_version("v1", {"files": 10})
        store.add_model(Model("m1", None, "v1", "/runs/v1", None, {}, 0.0, ModelStatus.TRAINED))
        store.update_model("m1", status=ModelStatus.EVALUATED, eval_report="/runs/v1/eval/report.md")
        first = store.start_deployment("m1", "embedded")
        second = store.start_deployment("m1", "triton")
        JobQueue(store).enqueue(JobKind.DATASET, {"repo": "core"})
    with Store(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        repo = store.get_repo("core")
        assert (repo.include, repo.exclude, repo.last_indexed_commit) == (["*.py"], ["vendor/"], "abc123")
        assert store.list_dataset_versions()[0].stats == {"files": 10}
        model = store.get_model("m1")
        assert model.status == ModelStatus.EVALUATED and model.eval_report.endswith("report.md")
        current = store.current_deployment()
        assert current.id == second.id and current.previous == first.id and current.runtime == "triton"
        assert store.list_deployments()[0].ended_at is not None
        assert JobQueue(store).list()[0].params == {"repo": "core"}
        with pytest.raises(StoreError):
            store.get_repo("missing")
        store.conn().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer repopilot"):
        Store(db)


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    with Store(tmp_path / "state.db") as store:
        queue = JobQueue(store)
        with pytest.raises(RuntimeError), store.transaction():
            queue.enqueue(JobKind.DATASET)
            raise RuntimeError("abort")
        assert queue.list() == []
