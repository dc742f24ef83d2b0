"""What every completion-server runtime offers the agent and `repopilot server up|down|swap|logs` (by hand).

A runtime is one way to run the completion API: :class:`~agent.runtimes.embedded.EmbeddedRuntime` (the
embedded engine as a local process) or :class:`~agent.runtimes.docker_stack.DockerStack` (FauxPilot's compose
project: Triton + the API). Which one a folder uses is chosen in one place, :func:`agent.runtimes.open_runtime`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agent.api.models import ServiceInfo
from agent.config import ServerConfig
from agent.store import Model


class Runtime(Protocol):
    """Start, stop, status, deploy (swap) and health of one completion server."""

    name: str
    """``"embedded"`` or ``"docker"`` (what ``[server] runtime`` and the state folder's marker say)."""

    def target(self, model: Model) -> str:
        """What this runtime serves for ``model``: a model folder (embedded) or a converted model's name (docker)."""
        ...

    def start(
        self, target: str, server: ServerConfig, models_root: Path, context: Path | None, timeout: float = 300
    ) -> list[ServiceInfo]:
        """Start serving ``target`` with the ``[server]`` settings (``context``: a dataset for repository context);
        raises StackError when it does not become healthy within ``timeout`` s."""
        ...

    def swap(self, target: str, timeout: float = 300) -> list[ServiceInfo]:
        """Serve ``target`` on the running server; back to the previous model (and StackError) if it fails."""
        ...

    def down(self) -> None:
        """Stop the server (nothing when none runs)."""
        ...

    def running(self) -> bool:
        """Cheap check, no HTTP: is a server process / container up?"""
        ...

    def serving(self) -> str | None:
        """The target the running server was started or swapped with, None when none was."""
        ...

    def healthy(self, timeout: float = 180) -> bool:
        """Wait up to ``timeout`` s for the server to pass its health check and a test completion."""
        ...

    def status(self) -> list[ServiceInfo]:
        """Each service's state and health (probed); empty when no server was ever started here."""
        ...

    def url(self) -> str | None:
        """The completion API's base URL (``.../v1``) the last start recorded, None when unknown."""
        ...

    def logs(self, tail: int = 100, service: str | None = None) -> str:
        """The last ``tail`` log lines (of one ``service``, where there are several)."""
        ...
