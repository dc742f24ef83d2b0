"""The user's configuration: one TOML file loaded into dataclasses and validated up front.

The file lives at ``platformdirs.user_config_dir("repopilot")/config.toml`` unless ``REPOPILOT_CONFIG``
or an explicit path says otherwise. A missing file means the defaults. Every problem in the file
(unknown keys, wrong types, bad values) is reported at once in one :class:`InputError`.
Machine-written state never goes here; it lives in the agent's SQLite store.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from agent.quiet_hours import parse_quiet_hours
from pipelines.errors import InputError
from pipelines.fsutil import write_bytes_atomic
from pipelines.serve.exposure import DEFAULT_HOST, check_address, exposure_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport (not yet a declared dependency)
    import tomli as tomllib

APP_NAME = "repopilot"
CONFIG_ENV = "REPOPILOT_CONFIG"
ERROR_TITLE = "Invalid configuration"
GPU_BOX_KINDS = ("local", "ssh")
RUNTIMES = ("auto", "embedded", "docker")  # [server] runtime: see agent.runtimes.choose_runtime

Problems = list[tuple[str, str]]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class AgentConfig:
    """``[agent]``: the daemon itself."""

    api_port: int = 7421
    """TCP port of the agent's HTTP API on localhost."""
    data_dir: str = field(default_factory=lambda: platformdirs.user_data_dir(APP_NAME))
    """Where datasets, runs, models and the state database live."""

    def check(self) -> Problems:
        problems: Problems = []
        if not 1 <= self.api_port <= 65535:
            problems.append(("api_port", f"must be a port from 1 to 65535, got {self.api_port}"))
        if not self.data_dir.strip():
            problems.append(("data_dir", "must not be empty"))
        return problems


@dataclass
class TrainingConfig:
    """``[training]``: how models are fine-tuned."""

    base_model: str = "Salesforce/codegen-350M-multi"
    """Hugging Face id or local path of the CodeGen model to fine-tune."""
    max_steps: int = 0
    """Optimizer steps per training run; 0: by the dataset's size (1 to 4 passes, see pipelines/finetune/recipe.py)."""
    learning_rate: float = 0.0
    """Peak learning rate; 0: by the model's size (5e-5 for CodeGen-350M, more for smaller models)."""
    batch_size: int = 8
    """Sequences per optimizer step, across all GPUs."""
    lora: bool = False
    """Train LoRA adapters instead of all weights (less GPU memory)."""
    box: str = ""
    """Name of the ``[[gpu_boxes]]`` entry to train on; empty: the first one, or this machine."""
    train_args: list[str] = field(default_factory=list)
    """Extra `repopilot train` arguments, e.g. ``["--block-size", "512"]``."""
    eval_args: list[str] = field(default_factory=list)
    """Extra `repopilot eval` arguments, e.g. ``["--max-files", "100"]``."""

    def check(self) -> Problems:
        problems: Problems = []
        if not self.base_model.strip():
            problems.append(("base_model", "must not be empty"))
        if self.max_steps < 0:
            problems.append(("max_steps", f"must be 0 (by the dataset's size) or more, got {self.max_steps}"))
        if not (math.isfinite(self.learning_rate) and 0 <= self.learning_rate < 1):
            problems.append(
                ("learning_rate", f"must be 0 (by the model's size) or in (0, 1), got {self.learning_rate}")
            )
        if self.batch_size < 1:
            problems.append(("batch_size", f"must be at least 1, got {self.batch_size}"))
        return problems


@dataclass
class GpuBox:
    """``[[gpu_boxes]]``: a machine that runs training jobs."""

    name: str = ""
    """Unique name, shown in the GUI and used by jobs."""
    kind: str = "local"
    """``"local"`` (this machine) or ``"ssh"`` (a remote machine reached over SSH)."""
    host: str = ""
    """Host name or address; required for ``kind = "ssh"``."""
    user: str = ""
    """SSH user; empty means the current user."""
    port: int = 22
    """SSH port."""
    key_file: str = ""
    """SSH private key; empty means the SSH agent / default keys."""
    work_dir: str = ""
    """Working directory on the box; empty means the executor's default."""
    gpus: list[int] = field(default_factory=list)
    """CUDA device indices to use; empty means all visible GPUs."""
    python: str = ""
    """ssh: Python of repopilot's training environment on the box; empty: the executor sets one up."""

    def check(self) -> Problems:
        problems: Problems = []
        if not self.name.strip():
            problems.append(("name", "is required"))
        if self.kind not in GPU_BOX_KINDS:
            problems.append(("kind", f'must be "local" or "ssh", got {self.kind!r}'))
        if self.kind == "ssh" and not self.host.strip():
            problems.append(("host", 'is required when kind = "ssh"'))
        for key in ("host", "user"):
            if getattr(self, key).startswith("-"):  # ssh would read it as an option
                problems.append((key, f"must not start with '-', got {getattr(self, key)!r}"))
        if not 1 <= self.port <= 65535:
            problems.append(("port", f"must be a port from 1 to 65535, got {self.port}"))
        if any(gpu < 0 for gpu in self.gpus):
            problems.append(("gpus", f"must hold GPU indices >= 0, got {self.gpus}"))
        if len(set(self.gpus)) != len(self.gpus):
            problems.append(("gpus", f"lists a GPU twice: {self.gpus}"))
        return problems


