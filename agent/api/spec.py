"""The agent's API, declared once: each method callable over HTTP, its arguments and its result type.

- :class:`agent.core.Agent` implements it in process (a test checks every signature against this one);
- the HTTP server (:mod:`agent.api.server`) answers ``POST /api/v1/<method>`` for exactly these methods
  (:data:`RPC_METHODS`) and checks the JSON arguments against these annotations;
- the client (:class:`agent.api.client.AgentClient`) is generated from it, results typed by these annotations;
- the CLI and the tray app hold an :class:`AgentApi` (the client, or the Agent itself).

Events are not here: ``GET /api/v1/events`` (long poll) and ``/events/stream`` (Server-Sent Events).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Protocol

from agent.api.models import AgentStatus, DatasetInfo, EventBatch, JobInfo, ModelInfo, RepoInfo, ServerInfo


class AgentApi(Protocol):
    """What the tray app, the CLI and any other client can ask the agent."""

    # -- status ---------------------------------------------------------------------------------------------
    def status(self) -> AgentStatus:
        """The state at a glance (what the tray icon shows)."""
        ...

    def wait_events(self, since: int = 0, timeout: float = 25.0) -> EventBatch:
        """Events after ``since``, waiting up to ``timeout`` s (at most 60) for one; pass ``cursor`` next time."""
        ...

    def clear_error(self) -> AgentStatus:
        """Forget the last error (the tray's "dismiss")."""
        ...

    def agent_log(self, lines: int = 200) -> str:
        """The last lines of the agent's log."""
        ...

    # -- repositories ---------------------------------------------------------------------------------------
    def add_repo(
        self,
        path: str,
        name: str | None = None,
        ref: str | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> RepoInfo:
        """Watch a git repository (working tree or bare) and index it now."""
        ...

    def remove_repo(self, name: str) -> None:
        """Stop watching ``name``; the dataset is rebuilt without it."""
        ...

    def list_repos(self) -> list[RepoInfo]:
        """The watched repositories."""
        ...

    def dataset(self) -> DatasetInfo:
        """The current dataset, its stats, and what the retrain policy thinks of it."""
        ...

    def pause_watching(self) -> None:
        """Stop reacting to commits (until resumed, also across restarts)."""
        ...

    def resume_watching(self) -> None:
        """React to commits again (and look at every watched ref now)."""
        ...

    def check_for_changes(self) -> None:
        """Look at every watched ref now (as a commit would) and apply the retrain policy."""
        ...

    # -- jobs -----------------------------------------------------------------------------------------------
    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[JobInfo]:
        """Jobs, newest first (of one ``state``: queued, running, done, failed, cancelled, interrupted)."""
        ...

    def get_job(self, job_id: int) -> JobInfo:
        """One job, with its training losses."""
        ...

    def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job (a running one is stopped) and the jobs waiting on it."""
        ...

    def retry_job(self, job_id: int) -> JobInfo:
        """Run a failed, cancelled or interrupted job again (and the jobs it took down with it)."""
        ...

    def job_log(self, job_id: int, lines: int = 200) -> str:
        """The last lines of a job's log."""
        ...

    def retrain_now(self) -> list[JobInfo]:
        """Update the dataset, then train, evaluate, convert and deploy, whatever the policy says."""
        ...

    # -- models and the completion server -------------------------------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        """Models, newest first."""
        ...

    def get_model(self, version: str) -> ModelInfo:
        """One model: its training result, evaluation report and converted folders."""
        ...

    def deploy_model(self, version: str) -> JobInfo:
        """Queue serving ``version`` (any kept model: this is also how to roll back to an older one)."""
        ...

    def rollback(self) -> JobInfo:
        """Queue serving the model that served before the current one."""
        ...

    def server_status(self) -> ServerInfo:
        """Is the completion server up and healthy, and what it serves."""
        ...

    def start_server(self) -> ServerInfo:
        """Start the completion server with the deployed model."""
        ...

    def stop_server(self) -> ServerInfo:
        """Stop the completion server."""
        ...

    def test_completion(self, prompt: str, max_tokens: int = 32) -> str:
        """Ask the running server to complete ``prompt`` (what the IDE would get)."""
        ...

    def vscode_settings(self) -> dict[str, Any]:
        """Settings for the VS Code FauxPilot extension pointing at this server."""
        ...

    # -- settings -------------------------------------------------------------------------------------------
    def get_settings(self) -> dict[str, Any]:
        """The configuration as TOML-shaped data (sections -> keys)."""
        ...

    def update_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Validate (all problems at once), save to the TOML file, and apply."""
        ...


METHODS: dict[str, Callable[..., Any]] = {
    name: value for name, value in vars(AgentApi).items() if callable(value) and not name.startswith("_")
}
"""Every method of the API, by name (``wait_events`` is answered as ``GET /api/v1/events``)."""
RPC_METHODS = frozenset(METHODS) - {"wait_events"}
"""The methods callable as ``POST /api/v1/<method>`` with a JSON object of keyword arguments."""
LONG_CALLS = frozenset({"start_server", "stop_server", "test_completion"})
"""Calls that start or ask the completion server (loading a model takes a while): clients wait longer."""


def hints(method: str) -> dict[str, Any]:
    """The resolved annotations of ``method`` (its arguments and ``return``)."""
    return typing.get_type_hints(METHODS[method])
