"""The whole loop, run by a real agent: a commit becomes a dataset update, a tiny model trained on the CPU,
an evaluation with the gate, a conversion and a deployment on the embedded server, then a completion."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from agent.api.models import AgentState
from agent.core import Agent
from agent.errors import AgentError
from pipelines.errors import RepoError
from tests.agent.agentkit import jobs_summary, make_repo, settled, wait_for, write_config
from tests.finetune.conftest import internal_module
from tests.services import require


@pytest.fixture
def agent(tmp_path: Path):
    agent = Agent(config_file=write_config(tmp_path, context=True))
    agent.start()
    yield agent
    agent.stop_server()
    agent.stop()


def records_of(snapshot: str) -> list[dict]:
    from pipelines.finetune.data import iter_records

    return [*iter_records(Path(snapshot), "train"), *iter_records(Path(snapshot), "validation")]


def wait_for_context(agent: Agent, check) -> dict:
    """The completion server's repository context (its /health), once ``check`` holds."""
    found: dict = {}

    def ready() -> bool:
        url = f"http://127.0.0.1:{agent.config.server.port}/health"
        with urllib.request.urlopen(url, timeout=10) as response:
            found.update(json.loads(response.read())["context"])
        return check(found)

    wait_for(ready, 60, "the server's repository context", lambda: found)
    return found