@dataclass
class ServerConfig:
    """``[server]``: the completion server the IDE talks to."""

    runtime: str = "auto"
    """``"embedded"`` (PyTorch in a local process), ``"docker"`` (FauxPilot's Triton stack) or ``"auto"``
    (docker where Docker and an NVIDIA GPU exist, else embedded)."""
    port: int = 5000
    """Port of the completion API (the FauxPilot extension's ``fauxpilot.server`` points here)."""
    gpus: int = 1
    """GPUs Triton splits the model over (1, 2, 4 or 8); the conversion is made for this many."""
    api_key: str = ""
    """If set, clients must send it as a bearer token (`repopilot server vscode` prints the IDE setting)."""
    host: str = DEFAULT_HOST
    """Address the completion API listens on (docker: is published on). The default serves this machine only;
    any other address (e.g. ``"0.0.0.0"``) exposes completions of internal code to the network and needs
    ``api_key``."""
    start_on_deploy: bool = True
    """Start the server when a model is deployed and none runs."""
    triton_image: str = ""
    """docker: the Triton image; empty: FauxPilot's Triton+FasterTransformer image (needs an NVIDIA GPU).
    ``repopilot/triton-cpu-standin:latest`` is a CPU stand-in for machines without one (tests, demos)."""
    host_network: bool = False
    """docker: run both services on the host network (where Docker has no bridge network)."""
    triton_port: int = 8001
    """docker: Triton's gRPC port (on the host with ``host_network``)."""
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    serve_args: list[str] = field(default_factory=list)
    """embedded: extra `repopilot serve` arguments, e.g. ``["--dtype", "int8", "--prefix-cache-mb", "1024"]``."""
    context: bool = True
    """Put repository context (definitions and similar code of the watched repositories, from the agent's dataset,
    followed as it updates) before every prompt; a request's ``repo_context`` field overrides it."""

    def check(self) -> Problems:
        problems: Problems = []
        if self.runtime not in RUNTIMES:
            problems.append(("runtime", f"must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}"))
        if not 1 <= self.port <= 65535:
            problems.append(("port", f"must be a port from 1 to 65535, got {self.port}"))
        for key in ("triton_port", "triton_http_port", "triton_metrics_port"):
            if not 1 <= getattr(self, key) <= 65535:
                problems.append((key, f"must be a port from 1 to 65535, got {getattr(self, key)}"))
        if self.gpus not in (1, 2, 4, 8):
            problems.append(("gpus", f"must be 1, 2, 4 or 8, got {self.gpus}"))
        exposure = check_address(self.host) or exposure_problem(self.host, self.api_key)
        if exposure:
            problems.append(("host", exposure))
        return problems


@dataclass
class PolicyConfig:
    """``[policy]``: when to retrain and how many models to keep (see ``agent.policy``)."""

    min_changed_lines: int = 200
    """Retrain once this many lines changed since the serving model's data."""
    min_changed_files: int = 5
    """Retrain once this many files changed since the serving model's data."""
    schedule_hours: float = 0.0
    """Retrain at least every N hours when anything changed; 0 turns the schedule off."""
    quiet_hours: str = ""
    """No automatic retrain in this window, e.g. ``"22:00-07:00"`` (may wrap midnight); empty = none."""
    keep_models: int = 5
    """How many trained models to keep on disk; the serving one is always kept on top."""

    def check(self) -> Problems:
        problems: Problems = []
        for key in ("min_changed_lines", "min_changed_files", "keep_models"):
            if getattr(self, key) < 1:
                problems.append((key, f"must be at least 1, got {getattr(self, key)}"))
        if not (math.isfinite(self.schedule_hours) and self.schedule_hours >= 0):
            problems.append(("schedule_hours", f"must be a number >= 0 (0 = off), got {self.schedule_hours}"))
        try:
            parse_quiet_hours(self.quiet_hours)
        except ValueError as exc:
            problems.append(("quiet_hours", str(exc)))
        return problems


