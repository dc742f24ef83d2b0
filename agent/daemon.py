"""Running the agent as a process: in the foreground (systemd, the background child) or detached.

- :func:`run_foreground`: start the :class:`~agent.core.Agent` and its API, write the endpoint file, and stop
  both cleanly on SIGTERM/SIGINT.
- :func:`start_background`: spawn ``python -m agent.cli agent start --foreground`` in its own session with its
  output in the agent's log file, and wait until its API answers.
- :func:`stop`: SIGTERM to the pid of the endpoint file, SIGKILL when it does not end in time.
- :func:`status`: the running agent's :class:`~agent.api.models.AgentStatus`, or None.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.api.client import AgentClient
from agent.api.models import AgentStatus
from agent.config import CONFIG_ENV, config_path, load_config
from agent.errors import AgentNotRunning, DaemonError
from agent.paths import AgentPaths
from agent.procs import pid_alive
from pipelines.errors import InputError, RepopilotError

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 90.0
"""How long a stopping agent may take (a training job writes its checkpoint) before it is killed."""


def data_paths(config_file: str | os.PathLike[str] | None = None) -> AgentPaths:
    return AgentPaths(Path(load_config(config_file).agent.data_dir).expanduser())


# -- foreground --------------------------------------------------------------------------------------------


def run_foreground(config_file: str | os.PathLike[str] | None = None, port: int | None = None) -> int:
    """Run the agent and its API until SIGTERM or SIGINT; then stop both and return 0."""
    try:
        from agent.core import Agent
    except ImportError as exc:
        raise InputError(
            f"the agent needs {exc.name or exc}, which is not installed. "
            "Install it with pip install 'repopilot[agent]'.",
            title="Missing dependency",
        ) from None
    from agent.api.server import ApiServer, ensure_token, remove_endpoint, write_endpoint

    os.umask(0o077)  # everything the agent and its jobs write is internal code: this user only
    config = load_config(config_file)
    agent = Agent(config, config_file=config_file)
    stop_requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop_requested.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent.start()
        _log_to_stderr_unless(agent.paths.log_file)
        try:
            server = ApiServer(agent, ensure_token(agent.paths.token_file), port or config.agent.api_port).start()
        except BaseException:
            agent.stop()
            raise
        write_endpoint(agent.paths.endpoint_file, server.url, server.port)
        log.info("agent ready at %s (pid %s)", server.url, os.getpid())
        while not stop_requested.wait(1.0):
            pass
        log.info("stopping (signal received)")
        remove_endpoint(agent.paths.endpoint_file)
        server.stop()
        agent.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _log_to_stderr_unless(log_file: Path) -> None:
    """Log to stderr too (journald under systemd) unless stderr already is the log file (background child)."""
    with contextlib.suppress(OSError, ValueError):
        err, file = os.fstat(sys.stderr.fileno()), os.stat(log_file)
        if (err.st_dev, err.st_ino) == (file.st_dev, file.st_ino):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("agent").addHandler(handler)


# -- background --------------------------------------------------------------------------------------------


def running_client(config_file: str | os.PathLike[str] | None = None) -> AgentClient | None:
    """A client of the agent when one runs and answers, else None."""
    try:
        client = AgentClient.connect(config_file, timeout=10)
        client.status()
    except AgentNotRunning:
        return None
    return client


def start_background(config_file: str | os.PathLike[str] | None = None, timeout: float = 60) -> int:
    """Start the agent detached from this process; return its pid once its API answers.

    Raises DaemonError with the end of its log when it exits or does not answer within ``timeout`` s.
    """
    config_file = config_path(config_file).expanduser().resolve()
    paths = data_paths(config_file)
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**os.environ, CONFIG_ENV: str(config_file)}
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    log_start = paths.log_file.stat().st_size if paths.log_file.exists() else 0
    with open(paths.log_file, "ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "agent", "start", "--foreground"],
            stdin=devnull,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    threading.Thread(target=proc.wait, name="agent-reaper", daemon=True).start()  # no zombie in a long-lived parent
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise DaemonError(f"it exited with code {code}:\n{_log_since(paths.log_file, log_start)}")
        with contextlib.suppress(AgentNotRunning):
            client = AgentClient.from_data_dir(paths.root, timeout=5)
            if client.status().pid == proc.pid:
                return proc.pid
        time.sleep(0.1)
    raise DaemonError(
        f"it did not answer within {timeout:g} s (pid {proc.pid}); it may still be starting, see "
        f"`repopilot agent status`. Its log ends with:\n{_log_since(paths.log_file, log_start)}",
        title="Agent slow to start",
    )


def _log_since(log_file: Path, offset: int, lines: int = 30) -> str:
    try:
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(the log is empty)"


# -- stop and status ---------------------------------------------------------------------------------------


def stop(config_file: str | os.PathLike[str] | None = None, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the running agent: SIGTERM, then SIGKILL after ``timeout`` s. Returns its pid, None if none ran."""
    paths = data_paths(config_file)
    pid = _agent_pid(paths)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        log.warning("agent %s did not stop within %s s; killing it", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)
        with contextlib.suppress(FileNotFoundError):
            paths.endpoint_file.unlink()
    return pid


def _agent_pid(paths: AgentPaths) -> int | None:
    """The pid of the agent on ``paths``, checked against its API (or its command line when it does not answer)."""
    try:
        pid = int(json.loads(paths.endpoint_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(pid):
        return None
    try:
        return AgentClient.from_data_dir(paths.root, timeout=10).status().pid
    except RepopilotError:
        pass  # a stuck agent: trust the pid if it is still an agent process
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if b"agent.cli" in cmdline or any(arg.endswith(b"repopilot") for arg in cmdline) else None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def status(config_file: str | os.PathLike[str] | None = None) -> AgentStatus | None:
    """The running agent's status, None when none runs."""
    client = running_client(config_file)
    return client.status() if client else None
