"""The typed client of the agent's HTTP API: the same methods as :class:`agent.core.Agent`, over HTTP.

Values come back as the dataclasses of :mod:`agent.api.models`; failures are raised as the
:class:`~pipelines.errors.RepopilotError` the agent raised (same class where this side knows it, same title
and message always), or :class:`AgentNotRunning` when no agent answers.

    client = AgentClient.connect()          # the agent of the configured data folder
    client = connect_or_start(None, 60, start_background)  # ... started if it does not run (tray app)
    for event in client.stream_events():    # or client.wait_events(cursor) in a loop
        ...
"""

from __future__ import annotations

import functools
import http.client
import inspect
import json
import os
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from agent.api import API_PREFIX
from agent.api.models import (
    AgentStatus,
    DatasetInfo,
    Event,
    EventBatch,
    JobInfo,
    ModelInfo,
    RepoInfo,
    ServerInfo,
    from_json,
)
from agent.errors import BY_NAME, NOT_RUNNING, AgentNotRunning
from agent.procs import pid_alive
from pipelines.errors import RepopilotError

LONG_CALL_S = 900.0
"""Calls that start or ask the completion server wait this long (loading a model takes a while)."""

F = TypeVar("F", bound=Callable[..., Any])


class RemoteError(RepopilotError):
    """An error the agent answered; ``type`` is its class name there, ``status`` the HTTP status."""

    title = "Agent error"
    type: str = "RepopilotError"
    status: int = 500

    def __init__(self, message: str, *, title: str | None = None, type: str | None = None, status: int = 500):
        super().__init__(message, title=title)
        if type is not None:
            self.type = type
        self.status = status


@functools.cache
def _remote_class(name: str) -> type[RemoteError]:
    base = BY_NAME.get(name)  # rebuilt as itself (a RemoteError too): `except JobError` works here as in process
    if base is None:
        return RemoteError
    return typing.cast(type[RemoteError], type(f"Remote{name}", (RemoteError, base), {"__module__": __name__}))


def remote_error(status: int, body: Any) -> RemoteError:
    """The exception for an error answer of the API."""
    info = body.get("error") if isinstance(body, dict) else None
    if not isinstance(info, dict):
        return RemoteError(f"the agent answered HTTP {status} without an error description", status=status)
    kind = str(info.get("type") or "RepopilotError")
    title = str(info.get("title") or RemoteError.title)
    return _remote_class(kind)(str(info.get("message") or ""), title=title, type=kind, status=status)


