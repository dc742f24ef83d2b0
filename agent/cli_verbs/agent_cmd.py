"""``repopilot agent start [--foreground] | stop | status [--json] | logs [-n N]``: the agent process."""

from __future__ import annotations

import argparse
import json
import time

from agent import daemon
from agent.api.models import AgentStatus
from agent.cli_verbs.common import client, config_option, json_option, print_json
from agent.errors import NOT_RUNNING
from pipelines.cli_util import Exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("agent", help="start, stop or look at the background agent")
    verbs = parser.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    config = config_option()
    start = verbs.add_parser("start", parents=[config], help="start the agent in the background")
    start.add_argument("--foreground", action="store_true", help="run in this process until SIGTERM (systemd)")
    start.add_argument("--timeout", type=float, default=60, help="seconds to wait for it to answer")
    stop = verbs.add_parser("stop", parents=[config], help="stop the agent (running jobs resume at next start)")
    stop.add_argument("--timeout", type=float, default=daemon.STOP_TIMEOUT_S, help="seconds before it is killed")
    verbs.add_parser("status", parents=[config, json_option()], help="is it running, and what is it doing")
    logs = verbs.add_parser("logs", parents=[config], help="the end of the agent's log")
    logs.add_argument("-n", "--lines", type=int, default=100)
    wait = verbs.add_parser("wait", parents=[config], help="follow the agent until no job is queued or running")
    wait.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds (exit 3)")


def run(args: argparse.Namespace) -> int:
    command = args.agent_command
    if command == "start":
        if args.foreground:
            return daemon.run_foreground(args.config)
        running = daemon.running_client(args.config)
        if running is not None:
            print(f"The agent already runs (pid {running.status().pid}, {running.url}).")
            return 0
        pid = daemon.start_background(args.config, timeout=args.timeout)
        print(f"Agent started (pid {pid}).")
        return 0
    if command == "stop":
        pid = daemon.stop(args.config, timeout=args.timeout)
        print(f"Agent stopped (pid {pid})." if pid else "The agent is not running.")
        return 0
    if command == "status":
        running = daemon.running_client(args.config)
        if running is None:
            print(json.dumps({"running": False}) if args.json else NOT_RUNNING)
            return Exit.CHECK_FAILED
        status = running.status()
        if args.json:
            print_json({"running": True, "url": running.url, "status": status})
        else:
            print_status(status, running.url)
        return 0
    if command == "wait":
        return wait_idle(client(args), args.timeout)
    if command == "logs":
        text = client(args).agent_log(args.lines)
        if text:
            print(text)
        return 0
    raise AssertionError(command)


def wait_idle(agent, timeout: float) -> int:
    """Print each new state line until nothing is queued or running; 0, 1 when the last job failed, 3 on timeout."""
    deadline = time.monotonic() + timeout
    cursor, shown = 0, ""
    while time.monotonic() < deadline:
        status = agent.status()
        progress = f" {status.progress:.0%}" if status.progress is not None else ""
        line = f"{status.state.value}{progress}: {status.detail}"
        if line != shown:
            print(line, flush=True)
            shown = line
        if status.running_job is None and status.jobs_queued == 0:
            failed = status.last_error is not None and status.last_error.job is not None
            return 1 if failed else 0
        cursor = agent.wait_events(cursor, min(5.0, max(deadline - time.monotonic(), 0.1))).cursor
    print(f"still busy after {timeout:.0f} s")
    return Exit.CHECK_FAILED


def print_status(status: AgentStatus, url: str) -> None:
    progress = f" ({status.progress:.0%})" if status.progress is not None else ""
    print(f"Agent running (pid {status.pid}, version {status.version}, API {url})")
    print(f"  state:    {status.state.value}{progress}: {status.detail}")
    print(f"  watching: {status.repos} repositor{'y' if status.repos == 1 else 'ies'}" + (" (paused)" * status.paused))
    print(
        f"  jobs:     {status.jobs_queued} queued" + (f", job {status.running_job} running" * bool(status.running_job))
    )
    server = "running" if status.server_running else "stopped"
    print(f"  serving:  {status.serving_model or 'no model yet'} (completion server {server})")
    if status.last_error:
        job = f" (job {status.last_error.job})" if status.last_error.job else ""
        print(f"  error:    {status.last_error.title}: {status.last_error.message}{job}")
