"""The typed client of the agent's HTTP API: the methods of :class:`agent.api.spec.AgentApi`, over HTTP.

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
from typing import Any
from urllib.parse import urlencode, urlsplit

from agent.api import API_PREFIX
from agent.api.models import (
    Event,
    EventBatch,
    from_json,
)
from agent.api.spec import LONG_CALLS, METHODS, RPC_METHODS, AgentApi, hints
from agent.errors import BY_NAME, NOT_RUNNING, AgentNotRunning
from agent.procs import pid_alive
from pipelines.errors import RepopilotError

LONG_CALL_S = 900.0
"""Calls that start or ask the completion server wait this long (loading a model takes a while)."""


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


def _rpc(name: str) -> Callable[..., Any]:
    """The client's method ``name``: the API's signature, called over HTTP, its result typed by the API."""
    declared = METHODS[name]
    signature = inspect.signature(declared)
    result_type = hints(name)["return"]
    timeout = LONG_CALL_S if name in LONG_CALLS else 0.0

    @functools.wraps(declared)
    def call(self: AgentClient, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        params = {k: v for k, v in bound.arguments.items() if k != "self"}
        result = self._request("POST", API_PREFIX + name, params, timeout=max(self.timeout, timeout))
        return from_json(result_type, result)

    return call


class AgentClient(AgentApi):
    """A client of one running agent at ``url`` (``http://127.0.0.1:<port>``) with its API token: every method of
    :class:`~agent.api.spec.AgentApi` (generated from it, below), and the agent's events."""

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


for _name in RPC_METHODS:
    setattr(AgentClient, _name, _rpc(_name))


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