def _rpc(timeout: float | None = None) -> Callable[[F], F]:
    """Make a method with an Agent method's name and signature call it over HTTP and type its result."""

    def wrap(func: F) -> F:
        signature = inspect.signature(func)
        name = func.__name__

        @functools.wraps(func)
        def call(self: AgentClient, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(self, *args, **kwargs)
            params = {k: v for k, v in bound.arguments.items() if k != "self"}
            result = self._request("POST", API_PREFIX + name, params, timeout=max(self.timeout, timeout or 0))
            return from_json(_return_type(func), result)

        return typing.cast(F, call)

    return wrap


@functools.cache
def _return_type(func: Callable[..., Any]) -> Any:
    return typing.get_type_hints(func, globalns=globals())["return"]


class AgentClient:
    """A client of one running agent at ``url`` (``http://127.0.0.1:<port>``) with its API token."""

    def __init__(self, url: str, token: str, timeout: float = 30) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise RepopilotError(f"the agent URL must look like http://127.0.0.1:7421, got {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AgentClient({self.url!r})"

    # -- finding the agent -------------------------------------------------------------------------------------
    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike[str], timeout: float = 30) -> AgentClient:
        """The client of the agent that runs on ``data_dir`` (AgentNotRunning when none does)."""
        from agent.paths import AgentPaths

        paths = AgentPaths(Path(data_dir).expanduser())
        try:
            endpoint = json.loads(paths.endpoint_file.read_text())
            url, pid = endpoint["url"], int(endpoint["pid"])
        except FileNotFoundError:
            raise AgentNotRunning() from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AgentNotRunning(f"{NOT_RUNNING} ({paths.endpoint_file} is unreadable: {exc})") from None
        if not pid_alive(pid):
            raise AgentNotRunning()
        try:
            token = paths.token_file.read_text(encoding="ascii").strip()
        except OSError as exc:
            raise RepopilotError(
                f"cannot read the agent's token {paths.token_file}: {exc.strerror or exc}. The agent runs as "
                "another user, or the file was removed: restart it with `repopilot agent stop` and `agent start`.",
                title="No access to the agent",
            ) from None
        return cls(url, token, timeout)

    @classmethod
    def connect(cls, config_file: str | os.PathLike[str] | None = None, timeout: float = 30) -> AgentClient:
        """The client of the agent for the config file (``$REPOPILOT_CONFIG`` or the default one)."""
        from agent.config import load_config

        return cls.from_data_dir(load_config(config_file).agent.data_dir, timeout)

    # -- HTTP --------------------------------------------------------------------------------------------------
    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}

    def _request(self, verb: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        connection = self._connection(timeout)
        try:
            connection.request(verb, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError) as exc:
            raise AgentNotRunning() from exc
        except TimeoutError as exc:
            raise RepopilotError(
                f"the agent at {self.url} did not answer within {timeout:g} s. It may be busy or stuck; "
                "see `repopilot agent logs`.",
                title="Agent not responding",
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise AgentNotRunning(f"{NOT_RUNNING} ({self.url}: {exc})") from exc
        finally:
            connection.close()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        if response.status != 200:
            raise remote_error(response.status, answer)
        if not isinstance(answer, dict) or "result" not in answer:
            raise RemoteError(f"the agent at {self.url} answered something that is not an API result")
        return answer["result"]

    # -- events ------------------------------------------------------------------------------------------------
    def wait_events(self, since: int = 0, timeout: float = 25.0) -> EventBatch:
        """Events after ``since``, waiting up to ``timeout`` s (at most 60) for one; pass ``cursor`` next time."""
        query = urlencode({"since": since, "timeout": timeout})
        result = self._request("GET", f"{API_PREFIX}events?{query}", timeout=self.timeout + min(timeout, 60.0))
        return from_json(EventBatch, result)

    def stream_events(self, since: int = 0, idle_timeout: float = 60.0) -> Iterator[Event]:
        """Events after ``since`` as they happen (Server-Sent Events); ends when the agent stops.

        Raises AgentNotRunning when it cannot connect, or when nothing (not even a heartbeat) arrives for
        ``idle_timeout`` seconds.
        """
        connection = self._connection(idle_timeout)
        try:
            try:
                headers = {**self._headers(), "Accept": "text/event-stream"}
                connection.request("GET", f"{API_PREFIX}events/stream?{urlencode({'since': since})}", headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise AgentNotRunning() from exc
            if response.status != 200:
                raw = response.read()
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = None
                raise remote_error(response.status, answer)
            yield from _parse_sse(response)
        finally:
            connection.close()

    # -- the Agent's methods -----------------------------------------------------------------------------------
    @_rpc()
    def status(self) -> AgentStatus: ...

    @_rpc()
    def clear_error(self) -> AgentStatus: ...

    @_rpc()
    def agent_log(self, lines: int = 200) -> str: ...

    @_rpc()
    def add_repo(
        self,
        path: str,
        name: str | None = None,
        ref: str | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> RepoInfo: ...

    @_rpc()
    def remove_repo(self, name: str) -> None: ...

    @_rpc()
    def list_repos(self) -> list[RepoInfo]: ...

    @_rpc()
    def dataset(self) -> DatasetInfo: ...

    @_rpc()
    def pause_watching(self) -> None: ...

    @_rpc()
    def resume_watching(self) -> None: ...

    @_rpc()
    def check_for_changes(self) -> None: ...

    @_rpc()
    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[JobInfo]: ...

    @_rpc()
    def get_job(self, job_id: int) -> JobInfo: ...

    @_rpc()
    def cancel_job(self, job_id: int) -> JobInfo: ...

    @_rpc()
    def retry_job(self, job_id: int) -> JobInfo: ...

    @_rpc()
    def job_log(self, job_id: int, lines: int = 200) -> str: ...

    @_rpc()
    def retrain_now(self) -> list[JobInfo]: ...

    @_rpc()
    def list_models(self) -> list[ModelInfo]: ...

    @_rpc()
    def get_model(self, version: str) -> ModelInfo: ...

    @_rpc()
    def deploy_model(self, version: str) -> JobInfo: ...

    @_rpc()
    def rollback(self) -> JobInfo: ...

    @_rpc()
    def server_status(self) -> ServerInfo: ...

    @_rpc(timeout=LONG_CALL_S)
    def start_server(self) -> ServerInfo: ...

    @_rpc(timeout=LONG_CALL_S)
    def stop_server(self) -> ServerInfo: ...

    @_rpc(timeout=LONG_CALL_S)
    def test_completion(self, prompt: str, max_tokens: int = 32) -> str: ...

    @_rpc()
    def vscode_settings(self) -> dict[str, Any]: ...

    @_rpc()
    def get_settings(self) -> dict[str, Any]: ...

    @_rpc()
    def update_settings(self, settings: dict[str, Any]) -> dict[str, Any]: ...


def _parse_sse(response: http.client.HTTPResponse) -> Iterator[Event]:
    fields: dict[str, str] = {}
    while True:
        try:
            line = response.readline()
        except TimeoutError as exc:
            raise AgentNotRunning(f"{NOT_RUNNING} (its event stream went silent)") from exc
        except OSError as exc:
            raise AgentNotRunning() from exc
        if not line:
            return  # the agent closed the stream (it stopped)
        text = line.decode("utf-8").rstrip("\r\n")
        if text:
            if not text.startswith(":"):
                key, _, value = text.partition(":")
                fields[key] = fields.get(key, "") + ("\n" if key in fields else "") + value.removeprefix(" ")
            continue
        if "data" in fields:
            yield from_json(Event, json.loads(fields["data"]))
        fields = {}


def connect_or_start(
    config_file: str | os.PathLike[str] | None,
    timeout: float,
    start: Callable[[str | os.PathLike[str] | None, float], object],
) -> AgentClient:
    """The client of the running agent; starts one in the background (and waits for it) if none runs.

    ``start(config_file, timeout)`` starts it: :func:`agent.daemon.start_background` with this Python, or the
    installed ``repopilot`` command (the tray bundle).
    """
    try:
        client = AgentClient.connect(config_file)
        client.status()
        return client
    except AgentNotRunning:
        pass
    start(config_file, timeout)
    return AgentClient.connect(config_file)
