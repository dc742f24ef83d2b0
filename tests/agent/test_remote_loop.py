"""The loop with training on a "remote" GPU box: a real sshd on 127.0.0.1, reached with a key, running the
same `repopilot train` in its own work folder; and what an unreachable box does to a job."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.api.models import AgentState
from agent.config import GpuBox
from agent.core import Agent
from tests.agent.agentkit import jobs_summary, make_repo, settled, wait_for, write_config
from tests.services import free_port
from tests.sshbox import SshBox


@pytest.fixture
def box(tmp_path: Path):
    server = SshBox(tmp_path / "sshd")
    server.start()
    yield server
    server.stop()


def test_the_chain_trains_on_the_loopback_box_and_serves_the_result(box: SshBox, tmp_path: Path) -> None:
    work = tmp_path / "box-work"
    remote = box.gpu_box(work_dir=str(work), python=sys.executable)
    agent = Agent(config_file=write_config(tmp_path, boxes=[remote], box=remote.name))
    agent.start()
    try:
        agent.add_repo(str(make_repo(tmp_path / "acme").path))
        wait_for(lambda: settled(agent, 5), 600, "the chain", lambda: jobs_summary(agent))
        jobs = {j.kind: j for j in agent.list_jobs()}
        assert all(j.state == "done" for j in jobs.values()), jobs_summary(agent)
        train = jobs["train"]
        assert train.resource == "gpu:loopback" and train.result["box"] == "loopback"
        version = train.result["model"]
        assert list((work / "runs").iterdir()), "the run happened in the box's work folder"
        local_run = Path(train.result["run_dir"])
        assert local_run.is_relative_to(agent.paths.runs) and (local_run / "model" / "config.json").exists()
        assert agent.status().serving_model == version
        assert agent.test_completion("def settle_account_2(client", max_tokens=8)
    finally:
        agent.stop_server()
        agent.stop()


def test_an_unreachable_box_fails_the_training_job_clearly(tmp_path: Path) -> None:
    closed = GpuBox(name="far-away", kind="ssh", host="127.0.0.1", port=free_port(), work_dir=str(tmp_path / "w"))
    agent = Agent(config_file=write_config(tmp_path, boxes=[closed], box="far-away"))
    agent.start()
    try:
        agent.add_repo(str(make_repo(tmp_path / "acme", files=6).path))
        wait_for(lambda: settled(agent, 5), 300, "the chain to fail", lambda: jobs_summary(agent))
        train = next(j for j in agent.list_jobs() if j.kind == "train")
        assert train.state == "failed" and train.error.title == "Training box problem", jobs_summary(agent)
        assert f"127.0.0.1:{closed.port}" in train.error.message
        status = agent.status()  # the agent keeps running and says what is wrong
        assert status.state == AgentState.ERROR and status.last_error.job == train.id
        assert [j.state for j in agent.list_jobs()][:3] == ["cancelled", "cancelled", "cancelled"]
    finally:
        agent.stop()
