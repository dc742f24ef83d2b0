"""The Docker runtime: FauxPilot's compose project driven with the compose CLI and the docker SDK."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from agent.api.models import ServiceInfo
from agent.config import ServerConfig
from agent.errors import StackError
from agent.runtimes.compose import TRITON_CPU_STANDIN_IMAGE, TRITON_IMAGE, StackSettings, read_settings, write_project
from agent.runtimes.health import Probe, api_health, test_completion, triton_ready, wait_for
from agent.store import Model

SERVICES = ("triton", "copilot_proxy")


def compose_command() -> list[str]:
    """``docker compose`` (v2) where the plugin exists, else ``docker-compose`` (v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise StackError("Neither `docker compose` nor `docker-compose` is installed. Install Docker Compose.")


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:  # no daemon, no permission, no SDK: all mean "not here"
        return False


def has_nvidia_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


class DockerStack:
    """The compose project in ``project_dir`` (a :class:`~agent.runtimes.base.Runtime`)."""

    name = "docker"

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = Path(project_dir)

    @property
    def project_name(self) -> str:
        return "repopilot-" + "".join(c for c in self.project_dir.name.lower() if c.isalnum())[:40]

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project_name}
        result = subprocess.run(
            [*compose_command(), *args], cwd=self.project_dir, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise StackError(f"`compose {' '.join(args)}` failed: {result.stderr.strip()[-1500:]}")
        return result

    # -- lifecycle --------------------------------------------------------------------------------------
    def up(self, settings: StackSettings, timeout: float = 300) -> list[ServiceInfo]:
        self._check_model(settings)
        write_project(self.project_dir, settings)
        self.compose("up", "-d")
        probe = self._healthy(settings, timeout)
        if not probe.ok:
            raise StackError(f"the stack did not become healthy: {probe.detail}\n{self.logs(tail=15)}")
        return self.status()

    def down(self) -> None:
        if (self.project_dir / "docker-compose.yaml").exists():
            self.compose("down", "--remove-orphans")

    def target(self, model: Model) -> str:
        """The converted model's name under the models root."""
        return model.version

    def start(
        self, target: str, server: ServerConfig, models_root: Path, context: Path | None, timeout: float = 300
    ) -> list[ServiceInfo]:
        settings = StackSettings(
            models_root=str(models_root.resolve()),
            model=target,
            num_gpus=server.gpus,
            gpus=",".join(str(i) for i in range(server.gpus)),
            api_port=server.port,
            triton_port=server.triton_port,
            triton_http_port=server.triton_http_port,
            triton_metrics_port=server.triton_metrics_port,
            host_network=server.host_network,
            triton_host="127.0.0.1" if server.host_network else "triton",
            gpu=has_nvidia_gpu() and server.triton_image != TRITON_CPU_STANDIN_IMAGE,
            triton_image=server.triton_image or TRITON_IMAGE,
            api_key=server.api_key,
            bind=server.host,
            context_dir=str(context.parent) if context else "",
        )
        return self.up(settings, timeout)

    def settings(self) -> StackSettings | None:
        """The settings of the last start or swap, None before the first."""
        try:
            return read_settings(self.project_dir)
        except Exception:  # no project yet
            return None

    def running(self) -> bool:
        if not (self.project_dir / ".env").exists():
            return False
        try:
            return any(s.running for s in self.status())
        except Exception:  # docker not reachable counts as not running
            return False

    def serving(self) -> str | None:
        settings = self.settings()
        return settings.model if settings else None

    def healthy(self, timeout: float = 180) -> bool:
        settings = self.settings()
        return settings is not None and self._healthy(settings, timeout).ok

    def url(self) -> str | None:
        settings = self.settings()
        return f"http://127.0.0.1:{settings.api_port}/v1" if settings else None

    def swap(self, target: str, timeout: float = 300) -> list[ServiceInfo]:
        """Serve another converted model; roll back to the previous one when it fails its checks."""
        old = read_settings(self.project_dir)
        new = StackSettings(**{**old.to_json(), "model": target})
        self._check_model(new)
        write_project(self.project_dir, new)
        self.compose("up", "-d")
        probe = self._healthy(new, timeout)
        if probe.ok:
            return self.status()
        logs = self.logs(tail=15)
        write_project(self.project_dir, old)
        self.compose("up", "-d")
        back = self._healthy(old, timeout)
        raise StackError(
            f"model {target} failed its checks ({probe.detail}); rolled back to {old.model} "
            f"({'healthy' if back.ok else 'NOT healthy: ' + back.detail}).\n{logs}"
        )

    def status(self) -> list[ServiceInfo]:
        if not (self.project_dir / ".env").exists():
            return []
        settings = read_settings(self.project_dir)
        containers = {c["service"]: c for c in self._containers()}
        host = "127.0.0.1"
        probes = {
            "triton": triton_ready(host, settings.triton_port),
            "copilot_proxy": api_health(settings.api_port, host, settings.api_key),
        }
        result = []
        for service in SERVICES:
            info = containers.get(service)
            running = bool(info and info["state"] == "running")
            detail = probes[service].detail
            if info:
                detail = f"{info['state']}, restarts {info['restarts']}; {detail}"
            result.append(ServiceInfo(service, running, running and probes[service].ok, detail))
        return result

    def logs(self, tail: int = 100, service: str | None = None) -> str:
        args = ["logs", "--no-color", "--tail", str(tail)]
        result = self.compose(*args, *([service] if service else []), check=False)
        return (result.stdout + result.stderr).strip()

    def crash(self, service: str) -> None:
        """Kill a service's main process as a crash would (tests and drills): the restart policy acts."""
        info = next(c for c in self._containers() if c["service"] == service)
        os.kill(info["pid"], signal.SIGKILL)

    # -- internals --------------------------------------------------------------------------------------
    def _containers(self) -> list[dict]:
        import docker

        client = docker.from_env()
        found = []
        for container in client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.project_name}"}
        ):
            attrs = container.attrs
            found.append(
                {
                    "service": container.labels.get("com.docker.compose.service"),
                    "state": attrs["State"]["Status"],
                    "pid": attrs["State"]["Pid"],
                    "restarts": attrs.get("RestartCount", 0),
                    "id": container.id,
                }
            )
        return found

    def _check_model(self, settings: StackSettings) -> None:
        ft = settings.model_dir / "fastertransformer" / "config.pbtxt"
        if not ft.exists():
            raise StackError(
                f"{settings.model_dir} holds no converted model. Run `repopilot convert MODEL_DIR --gpus "
                f"{settings.num_gpus} --models-root {settings.models_root} --name {settings.model}` first."
            )
        if not (settings.hf_dir / "config.json").exists():
            raise StackError(f"{settings.hf_dir} (the tokenizer and model for the API) is missing: convert again.")
        from pipelines.convert import verify_output  # sizes and checksums, before Triton silently loads nothing

        verify_output(settings.model_dir)

    def _healthy(self, settings: StackSettings, timeout: float) -> Probe:
        started = time.monotonic()
        probe = wait_for(lambda: triton_ready("127.0.0.1", settings.triton_port), timeout)
        if not probe.ok:
            return probe
        remaining = max(10.0, timeout - (time.monotonic() - started))
        probe = wait_for(lambda: api_health(settings.api_port, "127.0.0.1", settings.api_key), remaining)
        if not probe.ok:
            return probe
        return test_completion(settings.api_port, "127.0.0.1", settings.api_key)
