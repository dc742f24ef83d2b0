"""``repopilot server``: the completion server for the IDE, the one command group for it.

``start | stop | status | test | vscode`` act on the agent's server (the deployed model); ``up | down | swap |
logs`` (and ``status --stack-dir DIR``) run one by hand, without the agent (:mod:`agent.cli_verbs.server_by_hand`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.api.models import ServerInfo
from agent.cli_verbs import server_by_hand
from agent.cli_verbs.common import client, config_option, json_option, print_json
from pipelines.cli_util import Exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("server", help="the agent's completion server for the IDE")
    verbs = parser.add_subparsers(dest="server_command", required=True, metavar="COMMAND")
    config, as_json = config_option(), json_option()
    verbs.add_parser("start", parents=[config, as_json], help="start serving the deployed model")
    verbs.add_parser("stop", parents=[config, as_json], help="stop the completion server")
    status = verbs.add_parser("status", parents=[config, as_json], help="is it up and healthy, and what it serves")
    status.add_argument("--stack-dir", type=Path, default=None, help="of a server started by hand with `up` there")
    test = verbs.add_parser("test", parents=[config], help="ask the server for a completion, as the IDE would")
    test.add_argument("prompt", nargs="?", default="def ", help="text to complete (default: 'def ')")
    test.add_argument("--max-tokens", type=int, default=32)
    verbs.add_parser("vscode", parents=[config], help="print the VS Code FauxPilot settings for this server")
    server_by_hand.add_verbs(verbs)


def run(args: argparse.Namespace) -> int:
    command = args.server_command
    if command in server_by_hand.BY_HAND or (command == "status" and args.stack_dir is not None):
        return server_by_hand.run(args)
    agent = client(args)
    if command == "test":
        print(args.prompt + agent.test_completion(args.prompt, args.max_tokens))
        return 0
    if command == "vscode":
        print(json.dumps(agent.vscode_settings(), indent=2))
        return 0
    info = {"start": agent.start_server, "stop": agent.stop_server, "status": agent.server_status}[command]()
    print_json(info) if args.json else print_server(info)
    if command == "status" and not (info.running and info.healthy):
        return Exit.CHECK_FAILED
    return 0


def print_server(info: ServerInfo) -> None:
    state = "healthy" if info.healthy else ("running, unhealthy" if info.running else "stopped")
    print(f"Completion server ({info.runtime}): {state}, model {info.model or '(none deployed)'}")
    print(f"  url:    {info.url}")
    print(f"  detail: {info.detail}")
    server_by_hand.print_services(info.services, indent="  ")
