"""The completion server as the agent runs it: the embedded engine or FauxPilot's docker stack.

One :class:`ServerControl` per agent; state lives in ``<data>/stack`` (the same folder layout as
`repopilot stack --stack-dir`), so the low-level CLI can inspect what the agent started.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent.api.models import ServerInfo, ServiceInfo
from agent.errors import AgentError, StackError, StoreError
from agent.runtimes.compose import TRITON_IMAGE, StackSettings
from agent.runtimes.embedded import EmbeddedRuntime
from agent.services import Services
from agent.store import Model, ModelStatus
from pipelines.dataset.folder import is_dataset


def docker_settings(docker) -> StackSettings | None:
    from agent.runtimes.compose import read_settings

    try:
        return read_settings(docker.project_dir)
    except Exception:  # no project yet
        return None


class ServerControl:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    # -- what runs ----------------------------------------------------------------------------------------------
    @property
    def stack_dir(self) -> Path:
        return self.svc.paths.stack

    def runtime(self) -> str:
        """The runtime in use (the one recorded by the last start), else the configured one."""
        marker = self.stack_dir / "runtime"
        if marker.exists():
            return marker.read_text().strip()
        wanted = self.svc.config.server.runtime
        if wanted == "auto":
            from agent.runtimes.cli import choose_runtime

            return choose_runtime("auto")
        return wanted

    def running(self) -> bool:
        """Cheap check (no HTTP): is a server process / container up?"""
        if self.runtime() == "embedded":
            return self._embedded().is_running()
        return self._docker_running()

    def _docker_running(self) -> bool:
        if not (self.stack_dir / "compose" / ".env").exists():
            return False
        try:
            return any(s.running for s in self._docker().status())
        except Exception:  # docker not reachable counts as not running
            return False

    def info(self, probe: bool = True) -> ServerInfo:
        runtime = self.runtime()
        port = self.svc.config.server.port
        deployment = self.svc.store.current_deployment()
        model = deployment.model if deployment else None
        url = f"http://127.0.0.1:{port}/v1"
        if runtime == "embedded":
            embedded = self._embedded()
            if not probe:
                up = embedded.is_running()
                return ServerInfo(up, up, runtime, url, model, "running" if up else "stopped")
            status = embedded.status()
            services = [ServiceInfo("embedded", status.running, status.healthy, status.detail)]
            state = embedded.state()
            if state:
                url = f"http://127.0.0.1:{state['port']}/v1"
            return ServerInfo(status.running, status.healthy, runtime, url, model, status.detail, services)
        if not (self.stack_dir / "compose" / ".env").exists():
            return ServerInfo(False, False, runtime, url, model, "not running (no stack started yet)")
        try:
            statuses = self._docker().status()
        except Exception as exc:
            return ServerInfo(False, False, runtime, url, model, f"docker stack unavailable: {exc}")
        services = [ServiceInfo(s.name, s.running, s.healthy, s.detail) for s in statuses]
        running = any(s.running for s in statuses)
        healthy = bool(statuses) and all(s.healthy for s in statuses)
        detail = "; ".join(f"{s.name}: {'healthy' if s.healthy else s.detail}" for s in statuses)
        return ServerInfo(running, healthy, runtime, url, model, detail, services)

    # -- actions ------------------------------------------------------------------------------------------------
    def start(self) -> ServerInfo:
        deployment = self.svc.store.current_deployment()
        if deployment is None:
            raise AgentError(
                "No model is deployed yet. Add a repository and wait for the first model (or `repopilot retrain`).",
                title="Nothing to serve",
            )
        self._up(self.svc.store.get_model(deployment.model))
        return self.info()

    def stop(self) -> ServerInfo:
        if self.runtime() == "embedded":
            self._embedded().down()
        else:
            self._docker().down()
        return self.info(probe=False)

    def deploy(self, model: Model) -> ServerInfo:
        """Serve ``model``: swap it in when a server runs (rolled back on failure), else start one if configured."""
        runtime = self.runtime()
        if runtime == "embedded":
            embedded = self._embedded()
            target = self._embedded_dir(model)
            if embedded.is_running():
                state = embedded.state() or {}
                if state.get("model_dir") != str(target.resolve()):
                    embedded.swap(target)
                elif not embedded.wait_healthy():  # started by an agent that died before it was healthy
                    embedded.down()
                    self._up(model)
            elif self.svc.config.server.start_on_deploy:
                self._up(model)
        else:
            if self._docker_running():
                docker = self._docker()
                settings = docker_settings(docker)
                if settings is None or settings.model != model.version or not all(s.healthy for s in docker.status()):
                    docker.swap(model.version)
            elif self.svc.config.server.start_on_deploy:
                self._up(model)
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
    def _up(self, model: Model) -> None:
        server = self.svc.config.server
        runtime = self.runtime() if (self.stack_dir / "runtime").exists() else self._configured_runtime()
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        (self.stack_dir / "runtime").write_text(runtime)
        current = self.svc.paths.current_dataset
        context = current if server.context and is_dataset(current) else None
        if runtime == "embedded":
            target = self._embedded_dir(model)
            extra = [*server.serve_args, *(["--context-dataset", str(context)] if context else [])]
            self._embedded().up(target, server.port, server.host, api_key=server.api_key, extra_args=extra)
            return
        from agent.runtimes.cli import has_nvidia_gpu

        settings = StackSettings(
            models_root=str(self.svc.paths.serving_root.resolve()),
            model=model.version,
            num_gpus=server.gpus,
            gpus=",".join(str(i) for i in range(server.gpus)),
            api_port=server.port,
            triton_port=server.triton_port,
            triton_http_port=server.triton_http_port,
            triton_metrics_port=server.triton_metrics_port,
            host_network=server.host_network,
            triton_host="127.0.0.1" if server.host_network else "triton",
            gpu=has_nvidia_gpu(),
            triton_image=server.triton_image or TRITON_IMAGE,
            api_key=server.api_key,
            bind=server.host,
            context_dir=str(context.parent) if context else "",
        )
        self._docker().up(settings)

    def _configured_runtime(self) -> str:
        wanted = self.svc.config.server.runtime
        if wanted == "auto":
            from agent.runtimes.cli import choose_runtime

            return choose_runtime("auto")
        return wanted

    def _embedded(self) -> EmbeddedRuntime:
        return EmbeddedRuntime(self.stack_dir)

    def _docker(self):
        from agent.runtimes.docker_stack import DockerStack

        return DockerStack(self.stack_dir / "compose")

    @staticmethod
    def _embedded_dir(model: Model) -> Path:
        hf = model.converted_dirs.get("hf")
        if hf and (Path(hf) / "config.json").exists():
            return Path(hf)
        return Path(model.run_dir) / "model"
