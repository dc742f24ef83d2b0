"""The agent's HTTP API: a real Agent on a temp data folder behind the real server, driven by the typed client
and by raw HTTP where the wire matters (token, Host header, status codes, SSE framing)."""

from __future__ import annotations

import contextlib
import http.client
import inspect
import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api.client import AgentClient, RemoteError
from agent.api.models import AgentState, AgentStatus, EventBatch, RepoInfo
from agent.api.server import ApiServer, ensure_token
from agent.api.spec import METHODS
from agent.config import AgentConfig, Config, PolicyConfig, ServerConfig, TrainingConfig
from agent.core import Agent
from agent.errors import NOT_RUNNING, AgentNotRunning, JobError
from pipelines.errors import InputError, RepoError, RepopilotError
from tests.dataset.conftest import Repo, python_file
from tests.services import free_port

NEVER = 10**9  # policy thresholds no change reaches: adding a repo only updates the dataset


class Api:
    def __init__(self, agent: Agent, server: ApiServer, client: AgentClient) -> None:
        self.agent, self.server, self.client = agent, server, client

    def raw(self, verb: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        """(status, JSON body) of a request with exactly these headers (Host included)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            connection.putrequest(verb, path, skip_host=True, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                connection.putheader(key, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def good_headers(self) -> dict[str, str]:
        return {"Host": f"127.0.0.1:{self.server.port}", "Authorization": f"Bearer {self.server.token}"}


def make_repo(path: Path) -> Repo:
    repo = Repo(path)
    repo.commit({"pkg/core.py": python_file("core"), "pkg/util.py": python_file("util", seed=1)})
    return repo


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    config = Config(
        agent=AgentConfig(api_port=free_port(), data_dir=str(tmp_path / "data")),
        training=TrainingConfig(base_model="tiny", max_steps=2),
        policy=PolicyConfig(min_changed_lines=NEVER, min_changed_files=NEVER),
        server=ServerConfig(runtime="embedded", port=free_port()),
    )
    agent = Agent(config, config_file=tmp_path / "config.toml", workers=0)  # jobs stay queued: the API is under test
    agent.start()
    server = ApiServer(agent, ensure_token(agent.paths.token_file), port=0, heartbeat_s=0.3).start()
    try:
        yield Api(agent, server, AgentClient(server.url, server.token, timeout=10))
    finally:
        server.stop()
        agent.stop()


# -- refusals ----------------------------------------------------------------------------------------------


def test_requests_without_the_right_token_are_refused(api: Api) -> None:
    host = {"Host": f"127.0.0.1:{api.server.port}"}
    for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {api.server.token}"}):
        status, body = api.raw("POST", "/api/v1/status", b"{}", {**host, **auth})
        assert status == 401, auth
        assert body["error"]["type"] == "Unauthorized" and body["error"]["title"] == "Not authorized"
    status, _ = api.raw("GET", "/api/v1/events?since=0&timeout=0", None, host)
    assert status == 401

    with pytest.raises(RemoteError) as refused:
        AgentClient(api.server.url, "not-the-token").status()
    assert refused.value.status == 401 and refused.value.title == "Not authorized"
    assert api.agent.list_repos() == []  # nothing happened


def test_a_foreign_host_header_is_refused(api: Api) -> None:
    port = api.server.port
    for host in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "localhost", f"192.168.1.10:{port}", ""):
        status, body = api.raw("POST", "/api/v1/status", b"{}", {**api.good_headers(), "Host": host})
        assert status == 403, host
        assert body["error"]["title"] == "Request refused"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        status, body = api.raw("POST", "/api/v1/status", b"{}", {**api.good_headers(), "Host": host})
        assert status == 200 and body["result"]["state"] == "idle"


def _other_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    found: set[str] = set()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
        found.update(a for a in out.split() if "." in a)
    with contextlib.suppress(OSError):
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    return sorted(a for a in found if not a.startswith("127."))


def test_the_api_is_not_reachable_on_other_interfaces(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.server.port), timeout=5):
        pass  # reachable on loopback
    addresses = _other_addresses()
    if not addresses:
        pytest.skip("this machine has no network interface besides loopback")
    for address in addresses:
        with pytest.raises(OSError), socket.create_connection((address, api.server.port), timeout=3):
            pass


def test_the_token_file_is_private_and_reused(api: Api) -> None:
    token_file = api.agent.paths.token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert ensure_token(token_file) == api.server.token
    os.chmod(token_file, 0o644)
    assert ensure_token(token_file) == api.server.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    fresh = token_file.parent / "other.token"
    assert ensure_token(fresh) != api.server.token and stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_methods_and_routes_outside_the_api_are_refused(api: Api) -> None:
    headers = api.good_headers()
    assert api.raw("POST", "/api/v1/wait_events", b"{}", headers)[0] == 404  # only as GET /events
    assert api.raw("POST", "/api/v1/stop", b"{}", headers)[0] == 404  # not an API method
    assert api.raw("POST", "/api/v1/_changed", b'{"kind": "x"}', headers)[0] == 404
    assert api.raw("GET", "/api/v1/status", None, headers)[0] == 404
    assert api.raw("DELETE", "/api/v1/status", None, headers)[0] == 405
    status, body = api.raw("POST", "/api/v1/status", b"{not json", headers)
    assert status == 400 and body["error"]["title"] == "Bad request"
    status, body = api.raw("POST", "/api/v1/get_job", b'{"id": 1}', headers)
    assert status == 400 and body["error"]["message"] == "get_job: missing a required argument: 'job_id'"


# -- the typed client --------------------------------------------------------------------------------------


def test_typed_client_round_trip(api: Api, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    added = api.client.add_repo(str(repo.path), name="proj", exclude=["*.md"])
    assert isinstance(added, RepoInfo)
    assert (added.name, added.ref, added.head_commit, added.exclude) == ("proj", "main", repo.head(), ["*.md"])
    listed = api.client.list_repos()
    assert [(type(r), r.name, r.path) for r in listed] == [(RepoInfo, "proj", str(repo.path.resolve()))]
    status = api.client.status()
    assert isinstance(status, AgentStatus) and isinstance(status.state, AgentState)
    assert status.repos == 1 and status.pid == os.getpid()
    jobs = api.client.list_jobs()
    assert jobs and jobs[-1].kind == "dataset" and jobs[-1].params["reason"] == "repository proj added"
    assert api.client.get_settings()["training"]["base_model"] == "tiny"
    api.client.remove_repo("proj")
    assert api.client.list_repos() == []


def test_errors_arrive_with_their_class_title_and_message(api: Api, tmp_path: Path) -> None:
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    with pytest.raises(RepoError) as caught:
        api.client.add_repo(str(not_a_repo))
    assert caught.value.title == "Repository problem"
    assert caught.value.message == f"{not_a_repo} is not a git repository (no .git). Pick the folder you cloned."
    assert isinstance(caught.value, RemoteError) and caught.value.status == 400

    with pytest.raises(JobError) as caught:
        api.client.get_job(999)
    assert (caught.value.title, caught.value.message, caught.value.status) == ("Unknown job", "no job with id 999", 404)

    with pytest.raises(RemoteError) as conflict:
        api.client.retrain_now()  # no repository yet
    assert (conflict.value.type, conflict.value.status, conflict.value.title) == (
        "AgentError",
        409,
        "Nothing to train on",
    )

    with pytest.raises(InputError) as bad:
        api.client.update_settings({"training": {"max_steps": -1}})
    assert bad.value.title == "Invalid configuration" and "max_steps" in bad.value.message


def test_hostile_arguments_get_400s_and_server_errors_409(api: Api, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    post = lambda method, body: api.raw("POST", f"/api/v1/{method}", body, api.good_headers())  # noqa: E731
    status, answer = post("add_repo", json.dumps({"path": str(repo.path), "include": "src/**"}).encode())
    assert status == 400 and "include must be an array" in answer["error"]["message"]  # not a list of letters
    for name in ("../../x", "a\nb", "-rf", "." * 3):
        status, answer = post("add_repo", json.dumps({"path": str(repo.path), "name": name}).encode())
        assert status == 400 and "cannot be a repository name" in answer["error"]["message"], name
    assert api.client.list_repos() == []
    status, answer = post("test_completion", b'{"prompt": "def "}')
    assert status == 409 and answer["error"]["type"] == "StackError"  # no server runs: a state, not a bug
    headers = {**api.good_headers(), "Content-Length": "-1"}
    connection = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    connection.putrequest("POST", "/api/v1/status", skip_host=True, skip_accept_encoding=True)
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    response = connection.getresponse()  # answered at once, not a handler waiting for bytes that never come
    assert response.status == 400 and b"negative" in response.read()
    connection.close()
    with pytest.raises(InputError, match="control characters"):
        api.client.update_settings({"server": {"api_key": "k\nTRITON_IMAGE=attacker/evil:latest"}})


def test_connections_past_the_cap_are_closed_at_once(api: Api) -> None:
    from agent.api.server import MAX_CONNECTIONS

    held = [socket.create_connection(("127.0.0.1", api.server.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)  # each has its thread, waiting for a request
        extra = socket.create_connection(("127.0.0.1", api.server.port), timeout=10)
        assert extra.recv(1) == b""  # closed by the server, no thread for it
        extra.close()
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.5)
    assert api.client.status().pid == os.getpid()  # the slots came back


def test_an_unexpected_failure_is_a_500_without_traceback(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(api.agent, "dataset", broken)
    status, body = api.raw("POST", "/api/v1/dataset", b"", api.good_headers())
    assert status == 500
    assert body["error"]["title"] == "Internal agent error"
    assert body["error"]["message"].startswith("ZeroDivisionError: division by zero.")
    assert "Traceback" not in json.dumps(body)
    with pytest.raises(RepopilotError, match="Internal agent error: ZeroDivisionError"):
        api.client.dataset()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_agent_and_the_client_have_the_api_declared_once(name: str) -> None:
    """The Agent implements each method of the one API declaration with its exact signature (names, defaults,
    types of arguments and result); the client's methods are that declaration."""

    def shape(func) -> list[tuple[str, object, object]]:
        signature = inspect.signature(func)
        return [(p.name, p.default, p.annotation) for p in signature.parameters.values()] + [
            ("return", None, signature.return_annotation)
        ]

    assert shape(getattr(Agent, name)) == shape(METHODS[name])
    assert shape(getattr(AgentClient, name)) == shape(METHODS[name])


def test_a_stopped_agent_reads_as_not_running(tmp_path: Path) -> None:
    with pytest.raises(AgentNotRunning) as caught:
        AgentClient(f"http://127.0.0.1:{free_port()}", "token").status()
    assert str(caught.value) == f"Agent not running: {NOT_RUNNING}"
    with pytest.raises(AgentNotRunning):
        AgentClient.from_data_dir(tmp_path)  # no endpoint file


# -- events ------------------------------------------------------------------------------------------------


def _add_repo_later(agent: Agent, path: Path, delay: float = 0.3) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), agent.add_repo(str(path), name="later")))
    thread.start()
    return thread


