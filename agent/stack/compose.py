"""Generate the FauxPilot-style compose project: ``.env`` and ``docker-compose.yaml``.

The files are what FauxPilot's setup.sh would write, so a user can also run the stack by hand with
``docker compose up`` (or ``docker-compose up``) in the project folder. Two services:

- ``triton``: Triton with the FasterTransformer backend (FauxPilot's image), the converted model folder
  ``MODEL_DIR`` (``<models_root>/<name>-<N>gpu``) mounted at ``/model``, GPU reservation when there is a GPU;
- ``copilot_proxy``: repopilot's completion API (``repopilot serve --engine triton``), on ``API_EXTERNAL_PORT``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.fsutil import write_bytes_atomic

TRITON_IMAGE = "repopilot/triton-ft:22.09"
TRITON_CPU_STANDIN_IMAGE = "repopilot/triton-cpu-standin:latest"
API_IMAGE = "repopilot/api:latest"
API_COMMAND = (
    "repopilot serve /hf --engine triton --host 0.0.0.0 --port 5000 --triton-host ${TRITON_HOST} "
    "--triton-port ${TRITON_PORT}"
)


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
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return Path(self.models_root) / f"{self.model}-{self.num_gpus}gpu"

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
            "API_KEY": self.api_key,
        }
        values.update(self.extra)
        return values

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def render_env(settings: StackSettings) -> str:
    lines = ["# Written by repopilot (FauxPilot's keys). `repopilot stack swap` edits MODEL and MODEL_DIR."]
    lines += [f"{key}={value}" for key, value in settings.env().items()]
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
    if settings.host_network:
        triton["network_mode"] = api["network_mode"] = "host"
        api["command"][api["command"].index("5000")] = "${API_EXTERNAL_PORT}"
    else:
        triton["ports"] = ["${TRITON_HTTP_PORT}:8000", "${TRITON_PORT}:8001", "${TRITON_METRICS_PORT}:8002"]
        triton["command"][2] = (
            "CUDA_VISIBLE_DEVICES=${GPUS} /opt/tritonserver/bin/tritonserver --model-repository=/model"
        )
        api["ports"] = ["${API_EXTERNAL_PORT}:5000"]
        api["command"][api["command"].index("${TRITON_PORT}")] = "8001"
    if settings.gpu:
        triton["deploy"] = {
            "resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}
        }
    compose = {"version": "3.8", "services": {"triton": triton, "copilot_proxy": api}}
    header = "# Written by repopilot: the FauxPilot stack. Run by hand with `docker compose up -d` here.\n"
    return header + json.dumps(compose, indent=2) + "\n"


def write_project(project_dir: Path, settings: StackSettings) -> None:
    """Write (atomically) the compose project and the settings it was made from."""
    project_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(project_dir / ".env", render_env(settings).encode())
    write_bytes_atomic(project_dir / "docker-compose.yaml", render_compose(settings).encode())
    write_bytes_atomic(project_dir / "stack.json", json.dumps(settings.to_json(), indent=2).encode())


def read_settings(project_dir: Path) -> StackSettings:
    return StackSettings(**json.loads((project_dir / "stack.json").read_text()))
