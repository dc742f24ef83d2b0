"""``repopilot stack up|down|status|logs|swap``: the completion server, in Docker or embedded."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from agent.errors import StackError
from agent.runtimes.compose import TRITON_CPU_STANDIN_IMAGE, TRITON_IMAGE, StackSettings
from agent.runtimes.docker_stack import DockerStack, docker_available
from agent.runtimes.embedded import EmbeddedRuntime, ServiceStatus
from pipelines.errors import InputError


def default_stack_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("repopilot")) / "stack"


def has_nvidia_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def choose_runtime(requested: str) -> str:
    """docker where Docker and an NVIDIA GPU exist, else the embedded runtime."""
    if requested != "auto":
        return requested
    return "docker" if docker_available() and has_nvidia_gpu() else "embedded"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("stack", help="run the completion server (FauxPilot stack or embedded)")
    parser.add_argument("--stack-dir", type=Path, default=None, help="state folder (default: user data dir)")
    commands = parser.add_subparsers(dest="stack_command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start serving a model")
    up.add_argument("--runtime", choices=("auto", "docker", "embedded"), default="auto")
    up.add_argument("--model", required=True, help="embedded: a model folder; docker: a converted model name")
    up.add_argument("--models-root", type=Path, help="docker: the folder `repopilot convert` wrote to")
    up.add_argument("--num-gpus", type=int, default=1)
    up.add_argument("--gpus", default="0", help="docker: CUDA_VISIBLE_DEVICES for Triton, e.g. 0,1")
    up.add_argument("--port", type=int, default=5000, help="API port")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1; any other needs --api-key)")
    up.add_argument("--triton-port", type=int, default=8001)
    up.add_argument("--triton-http-port", type=int, default=8000)
    up.add_argument("--triton-metrics-port", type=int, default=8002)
    up.add_argument("--host-network", action="store_true", help="docker: host networking instead of port maps")
    up.add_argument("--cpu-standin", action="store_true", help="docker: the CPU STAND-IN for Triton+FT (no GPU)")
    up.add_argument("--api-key", default="", help="require this Bearer key")
    up.add_argument("--timeout", type=float, default=300)

    commands.add_parser("down", help="stop the completion server")
    status = commands.add_parser("status", help="per-service state and health")
    status.add_argument("--json", action="store_true")
    logs = commands.add_parser("logs", help="recent log lines")
    logs.add_argument("service", nargs="?")
    logs.add_argument("--tail", type=int, default=100)
    swap = commands.add_parser("swap", help="serve another model; roll back if it fails its checks")
    swap.add_argument("model", help="embedded: a model folder; docker: a converted model name")
    swap.add_argument("--timeout", type=float, default=300)


def _runtime_of(stack_dir: Path) -> str:
    marker = stack_dir / "runtime"
    if not marker.exists():
        raise StackError("No completion server was started here. Start one with `repopilot stack up`.")
    return marker.read_text().strip()


def _print(statuses: list[ServiceStatus], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([s.__dict__ for s in statuses], indent=2))
        return
    for s in statuses:
        state = "healthy" if s.healthy else ("running, unhealthy" if s.running else "stopped")
        print(f"{s.name:<14} {state:<18} {s.detail}")


def run(args: argparse.Namespace) -> int:
    stack_dir = args.stack_dir or default_stack_dir()
    command = args.stack_command
    if command == "up":
        runtime = choose_runtime(args.runtime)
        stack_dir.mkdir(parents=True, exist_ok=True)
        if runtime == "embedded":
            (stack_dir / "runtime").write_text("embedded")
            status = EmbeddedRuntime(stack_dir).up(
                Path(args.model), args.port, args.host, api_key=args.api_key, timeout=args.timeout
            )
            _print([status])
            print(f'VS Code FauxPilot: "fauxpilot.server": "http://localhost:{args.port}/v1"')
            return 0
        if not args.models_root:
            raise InputError("--models-root is needed with the docker runtime (where `repopilot convert` wrote).")
        settings = StackSettings(
            models_root=str(args.models_root.resolve()),
            model=args.model,
            num_gpus=args.num_gpus,
            gpus=args.gpus,
            api_port=args.port,
            triton_port=args.triton_port,
            triton_http_port=args.triton_http_port,
            triton_metrics_port=args.triton_metrics_port,
            host_network=args.host_network,
            triton_host="127.0.0.1" if args.host_network else "triton",
            gpu=has_nvidia_gpu() and not args.cpu_standin,
            triton_image=TRITON_CPU_STANDIN_IMAGE if args.cpu_standin else TRITON_IMAGE,
            api_key=args.api_key,
            bind=args.host,
        )
        (stack_dir / "runtime").write_text("docker")
        _print(DockerStack(stack_dir / "compose").up(settings, args.timeout))
        return 0
    runtime = _runtime_of(stack_dir)
    embedded = EmbeddedRuntime(stack_dir)
    docker = DockerStack(stack_dir / "compose")
    if command == "down":
        embedded.down() if runtime == "embedded" else docker.down()
        print("stopped")
    elif command == "status":
        statuses = [embedded.status()] if runtime == "embedded" else docker.status()
        _print(statuses, args.json)
        return 0 if all(s.healthy for s in statuses) else 3
    elif command == "logs":
        print(embedded.logs(args.tail) if runtime == "embedded" else docker.logs(args.service, args.tail))
    elif command == "swap":
        if runtime == "embedded":
            _print([embedded.swap(Path(args.model), args.timeout)])
        else:
            _print(docker.swap(args.model, args.timeout))
    return 0