def test_long_poll_times_out_then_wakes_up_on_an_event(api: Api, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    cursor = api.client.wait_events(0, 0).cursor
    started = time.monotonic()
    empty = api.client.wait_events(cursor, 0.5)
    assert isinstance(empty, EventBatch) and empty.events == [] and empty.cursor == cursor
    assert 0.4 <= time.monotonic() - started < 10  # its own timeout, not the caller's 20 s

    thread = _add_repo_later(api.agent, repo.path)
    started = time.monotonic()
    batch = api.client.wait_events(cursor, 20)
    thread.join()
    assert time.monotonic() - started < 15  # woke up on the event, not at the 20 s timeout
    assert batch.cursor > cursor and all(e.seq > cursor for e in batch.events)
    assert ("repo", {"name": "later", "action": "added"}) in [(e.kind, e.data) for e in batch.events]


def test_the_event_stream_yields_events_as_they_happen(api: Api, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    cursor = api.client.wait_events(0, 0).cursor
    stream = api.client.stream_events(since=cursor, idle_timeout=10)
    thread = _add_repo_later(api.agent, repo.path)
    try:
        seen = []
        for event in stream:
            assert event.seq > cursor
            seen.append((event.kind, event.data))
            if event.kind == "repo":
                break
    finally:
        stream.close()
        thread.join()
    assert seen[0] == ("repo", {"name": "later", "action": "added"})


def test_the_event_stream_speaks_server_sent_events(api: Api) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    try:
        connection.request("GET", "/api/v1/events/stream?since=0", headers=api.good_headers())
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        lines: list[str] = []
        while not any(line.startswith(":") for line in lines[3:]):  # a heartbeat after the first event
            lines.append(response.readline().decode().rstrip("\n"))
    finally:
        connection.close()
    first = lines.index("id: 1")
    assert lines[first + 1] == "event: status"
    data = json.loads(lines[first + 2].removeprefix("data: "))
    assert data["seq"] == 1 and data["kind"] == "status" and data["data"] == {"message": "agent started"}
    assert lines[first + 3] == ""
