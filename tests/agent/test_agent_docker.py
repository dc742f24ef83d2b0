"""The agent serving through FauxPilot's docker-compose stack on a REAL dockerd: the deploy job brings up
Triton (the CPU STAND-IN image: FasterTransformer itself needs an NVIDIA GPU) and the API container with the
converted model, and a completion comes back through both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.config import load_config, save_config
from agent.core import Agent
from agent.runtimes.compose import TRITON_CPU_STANDIN_IMAGE
from agent.runtimes.docker_stack import docker_available
from tests.agent.agentkit import jobs_summary, make_repo, settled, wait_for, write_config
from tests.services import free_port, require
from tests.stack.test_docker_stack import build_images


@pytest.fixture
def docker_agent(tmp_path: Path):
    require(docker_available() and shutil.which("docker-compose") is not None, "dockerd and docker-compose")
    build_images()
    path = write_config(tmp_path)
    config = load_config(path)
    server = config.server
    server.runtime, server.host_network, server.triton_image = "docker", True, TRITON_CPU_STANDIN_IMAGE
    server.triton_port, server.triton_http_port, server.triton_metrics_port = free_port(), free_port(), free_port()
    save_config(config, path)
    agent = Agent(config_file=path)
    agent.start()
    yield agent
    agent.stop_server()
    agent.stop()


def test_the_deploy_job_serves_the_new_model_through_triton(docker_agent: Agent, tmp_path: Path) -> None:
    agent = docker_agent
    agent.add_repo(str(make_repo(tmp_path / "acme").path))
    wait_for(lambda: settled(agent, 5), 900, "the chain", lambda: jobs_summary(agent))
    assert [j.state for j in agent.list_jobs()] == ["done"] * 5, jobs_summary(agent)
    version = agent.status().serving_model
    server = agent.server_status()
    assert server.runtime == "docker" and server.healthy and server.model == version
    assert {s.name for s in server.services if s.healthy} == {"triton", "copilot_proxy"}
    env = (agent.paths.stack / "compose" / ".env").read_text()
    assert f"MODEL='{version}'" in env and "NUM_GPUS='1'" in env
    assert agent.test_completion("def settle_account_4(client", max_tokens=8)
    stopped = agent.stop_server()
    assert not stopped.running and not agent.server_status().running
