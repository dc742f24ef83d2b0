"""Generate the FauxPilot-style compose project: ``.env`` and ``docker-compose.yaml``.

The files are what FauxPilot's setup.sh would write, so a user can also run the stack by hand with
``docker compose up`` (or ``docker-compose up``) in the project folder. Two services:

- ``triton``: Triton with the FasterTransformer backend (FauxPilot's image), the converted model folder
  ``MODEL_DIR`` (``<models_root>/<name>-<N>gpu``) mounted at ``/model``, GPU reservation when there is a GPU;
- ``copilot_proxy``: repopilot's completion API (``repopilot serve --engine triton``), on ``API_EXTERNAL_PORT``.

Nothing is published beyond this machine unless asked: the API on ``API_BIND`` (default 127.0.0.1; another
address needs an API key), Triton on 127.0.0.1 only (the API container reaches it over the project network).
Every ``.env`` value is single-quoted, which compose reads literally (no ``$`` interpolation, no ``#``
comments); a value that cannot be written so (a quote or a line break) is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.paths import CURRENT_DATASET
from pipelines.convert.layout import ft_folder
from pipelines.errors import InputError
from pipelines.fsutil import write_bytes_atomic
from pipelines.serve.exposure import DEFAULT_HOST, check_address, exposure_problem

TRITON_IMAGE = "repopilot/triton-ft:22.09"
TRITON_CPU_STANDIN_IMAGE = "repopilot/triton-cpu-standin:latest"
API_IMAGE = "repopilot/api:latest"
API_COMMAND = (
    "repopilot serve /hf --engine triton --host ${API_BIND} --port ${API_EXTERNAL_PORT} --triton-host ${TRITON_HOST} "
    "--triton-port ${TRITON_PORT}"
)
LOOPBACK_ONLY = "--grpc-address=127.0.0.1 --http-address=127.0.0.1 --allow-metrics=false"
ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
UNWRITABLE = {"'": "a single quote", "\n": "a line break", "\r": "a carriage return", "\0": "a NUL character"}


@dataclass
class StackSettings:
    """What the stack serves and where; written to ``.env`` (FauxPilot's keys plus a few of ours)."""

    models_root: str
    """Folder holding converted models (``<name>-<N>gpu`` and ``<name>-hf``)."""
    model: str
    """Name of the converted model to serve."""
    num_gpus: int = 1
    gpus: str = "0"
    api_port: int = 5000
    triton_host: str = "triton"
    triton_port: int = 8001
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    hf_cache_dir: str = str(Path.home() / ".cache" / "huggingface")
    gpu: bool = True
    """Reserve NVIDIA GPUs for Triton (off where there is none)."""
    host_network: bool = False
    """Run both services on the host network (no port mapping; TRITON_HOST must then be 127.0.0.1)."""
    triton_image: str = TRITON_IMAGE
    api_image: str = API_IMAGE
    api_key: str = ""
    """Clients must send it as a bearer token (passed to the API container as REPOPILOT_API_KEY)."""
    bind: str = DEFAULT_HOST
    """Host address the API is published on; anything but loopback needs ``api_key``."""
    context_dir: str = ""
    """A folder of datasets mounted read-only in the API container; its ``current`` entry gives repository
    context (``repopilot serve --context-dataset``). Empty: no context."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return ft_folder(Path(self.models_root), self.model, self.num_gpus)

    @property
    def hf_dir(self) -> Path:
        return Path(self.models_root) / f"{self.model}-hf"

    def env(self) -> dict[str, str]:
        values = {
            "NUM_GPUS": str(self.num_gpus),
            "GPUS": self.gpus,
            "API_EXTERNAL_PORT": str(self.api_port),
            "TRITON_HOST": self.triton_host,
            "TRITON_PORT": str(self.triton_port),
            "TRITON_HTTP_PORT": str(self.triton_http_port),
            "TRITON_METRICS_PORT": str(self.triton_metrics_port),
            "MODEL": self.model,
            "MODEL_DIR": str(self.model_dir),
            "HF_DIR": str(self.hf_dir),
            "HF_CACHE_DIR": self.hf_cache_dir,
            "TRITON_IMAGE": self.triton_image,
            "API_IMAGE": self.api_image,
            "API_BIND": self.bind,
        }
        if self.api_key:
            values["REPOPILOT_API_KEY"] = self.api_key
        if self.context_dir:
            values["CONTEXT_DIR"] = self.context_dir
        values.update(self.extra)
        return values

    def check(self) -> None:
        """Refuse what would expose internal code or cannot be written to ``.env``."""
        problem = check_address(self.bind) or exposure_problem(self.bind, self.api_key, "the docker stack")
        if problem:
            raise InputError(problem, title="Stack not started")
        for key, value in self.env().items():
            env_line(key, value)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def env_line(key: str, value: str) -> str:
    """``KEY='value'``: compose takes a single-quoted value literally. Raises InputError for what it cannot."""
    if not ENV_KEY.match(key):
        raise InputError(f"{key!r} cannot be a compose .env key: use capitals, digits and _ only.")
    bad = next((name for char, name in UNWRITABLE.items() if char in value), None)
    if bad:
        raise InputError(
            f"The value of {key} ({value[:60]!r}) holds {bad}, which a compose .env file cannot carry literally. "
            "Change the setting it comes from (a path, image name, model name or API key) to one without it.",
            title="Stack not started",
        )
    return f"{key}='{value}'"


def render_env(settings: StackSettings) -> str:
    lines = ["# Written by repopilot (FauxPilot's keys). `repopilot server swap` edits MODEL and MODEL_DIR."]
    lines += [env_line(key, value) for key, value in settings.env().items()]
    return "\n".join(lines) + "\n"


def render_compose(settings: StackSettings) -> str:
    """docker-compose.yaml as text (JSON is valid YAML, so no YAML library is needed to write it)."""
    triton: dict[str, Any] = {
        "image": "${TRITON_IMAGE}",
        "command": [
            "bash",
            "-c",
            "CUDA_VISIBLE_DEVICES=${GPUS} /opt/tritonserver/bin/tritonserver --model-repository=/model "
            "--grpc-port=${TRITON_PORT} --http-port=${TRITON_HTTP_PORT} --metrics-port=${TRITON_METRICS_PORT}",
        ],
        "shm_size": "2gb",
        "volumes": ["${MODEL_DIR}:/model", "${HF_CACHE_DIR}:/root/.cache/huggingface"],
        "restart": "unless-stopped",
    }
    api: dict[str, Any] = {
        "image": "${API_IMAGE}",
        "command": API_COMMAND.split(),
        "env_file": [".env"],
        "volumes": ["${HF_DIR}:/hf:ro"],
        "depends_on": ["triton"],
        "restart": "unless-stopped",
    }
    if settings.context_dir:
        api["volumes"].append("${CONTEXT_DIR}:/datasets:ro")
        api["command"] += ["--context-dataset", f"/datasets/{CURRENT_DATASET}"]
    if settings.host_network:
        triton["network_mode"] = api["network_mode"] = "host"
        triton["command"][2] += " " + LOOPBACK_ONLY
    else:
        loopback = "127.0.0.1:"
        triton["ports"] = [f"{loopback}${{TRITON_HTTP_PORT}}:8000", f"{loopback}${{TRITON_PORT}}:8001"]
        triton["command"][2] = (
            "CUDA_VISIBLE_DEVICES=${GPUS} /opt/tritonserver/bin/tritonserver --model-repository=/model "
            "--allow-metrics=false"
        )
        api["ports"] = ["${API_BIND}:${API_EXTERNAL_PORT}:5000"]
        command = api["command"]
        command[command.index("${API_BIND}")] = "0.0.0.0"  # inside its container; published on API_BIND only
        command[command.index("${API_EXTERNAL_PORT}")] = "5000"
        command[command.index("${TRITON_PORT}")] = "8001"
        command.append("--insecure-no-key")  # where no key is set, Docker publishes on loopback only (check())
    if settings.gpu:
        triton["deploy"] = {
            "resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}
        }
    compose = {"version": "3.8", "services": {"triton": triton, "copilot_proxy": api}}
    header = "# Written by repopilot: the FauxPilot stack. Run by hand with `docker compose up -d` here.\n"
    return header + json.dumps(compose, indent=2) + "\n"


def write_project(project_dir: Path, settings: StackSettings) -> None:
    """Write (atomically, readable by this user only: the .env may hold the API key) the compose project and the
    settings it was made from."""
    settings.check()
    project_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_bytes_atomic(project_dir / ".env", render_env(settings).encode())
    write_bytes_atomic(project_dir / "docker-compose.yaml", render_compose(settings).encode())
    write_bytes_atomic(project_dir / "stack.json", json.dumps(settings.to_json(), indent=2).encode())


def read_settings(project_dir: Path) -> StackSettings:
    return StackSettings(**json.loads((project_dir / "stack.json").read_text()))
