"""`repopilot agent|repo|job|model` as a user runs them: real subprocesses, a real background agent on a temp data
folder (its config named by REPOPILOT_CONFIG), and the systemd unit / autostart entry that start it."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.api.client import connect_or_start, pid_alive
from agent.cli import build_parser
from agent.cli_verbs.job_cmd import _after
from agent.config import AgentConfig, Config, PolicyConfig, ServerConfig, TrainingConfig, save_config
from agent.daemon import start_background
from tests.dataset.conftest import Repo, python_file
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
NEVER = 10**9  # policy thresholds no change reaches: adding a repo only queues a dataset update


@dataclass
class Cli:
    config: Path
    data: Path

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "REPOPILOT_CONFIG": str(self.config)}
        env.pop("REPOPILOT_DEBUG", None)
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, f"repopilot {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    def endpoint(self) -> dict:
        return json.loads((self.data / "agent.json").read_text())


def make_cli(root: Path, port: int | None = None) -> Cli:
    config = Config(
        agent=AgentConfig(api_port=port or free_port(), data_dir=str(root / "data")),
        training=TrainingConfig(base_model="tiny", max_steps=2),
        policy=PolicyConfig(min_changed_lines=NEVER, min_changed_files=NEVER),
        server=ServerConfig(runtime="embedded", port=free_port()),
    )
    return Cli(save_config(config, root / "config.toml"), root / "data")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Cli]:
    """A config for an agent that this test starts; stopped afterwards whatever happened."""
    cli = make_cli(tmp_path)
    yield cli
    cli("agent", "stop")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """One background agent for the tests of this module that only need it running."""
    cli = make_cli(tmp_path_factory.mktemp("agent"))
    assert cli.ok("agent", "start").startswith("Agent started (pid ")
    yield cli
    cli("agent", "stop")


def test_start_status_stop(fresh: Cli) -> None:
    cli = fresh
    assert cli("agent", "status").returncode == 3

    out = cli.ok("agent", "start")
    pid = cli.endpoint()["pid"]
    assert out == f"Agent started (pid {pid}).\n" and pid_alive(pid)
    assert stat.S_IMODE((cli.data / "agent.token").stat().st_mode) == 0o600
    assert cli.endpoint()["url"] == f"http://127.0.0.1:{cli.endpoint()['port']}"
    assert f"Agent running (pid {pid}," in cli.ok("agent", "status")
    status = cli.json("agent", "status")
    assert status["running"] is True and status["status"]["pid"] == pid and status["status"]["state"] == "idle"

    assert cli.ok("agent", "stop") == f"Agent stopped (pid {pid}).\n"
    assert not pid_alive(pid)
    assert not (cli.data / "agent.json").exists()
    assert "agent stopped" in (cli.data / "agent.log").read_text()  # a clean stop on SIGTERM
    stopped = cli("agent", "status")
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    assert json.loads(cli("agent", "status", "--json").stdout) == {"running": False}
    assert cli.ok("agent", "stop") == "The agent is not running.\n"

    after = cli("repo", "list")
    assert after.returncode == 1
    assert after.stderr == (
        "Agent not running: The repopilot agent is not running. Start it with `repopilot agent start`.\n"
    )


def readable_by_others(root: Path) -> list[str]:
    return [str(p) for p in [root, *root.rglob("*")] if not p.is_symlink() and p.stat().st_mode & 0o077]


def test_the_data_folder_is_private_to_its_user(fresh: Cli, tmp_path: Path) -> None:
    """It holds internal code: what an older version left open is closed at start, and what the agent and its
    jobs write later (the dataset of a watched repo here) is created private."""
    old = fresh.data / "datasets" / "old"
    old.mkdir(parents=True)
    (old / "train.jsonl").write_text('{"text": "internal"}\n')
    for path in (fresh.data, fresh.data / "datasets", old):
        path.chmod(0o755)
    (old / "train.jsonl").chmod(0o644)
    fresh.ok("agent", "start")
    assert readable_by_others(fresh.data) == []
    assert "readable by this user only" in (fresh.data / "agent.log").read_text()
    repo = Repo(tmp_path / "project")
    repo.commit({"app.py": python_file("app")})
    fresh.ok("repo", "add", str(repo.path))
    deadline = time.monotonic() + 120
    while not list((fresh.data / "datasets").rglob("manifest.json")):
        assert time.monotonic() < deadline, "the agent built no dataset"
        time.sleep(0.5)
    assert readable_by_others(fresh.data) == []


def test_connect_or_start_starts_the_agent_once(fresh: Cli) -> None:
    client = connect_or_start(fresh.config, 60, start_background)
    pid = client.status().pid
    assert pid == fresh.endpoint()["pid"] and pid != os.getpid()
    assert (
        connect_or_start(fresh.config, 60, start_background).status().pid == pid
    )  # the running one, not a second agent


def test_a_second_start_finds_the_agent_running(running: Cli) -> None:
    pid = running.endpoint()["pid"]
    again = running.ok("agent", "start")
    assert again.startswith(f"The agent already runs (pid {pid}, http://127.0.0.1:")
    foreground = running("agent", "start", "--foreground", timeout=60)
    assert foreground.returncode == 1
    assert foreground.stderr.startswith("Agent already running: Another agent already uses ")
    assert running.endpoint()["pid"] == pid and pid_alive(pid)


def test_repo_and_job_verbs(running: Cli, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "billing")
    repo.commit({"billing/core.py": python_file("core")})
    assert running.ok("repo", "add", str(repo.path), "--exclude", "*.md").startswith("Watching billing (")

    repos = running.json("repo", "list")
    assert [(r["name"], r["path"], r["exclude"], r["head_commit"]) for r in repos] == [
        ("billing", str(repo.path.resolve()), ["*.md"], repo.head())
    ]
    table = running.ok("repo", "list").splitlines()
    assert table[0].split() == ["NAME", "REF", "HEAD", "INDEXED", "FILES", "PATH"]
    assert table[1].split()[:3] == ["billing", "main", repo.head()[:10]]

    jobs = running.json("job", "list")
    dataset = next(j for j in jobs if j["params"].get("reason") == "repository billing added")
    assert dataset["kind"] == "dataset"
    shown = running.json("job", "show", str(dataset["id"]))
    assert shown["id"] == dataset["id"] and shown["kind"] == "dataset"
    assert running.ok("job", "show", str(dataset["id"])).startswith(f"Job {dataset['id']}: dataset, ")
    assert running.json("model", "list") == []

    assert running.ok("repo", "remove", "billing") == "Stopped watching billing.\n"
    assert running.json("repo", "list") == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("repo", "add", "/nonexistent"), "Repository problem: /nonexistent does not exist."),
        (("repo", "remove", "nope"), "Unknown repository: no watched repository called 'nope'"),
        (("job", "show", "999"), "Unknown job: no job with id 999"),
        (("job", "cancel", "999"), "Unknown job: no job with id 999"),
        (("model", "show", "v9"), "Unknown model: no model with version 'v9'"),
        (("model", "rollback"), "Nothing to roll back: No model is deployed"),
    ],
)
def test_errors_exit_1_with_title_and_message(running: Cli, args: tuple[str, ...], expected: str) -> None:
    result = running(*args)
    assert result.returncode == 1
    assert result.stderr.startswith(expected), result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_start_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cli = make_cli(tmp_path, port=taken.getsockname()[1])
        started = time.monotonic()
        result = cli("agent", "start")
    assert result.returncode == 1
    assert result.stderr.startswith("Agent did not start: it exited with code 1:")
    assert "Agent port in use: cannot listen on 127.0.0.1:" in result.stderr
    assert time.monotonic() - started < 30
    assert not (cli.data / "agent.json").exists()


def test_following_a_log_prints_each_line_once() -> None:
    assert _after([], ["a", "b"]) == ["a", "b"]
    assert _after(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert _after(["x", "y"], ["x", "y"]) == []
    assert _after(["a", "b", "a"], ["a", "b", "a", "b", "a"]) == ["b", "a"]  # the longest overlap wins
    assert _after(["old"], ["new"]) == ["new"]  # rotated or truncated: all of it


# -- packaging ---------------------------------------------------------------------------------------------


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return parser


def _runs_our_cli(command: str, foreground: bool) -> None:
    words = shlex.split(command)
    cli_args = words[words.index("repopilot") + 1 :]
    assert cli_args == ["agent", "start", "--foreground"] if foreground else ["agent", "start"]
    parser, _ = build_parser()
    parsed = parser.parse_args(cli_args)
    assert (parsed.command, parsed.agent_command, parsed.foreground) == ("agent", "start", foreground)


def test_the_systemd_unit_runs_the_agent_in_the_foreground() -> None:
    unit = ROOT / "packaging" / "systemd" / "repopilot-agent.service"
    parsed = _ini(unit)
    assert set(parsed.sections()) == {"Unit", "Service", "Install"}
    service = parsed["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert parsed["Install"]["WantedBy"] == "default.target"
    _runs_our_cli(service["ExecStart"], foreground=True)
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        if "Failed to initialize manager" not in verify.stderr:
            assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def test_the_autostart_entry_starts_the_agent_in_the_background() -> None:
    entry = ROOT / "packaging" / "autostart" / "repopilot-agent.desktop"
    desktop = _ini(entry)["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Name"] and desktop["Terminal"] == "false"
    assert desktop.get("Hidden", "false") == "false"
    _runs_our_cli(desktop["Exec"], foreground=False)
    if shutil.which("desktop-file-validate"):
        validate = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True, timeout=60)
        assert validate.returncode == 0, validate.stdout + validate.stderr
