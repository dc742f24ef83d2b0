"""The completion server's runtimes: FauxPilot's docker-compose project (Triton + API), or the embedded engine
as a local process; both behind :class:`~agent.runtimes.base.Runtime`, chosen here and nowhere else."""

from __future__ import annotations

from pathlib import Path

from agent.config import RUNTIMES
from agent.errors import StackError
from agent.runtimes.base import Runtime
from agent.runtimes.docker_stack import DockerStack, docker_available, has_nvidia_gpu
from agent.runtimes.embedded import EmbeddedRuntime
from pipelines.errors import InputError

__all__ = [
    "Runtime",
    "choose_runtime",
    "has_nvidia_gpu",
    "open_runtime",
    "record_runtime",
    "runtime_in_use",
]

MARKER = "runtime"  # the file of a state folder that says which runtime its last start used


def choose_runtime(requested: str) -> str:
    """``requested``, where ``"auto"`` means docker where Docker and an NVIDIA GPU exist, else embedded."""
    if requested not in RUNTIMES:
        raise InputError(f"unknown runtime {requested!r}; use one of {', '.join(RUNTIMES)}.")
    if requested != "auto":
        return requested
    return "docker" if docker_available() and has_nvidia_gpu() else "embedded"


def open_runtime(name: str, state_dir: Path) -> Runtime:
    """The runtime ``name`` (``auto`` resolved) keeping its state in ``state_dir``."""
    chosen = choose_runtime(name)
    if chosen == "embedded":
        return EmbeddedRuntime(state_dir)
    return DockerStack(state_dir / "compose")


def runtime_in_use(state_dir: Path, configured: str | None = None) -> Runtime:
    """The runtime the last start in ``state_dir`` used; else ``configured`` (StackError when neither is known)."""
    marker = state_dir / MARKER
    if marker.exists():
        return open_runtime(marker.read_text().strip(), state_dir)
    if configured is None:
        raise StackError("No completion server was started here. Start one with `repopilot server up`.")
    return open_runtime(configured, state_dir)


def record_runtime(state_dir: Path, runtime: Runtime) -> None:
    """Remember which runtime ``state_dir``'s server uses (what :func:`runtime_in_use` reads)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text(runtime.name)