@dataclass
class Config:
    """The whole configuration file."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    """``[agent]``."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """``[training]``."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """``[policy]``."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """``[server]``."""
    gpu_boxes: list[GpuBox] = field(default_factory=list)
    """``[[gpu_boxes]]``, in file order."""


_SECTIONS: dict[str, type] = {
    "agent": AgentConfig,
    "training": TrainingConfig,
    "policy": PolicyConfig,
    "server": ServerConfig,
}


def default_config() -> Config:
    """The configuration used when there is no file."""
    return Config()


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file: ``path`` if given, else ``$REPOPILOT_CONFIG``, else the platformdirs default."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config file (see :func:`config_path`); defaults when it does not exist.

    Raises InputError titled "Invalid configuration" naming the file and every bad key.
    """
    file = config_path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return default_config()
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror or exc}", title=ERROR_TITLE) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file} is not valid TOML: {exc}. Fix the file and try again.", title=ERROR_TITLE) from exc
    return config_from_dict(data, str(file))


def config_from_dict(data: dict[str, Any], source: str = "the settings") -> Config:
    """A validated Config from TOML-shaped data (as :func:`config_to_dict` gives); InputError listing all problems."""
    config, problems = _build(data)
    if problems:
        lines = "\n".join(f"  - {key}: {message}" for key, message in problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        raise InputError(f"{source} has {count}:\n{lines}\nFix them and try again.", title=ERROR_TITLE)
    return config


def merge_settings(config: Config, changes: dict[str, Any]) -> Config:
    """``config`` with ``changes`` applied (a section's keys merge into it; lists such as gpu_boxes replace),
    validated: InputError listing every problem."""
    merged = config_to_dict(config)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return config_from_dict(merged)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as TOML-shaped data (sections as dicts, ``gpu_boxes`` as a list of dicts)."""
    from dataclasses import asdict

    return asdict(config)


def _build(data: dict[str, Any]) -> tuple[Config, Problems]:
    problems: Problems = []
    config = Config()
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                problems.append((key, "must be a table ([" + key + "])"))
                continue
            setattr(config, key, _load_table(_SECTIONS[key], value, key, problems))
        elif key == "gpu_boxes":
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                problems.append((key, "must be an array of tables ([[gpu_boxes]])"))
                continue
            config.gpu_boxes = [_load_table(GpuBox, item, f"gpu_boxes[{i}]", problems) for i, item in enumerate(value)]
        else:
            problems.append((key, "unknown section or key"))
    seen: set[str] = set()
    for i, box in enumerate(config.gpu_boxes):
        if box.name and box.name in seen:
            problems.append((f"gpu_boxes[{i}].name", f"{box.name!r} is used by another GPU box"))
        seen.add(box.name)
    return config, problems


def _load_table(cls: type, table: dict[str, Any], where: str, problems: Problems) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in hints:
            problems.append((f"{where}.{key}", "unknown key (typo?)"))
            continue
        converted = _convert(value, hints[key])
        if converted is None:
            problems.append((f"{where}.{key}", f"must be {_type_name(hints[key])}, got {value!r}"))
            continue
        texts = converted if isinstance(converted, list) else [converted]
        if any(isinstance(t, str) and _CONTROL.search(t) for t in texts):  # they reach files, commands, .env
            problems.append((f"{where}.{key}", "must not contain control characters (line breaks, tabs, NUL...)"))
            continue
        kwargs[key] = converted
    obj = cls(**kwargs)
    problems.extend((f"{where}.{key}", message) for key, message in obj.check())
    return obj


def _convert(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or None when it is not one (bools are not ints; ints are floats)."""
    if tp is bool:
        return value if isinstance(value, bool) else None
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if tp is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if tp is str:
        return value if isinstance(value, str) else None
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            return None
        items = [_convert(item, item_type) for item in value]
        return None if any(item is None for item in items) else items
    raise TypeError(f"unsupported config field type {tp!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def save_config(config: Config, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``config`` as TOML atomically (``load_config`` reads back an equal Config); return the path."""
    file = config_path(path)
    out = ["# repopilot configuration (see agent/config.py for every key)"]
    for name in _SECTIONS:
        out += ["", f"[{name}]", *_dump_fields(getattr(config, name))]
    for box in config.gpu_boxes:
        out += ["", "[[gpu_boxes]]", *_dump_fields(box)]
    write_bytes_atomic(file, ("\n".join(out) + "\n").encode("utf-8"))
    return file


def _dump_fields(obj: Any) -> list[str]:
    return [f"{f.name} = {_dump_value(getattr(obj, f.name))}" for f in fields(obj)]


def _dump_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_dump_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")
