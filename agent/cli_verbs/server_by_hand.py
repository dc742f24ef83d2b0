"""``repopilot server up | down | swap | logs`` and ``status --stack-dir DIR``: a completion server run by hand,
without the agent (Docker or embedded), its state in a folder of its own (default: the user data dir)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.api.models import ServiceInfo
from agent.config import RUNTIMES, ServerConfig
from agent.runtimes import open_runtime, record_runtime, runtime_in_use
from agent.runtimes.compose import TRITON_CPU_STANDIN_IMAGE
from pipelines.cli_util import Exit
from pipelines.errors import InputError


def default_stack_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("repopilot")) / "stack"


BY_HAND = ("up", "down", "swap", "logs")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add the by-hand verbs to ``repopilot server``."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--stack-dir", type=Path, default=None, help="state folder (default: user data dir)")
    up = verbs.add_parser("up", parents=[where], help="by hand, without the agent: start serving a model")
    up.add_argument("--runtime", choices=RUNTIMES, default="auto")
    up.add_argument("--model", required=True, help="embedded: a model folder; docker: a converted model name")
    up.add_argument("--models-root", type=Path, help="docker: the folder `repopilot convert` wrote to")
    up.add_argument("--num-gpus", type=int, default=1, help="docker: GPUs Triton splits the model over (0..N-1)")
    up.add_argument("--port", type=int, default=5000, help="API port")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1; any other needs --api-key)")
    up.add_argument("--triton-port", type=int, default=8001)
    up.add_argument("--triton-http-port", type=int, default=8000)
    up.add_argument("--triton-metrics-port", type=int, default=8002)
    up.add_argument("--host-network", action="store_true", help="docker: host networking instead of port maps")
    up.add_argument("--cpu-standin", action="store_true", help="docker: the CPU STAND-IN for Triton+FT (no GPU)")
    up.add_argument("--api-key", default="", help="require this Bearer key")
    up.add_argument("--timeout", type=float, default=300)
    verbs.add_parser("down", parents=[where], help="by hand: stop the server started with `up`")
    logs = verbs.add_parser("logs", parents=[where], help="by hand: recent log lines")
    logs.add_argument("service", nargs="?")
    logs.add_argument("--tail", type=int, default=100)
    swap = verbs.add_parser("swap", parents=[where], help="by hand: serve another model; roll back if it fails")
    swap.add_argument("model", help="embedded: a model folder; docker: a converted model name")
    swap.add_argument("--timeout", type=float, default=300)


def _print(statuses: list[ServiceInfo], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([s.__dict__ for s in statuses], indent=2))
        return
    print_services(statuses)


def print_services(statuses: list[ServiceInfo], indent: str = "") -> None:
    """One line per service: its name, its state and what its health check said."""
    for s in statuses:
        state = "healthy" if s.healthy else ("running, unhealthy" if s.running else "stopped")
        print(f"{indent}{s.name:<14} {state:<18} {s.detail}")


def run(args: argparse.Namespace) -> int:
    """A by-hand verb, or ``status`` of a by-hand server."""
    stack_dir = args.stack_dir or default_stack_dir()
    command = args.server_command
    if command == "up":
        return _up(args, stack_dir)
    runtime = runtime_in_use(stack_dir)
    if command == "down":
        runtime.down()
        print("stopped")
    elif command == "status":
        statuses = runtime.status()
        _print(statuses, args.json)
        return Exit.OK if statuses and all(s.healthy for s in statuses) else Exit.CHECK_FAILED
    elif command == "logs":
        print(runtime.logs(args.tail, args.service))
    elif command == "swap":
        _print(runtime.swap(args.model, args.timeout))
    return 0


def _up(args: argparse.Namespace, stack_dir: Path) -> int:
    runtime = open_runtime(args.runtime, stack_dir)
    if runtime.name == "docker" and not args.models_root:
        raise InputError("--models-root is needed with the docker runtime (where `repopilot convert` wrote).")
    server = ServerConfig(
        runtime=runtime.name,
        port=args.port,
        gpus=args.num_gpus,
        api_key=args.api_key,
        host=args.host,
        triton_image=TRITON_CPU_STANDIN_IMAGE if args.cpu_standin else "",
        host_network=args.host_network,
        triton_port=args.triton_port,
        triton_http_port=args.triton_http_port,
        triton_metrics_port=args.triton_metrics_port,
    )
    record_runtime(stack_dir, runtime)
    _print(runtime.start(args.model, server, args.models_root or Path("."), None, args.timeout))
    print(f'VS Code FauxPilot: "fauxpilot.server": "http://localhost:{args.port}/v1"')
    return 0
