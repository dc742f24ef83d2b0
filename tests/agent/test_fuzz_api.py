"""The agent's HTTP API under hostile input, against a real agent daemon (`repopilot agent start`).

Hypothesis posts random and hostile bodies to every API method (with the method's argument names and
values of any JSON type, size and encoding) and to unknown ones; every answer must be a non-5xx with the
API's error shape where it is one, within a bound; the agent must still answer afterwards.
"""

from __future__ import annotations

import http.client
import inspect
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.api import API_PREFIX
from agent.api.spec import RPC_METHODS
from agent.config import AgentConfig, Config, PolicyConfig, ServerConfig, TrainingConfig, save_config
from agent.core import Agent
from tests.fuzzing import FUZZ, RESPONSE_BOUND_S, bodies
from tests.services import free_port

NEVER = 10**9
ARGUMENTS = {m: [p for p in inspect.signature(getattr(Agent, m)).parameters if p != "self"] for m in RPC_METHODS}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    root = tmp_path_factory.mktemp("fuzz-agent")
    config = Config(
        agent=AgentConfig(api_port=free_port(), data_dir=str(root / "data")),
        training=TrainingConfig(base_model="tiny", max_steps=2),
        policy=PolicyConfig(min_changed_lines=NEVER, min_changed_files=NEVER),
        server=ServerConfig(runtime="embedded", port=free_port(), start_on_deploy=False),
    )
    path = save_config(config, root / "config.toml")
    env = {**os.environ, "REPOPILOT_CONFIG": str(path)}

    def cli(*args: str) -> subprocess.CompletedProcess:  # from a folder that is no repository: "." adds nothing
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=root, env=env, capture_output=True)

    started = cli("agent", "start")
    assert started.returncode == 0, started.stderr
    endpoint = json.loads((root / "data" / "agent.json").read_text())
    yield endpoint["port"], (root / "data" / "agent.token").read_text().strip()
    cli("agent", "stop")
    assert "Traceback" not in (root / "data" / "agent.log").read_text()


def call(agent: tuple[int, str], method: str, body: bytes) -> tuple[int, dict]:
    port, token = agent
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=RESPONSE_BOUND_S)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Host": f"127.0.0.1:{port}"}
    try:
        connection.request("POST", API_PREFIX + urllib.parse.quote(method), body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


# Calls that would stop what the fuzzing talks to, or start slow work, are fuzzed with arguments only.
QUIET = sorted(RPC_METHODS - {"stop_server", "start_server", "retrain_now", "update_settings", "test_completion"})
METHODS = st.one_of(st.sampled_from(sorted(RPC_METHODS)), st.text(max_size=20))


@st.composite
def requests(draw) -> tuple[str, bytes]:
    method = draw(METHODS)
    fields = {name: st.nothing() for name in ARGUMENTS.get(method, [])}
    body = draw(bodies(fields))
    if method not in QUIET and method in RPC_METHODS and body.strip() in (b"", b"{}", b"null"):
        body = b'{"unexpected": 1}'  # keeps them from running for real
    return method, body


@FUZZ
@given(request=requests())
def test_hostile_calls_get_4xx_or_an_answer_never_5xx(agent: tuple[int, str], request: tuple[str, bytes]) -> None:
    method, body = request
    started = time.monotonic()
    status, answer = call(agent, method, body)
    assert time.monotonic() - started < RESPONSE_BOUND_S
    assert status < 500, answer
    if status >= 400:
        assert set(answer["error"]) == {"type", "title", "message"} and answer["error"]["message"]


def test_the_agent_still_answers_after_the_fuzzing(agent: tuple[int, str]) -> None:
    status, answer = call(agent, "status", b"{}")
    assert status == 200 and answer["result"]["pid"]


@pytest.mark.parametrize(
    "body", [b'{"path": "\\ud800"}', b"[" * 100_000, b'{"path": "/tmp/a\\u0000b"}', b"\xff", b'{"path": 5}']
)
def test_malformed_calls_are_400_with_a_reason(agent: tuple[int, str], body: bytes) -> None:
    status, answer = call(agent, "add_repo", body)
    assert status == 400 and answer["error"]["message"]
