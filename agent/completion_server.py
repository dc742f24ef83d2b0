"""The completion server as the agent runs it: the embedded engine or FauxPilot's docker stack, through the
:class:`~agent.runtimes.base.Runtime` of ``[server] runtime``.

One :class:`ServerControl` per agent; state lives in ``<data>/stack`` (the same folder layout as
`repopilot server status --stack-dir`), so the low-level CLI can inspect what the agent started.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent.api.models import ServerInfo
from agent.errors import AgentError, StackError, StoreError
from agent.runtimes import Runtime, record_runtime, runtime_in_use
from agent.services import Services
from agent.store import Model, ModelStatus
from pipelines.dataset.folder import is_dataset


class ServerControl:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    # -- what runs ----------------------------------------------------------------------------------------------
    @property
    def stack_dir(self) -> Path:
        return self.svc.paths.stack

    def runtime(self) -> Runtime:
        """The runtime in use (the one recorded by the last start), else the configured one."""
        return runtime_in_use(self.stack_dir, self.svc.config.server.runtime)

    def running(self) -> bool:
        """Cheap check (no HTTP): is a server process / container up?"""
        return self.runtime().running()

    def info(self, probe: bool = True) -> ServerInfo:
        runtime = self.runtime()
        deployment = self.svc.store.current_deployment()
        model = deployment.model if deployment else None
        url = runtime.url() or f"http://127.0.0.1:{self.svc.config.server.port}/v1"
        if not probe:
            up = runtime.running()
            return ServerInfo(up, up, runtime.name, url, model, "running" if up else "stopped")
        try:
            services = runtime.status()
        except Exception as exc:  # OSError, RepopilotError, the docker SDK's own errors: the daemon is not reachable
            return ServerInfo(False, False, runtime.name, url, model, f"{runtime.name} server unavailable: {exc}")
        if not services:
            return ServerInfo(False, False, runtime.name, url, model, "not running (no server started yet)")
        running = any(s.running for s in services)
        healthy = all(s.healthy for s in services)
        if len(services) == 1:
            detail = services[0].detail
        else:
            detail = "; ".join(f"{s.name}: {'healthy' if s.healthy else s.detail}" for s in services)
        return ServerInfo(running, healthy, runtime.name, url, model, detail, services)

    # -- actions ------------------------------------------------------------------------------------------------
    def start(self) -> ServerInfo:
        deployment = self.svc.store.current_deployment()
        if deployment is None:
            raise AgentError(
                "No model is deployed yet. Add a repository and wait for the first model (or `repopilot retrain`).",
                title="Nothing to serve",
            )
        self._up(self.runtime(), self.svc.store.get_model(deployment.model))
        return self.info()

    def stop(self) -> ServerInfo:
        self.runtime().down()
        return self.info(probe=False)

    def deploy(self, model: Model) -> ServerInfo:
        """Serve ``model``: swap it in when a server runs (rolled back on failure), else start one if configured."""
        runtime = self.runtime()
        target = runtime.target(model)
        if runtime.running():
            if runtime.serving() != target or not runtime.healthy():  # unhealthy: e.g. started by an agent that died
                runtime.swap(target)
        elif self.svc.config.server.start_on_deploy:
            self._up(runtime, model)
        return self.info(probe=False)

    def serve(self, version: str, reason: str = "deploy") -> dict[str, Any]:
        """Deploy ``version`` (see :meth:`deploy`) and record it: deployments, model statuses, events."""
        svc = self.svc
        model = svc.store.get_model(version)
        info = self.deploy(model)
        current = svc.store.current_deployment()
        if current is None or current.model != version:
            previous = current.model if current else None
            svc.store.start_deployment(version, info.runtime)
            if previous:
                with contextlib.suppress(StoreError):
                    svc.store.update_model(previous, status=ModelStatus.CONVERTED)
            svc.store.update_model(version, status=ModelStatus.DEPLOYED)
            title = "Model rolled back" if reason == "rollback" else "Model deployed"
            svc.notify(
                title, f"{version} now serves completions at {info.url}" + (f" (was {previous})" if previous else "")
            )
        svc.changed("model", version=version, action="deployed")
        svc.changed("server", running=info.running)
        return {"model": version, "runtime": info.runtime, "url": info.url, "server_running": info.running}

    def complete(self, prompt: str, max_tokens: int = 32) -> str:
        info = self.info(probe=False)
        if not info.running:
            raise StackError("The completion server is not running. Start it first.", title="Server stopped")
        body = {"model": "fastertransformer", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        headers = {"Content-Type": "application/json"}
        if self.svc.config.server.api_key:
            headers["Authorization"] = f"Bearer {self.svc.config.server.api_key}"
        request = urllib.request.Request(f"{info.url}/engines/codegen/completions", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise StackError(f"the server answered {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
        except OSError as exc:
            raise StackError(f"cannot reach the completion server at {info.url}: {exc}") from None
        return answer["choices"][0]["text"]

    def vscode_settings(self) -> dict[str, Any]:
        info = self.info(probe=False)
        settings: dict[str, Any] = {
            "fauxpilot.enabled": True,
            "fauxpilot.server": info.url,
            "fauxpilot.engine": "codegen",
            "fauxpilot.maxTokens": 80,
            "fauxpilot.temperature": 0,  # greedy: the same answer every time, and the server may speculate
            "fauxpilot.maxLines": 150,  # the window the server prefills ahead for (`repopilot serve --window-lines`)
            "fauxpilot.inlineCompletion": True,
        }
        if self.svc.config.server.api_key:
            settings["fauxpilot.token"] = self.svc.config.server.api_key
        return settings

    # -- internals ----------------------------------------------------------------------------------------------
    def _up(self, runtime: Runtime, model: Model) -> None:
        record_runtime(self.stack_dir, runtime)
        server = self.svc.config.server
        current = self.svc.paths.current_dataset
        context = current if server.context and is_dataset(current) else None
        runtime.start(runtime.target(model), server, self.svc.paths.serving_root, context)