def test_a_commit_runs_the_whole_chain_and_the_new_model_serves(agent: Agent, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    events = []

    agent.add_repo(str(repo.path))
    wait_for(lambda: settled(agent, 5), 600, "the first chain", lambda: jobs_summary(agent))
    jobs = {j.kind: j for j in agent.list_jobs()}
    assert [j.state for j in agent.list_jobs()] == ["done"] * 5, jobs_summary(agent)
    first = jobs["train"].result["model"]
    assert jobs["eval"].result["gate"] == "pass"  # trained beats its untrained base
    status = agent.status()
    assert status.state == AgentState.IDLE and status.serving_model == first and status.server_running
    server = agent.server_status()
    assert server.healthy and server.model == first
    assert agent.test_completion("def settle_account_3(client", max_tokens=8)
    context = wait_for_context(agent, lambda c: c["ready"])  # the server knows the whole repo: context of every file
    assert context["default"] == "on" and context["files"] == len(records_of(jobs["dataset"].result["snapshot"]))
    model = agent.get_model(first)
    assert model.serving and model.status == "deployed" and model.eval["gate"]["worse"] is False
    assert model.eval["settings"]["context"] == "repo"  # judged as it is served: with repository context
    assert Path(model.converted_dirs["fastertransformer"], "fastertransformer", "config.pbtxt").exists()
    info = agent.get_job(jobs["train"].id)
    assert info.losses and info.losses[-1][1] < info.losses[0][1]  # the loss chart has a falling curve
    repos = agent.list_repos()
    assert repos[0].last_indexed_commit == repos[0].head_commit

    # A new commit on the watched branch: the watcher notices, and the loop runs again by itself.
    batch = agent.wait_events(0, 0)
    repo.commit({f"jobs/extra_{i}.py": internal_module(100 + i) for i in range(6)}, message="more billing jobs")
    wait_for(lambda: settled(agent, 10), 600, "the second chain", lambda: jobs_summary(agent))
    second = next(j for j in agent.list_jobs() if j.kind == "train")
    assert second.state == "done" and second.result["model"] != first, jobs_summary(agent)
    verdict = next(j for j in agent.list_jobs() if j.kind == "eval").result["gate"]
    serving = agent.status().serving_model
    assert serving == (second.result["model"] if verdict == "pass" else first)
    assert agent.test_completion("def settle_account_101(client", max_tokens=8)
    wait_for_context(agent, lambda c: c["files"] == context["files"] + 6)  # the new commit's files, no restart
    events = agent.wait_events(batch.cursor, 0).events
    kinds = {e.kind for e in events}
    assert {"repo", "job"} <= kinds
    titles = [e.data["title"] for e in events if e.kind == "notification"]
    assert "Model trained" in titles

    # Deploy the second model by hand, then roll back: the first one serves again.
    agent.deploy_model(second.result["model"])
    wait_for(lambda: agent.status().serving_model == second.result["model"], 120, "manual deploy")
    agent.rollback()
    wait_for(lambda: agent.status().serving_model == first and not agent.status().running_job, 120, "rollback")
    assert agent.server_status().healthy
    assert "rolled back" in " ".join(e.data.get("title", "") for e in agent.wait_events(batch.cursor, 0).events)


def test_below_the_thresholds_only_the_dataset_updates(tmp_path: Path) -> None:
    agent = Agent(config_file=write_config(tmp_path, retrain=False, steps=300))  # long enough to cancel mid-run
    agent.start()
    try:
        repo = make_repo(tmp_path / "acme", files=12)
        agent.add_repo(str(repo.path), include=["jobs/*"])
        wait_for(lambda: settled(agent, 1), 120, "the dataset job", lambda: jobs_summary(agent))
        assert [(j.kind, j.state) for j in agent.list_jobs()] == [("dataset", "done")]
        dataset = agent.dataset()
        assert dataset.files_kept == 12  # acme/ledger.py is outside the include filter
        repo_info = agent.list_repos()[0]
        assert repo_info.files_kept == 12 and repo_info.bytes_kept == dataset.bytes_kept > 0
        assert dataset.changed_files_since_serving == 13 and dataset.changed_lines_since_serving > 100
        assert dataset.retrain_decision.startswith("no retrain needed")
        with pytest.raises(AgentError, match="Nothing to serve"):
            agent.start_server()
        chain = agent.retrain_now()
        assert [j.kind for j in chain] == ["dataset", "train", "eval", "convert", "deploy"]
        with pytest.raises(AgentError, match="already"):
            agent.retrain_now()
        train = chain[1].id
        wait_for(lambda: agent.get_job(train).state == "running", 120, "training to start")
        wait_for(lambda: (agent.get_job(train).progress or {}).get("step"), 120, "a training step")
        cancelled = agent.cancel_job(train)
        assert cancelled.state == "cancelled"
        wait_for(lambda: settled(agent, 5), 60, "the chain to settle", lambda: jobs_summary(agent))
        assert [j.state for j in agent.list_jobs()][:3] == ["cancelled", "cancelled", "cancelled"]
        assert not (tmp_path / "data" / "jobs" / f"{train}.pid").exists()  # its process group was stopped
        agent.retry_job(train)  # resumes from its checkpoint, and the jobs it took down come back
        wait_for(lambda: settled(agent, 6), 600, "the retried chain", lambda: jobs_summary(agent))
        assert [j.state for j in agent.list_jobs()] == ["done"] * 6, jobs_summary(agent)
        progress = (tmp_path / "data" / "runs" / f"v{train}" / "progress.jsonl").read_text().splitlines()
        launches = [json.loads(line) for line in progress if '"launch"' in line]
        assert len(launches) == 2 and launches[1]["resume"] is True
    finally:
        agent.stop_server()
        agent.stop()


def test_bad_repos_get_clear_errors_and_the_agent_keeps_going(agent: Agent, tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="does not exist"):
        agent.add_repo(str(tmp_path / "nowhere"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(RepoError, match="not a git repository"):
        agent.add_repo(str(tmp_path / "plain"))
    repo = make_repo(tmp_path / "acme", files=4)
    agent.pause_watching()  # nothing runs by itself while we break the repo
    agent.add_repo(str(repo.path))
    with pytest.raises(Exception, match="already watched"):
        agent.add_repo(str(repo.path))
    wait_for(lambda: settled(agent, 1), 120, "the dataset job", lambda: jobs_summary(agent))
    for child in sorted(repo.path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() or child.is_symlink() else child.rmdir()
    repo.path.rmdir()
    assert "no longer exists" in agent.list_repos()[0].problem
    chain = agent.retrain_now()
    wait_for(lambda: settled(agent, 6), 120, "the chain to fail", lambda: jobs_summary(agent))
    failed = agent.get_job(chain[0].id)
    assert failed.state == "failed" and failed.error.title == "Repository problem"
    assert "repopilot repo remove acme" in failed.error.message
    status = agent.status()
    assert status.state == AgentState.ERROR and status.last_error.job == chain[0].id
    agent.remove_repo("acme")  # the agent still answers and recovers
    assert agent.list_repos() == []


def test_a_full_disk_fails_the_job_clearly_and_retry_finishes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)], capture_output=True)
    require(mounted.returncode == 0, "mounting a small tmpfs (root)")
    agent = None
    try:
        agent = Agent(config_file=write_config(tmp_path, retrain=False))
        agent.start()
        repo = make_repo(tmp_path / "acme", files=4)
        repo.commit({f"big/blob_{i}.py": big_module(i) for i in range(12)}, message="big files")
        agent.add_repo(str(repo.path))
        wait_for(lambda: settled(agent, 1), 120, "the dataset job", lambda: jobs_summary(agent))
        job = agent.list_jobs()[0]
        assert job.state == "failed" and job.error.title == "Disk full", jobs_summary(agent)
        assert f"repopilot job retry {job.id}" in job.error.message
        assert agent.status().state == AgentState.ERROR  # and the agent still answers
        subprocess.run(["mount", "-o", "remount,size=64m", str(data)], check=True)
        agent.retry_job(job.id)
        wait_for(lambda: settled(agent, 1), 120, "the retried dataset job", lambda: jobs_summary(agent))
        assert agent.get_job(job.id).state == "done", jobs_summary(agent)
        assert agent.dataset().files_kept == 17
    finally:
        if agent is not None:
            agent.stop()
        subprocess.run(["umount", "-l", str(data)], check=False)


def big_module(i: int) -> str:
    """~100 kB of distinct code, so a dozen of them overflow a 1 MB disk."""
    return "".join(
        f"def handler_{i}_{n}(event):\n    return event.get('key_{i}_{n}', {n * 7 + i})\n\n" for n in range(1600)
    )


def test_a_commit_made_while_the_agent_was_stopped_is_picked_up_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, retrain=False)
    repo = make_repo(tmp_path / "acme", files=5)
    agent = Agent(config_file=config)
    agent.start()
    agent.add_repo(str(repo.path))
    wait_for(lambda: settled(agent, 1), 120, "the dataset job", lambda: jobs_summary(agent))
    agent.stop()
    head = repo.commit({"jobs/late.py": internal_module(77)}, message="while the agent was down")
    agent = Agent(config_file=config)
    agent.start()
    try:
        wait_for(lambda: settled(agent, 2), 120, "the catch-up dataset job", lambda: jobs_summary(agent))
        assert [j.state for j in agent.list_jobs()] == ["done", "done"]
        assert agent.list_repos()[0].last_indexed_commit == head
        assert agent.dataset().files_kept == 7
    finally:
        agent.stop()
