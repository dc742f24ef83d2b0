"""The embedded runtime: the completion API as a local background process, no Docker, no GPU needed.

``up`` starts ``repopilot serve MODEL_DIR`` detached (its pid and settings in the state folder, its output
in a log file), waits for /health and a test completion; ``swap`` replaces the model and rolls back to the
previous one when the new one fails its checks; ``down`` stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.api.models import ServiceInfo
from agent.config import ServerConfig
from agent.errors import StackError
from agent.logs import tail as log_tail
from agent.procs import pid_alive
from agent.runtimes.health import Probe, api_health, test_completion, wait_for
from agent.store import Model
from pipelines.fsutil import write_bytes_atomic, write_json_atomic
from pipelines.serve.exposure import exposure_problem


class EmbeddedRuntime:
    """One local `repopilot serve` process per state folder (a :class:`~agent.runtimes.base.Runtime`)."""

    name = "embedded"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_file = self.state_dir / "embedded.json"
        self.log_file = self.state_dir / "embedded.log"

    # -- lifecycle --------------------------------------------------------------------------------------
    def up(self, model_dir: Path, port: int = 5000, host: str = "127.0.0.1", api_key: str = "",
           extra_args: list[str] | None = None, timeout: float = 180) -> list[ServiceInfo]:  # fmt: skip
        """Start serving ``model_dir``; a running server is left as it is if it serves the same model."""
        refusal = exposure_problem(host, api_key)
        if refusal:
            raise StackError(refusal, title="Exposed without an API key")
        current = self._state()
        if current and self._alive(current["pid"]):
            if current["model_dir"] == str(Path(model_dir).resolve()) and current["port"] == port:
                return self.status()
            raise StackError(
                f"The embedded server already runs (pid {current['pid']}, model {current['model_dir']}). "
                "Use `repopilot server swap` to change the model, or `repopilot server down` first."
            )
        self._start(Path(model_dir).resolve(), port, host, api_key, extra_args or [])
        probe = self._check(port, host, api_key, timeout)
        if not probe.ok:
            tail = self.logs(20)
            self.down()
            raise StackError(f"the server did not become healthy: {probe.detail}\n{tail}")
        return self.status()

    def down(self, timeout: float = 20) -> bool:
        """Stop the server; True when one was running."""
        state = self._state()
        if not state:
            return False
        pid = state["pid"]
        was_running = self._alive(pid)
        if was_running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return was_running

    def state(self) -> dict | None:
        """What the last start recorded (pid, model_dir, port, host...), or None."""
        return self._state()

    def running(self) -> bool:
        """Cheap check without HTTP: the server process lives."""
        state = self._state()
        return bool(state and self._alive(state["pid"]))

    def healthy(self, timeout: float = 180) -> bool:
        """Wait until the running server answers its health check and a test completion; False if it does not."""
        state = self._state()
        if not state or not self._alive(state["pid"]):
            return False
        return self._check(state["port"], state["host"], state.get("api_key", ""), timeout).ok

    def status(self) -> list[ServiceInfo]:
        state = self._state()
        if not state:
            return [ServiceInfo("embedded", False, False, "not running")]
        if not self._alive(state["pid"]):
            return [ServiceInfo("embedded", False, False, f"exited (see {self.log_file})")]
        probe = api_health(state["port"], state["host"], state.get("api_key", ""))
        where = f"http://{state['host']}:{state['port']}/v1 serving {state['model_dir']}"
        return [ServiceInfo("embedded", True, probe.ok, f"{where}; {probe.detail}")]

    def serving(self) -> str | None:
        state = self._state()
        return state["model_dir"] if state and self._alive(state["pid"]) else None

    def url(self) -> str | None:
        state = self._state()
        return f"http://127.0.0.1:{state['port']}/v1" if state else None

    def target(self, model: Model) -> str:
        """The model's Hugging Face folder (the converted one where there is one), resolved."""
        hf = model.converted_dirs.get("hf")
        folder = Path(hf) if hf and (Path(hf) / "config.json").exists() else Path(model.run_dir) / "model"
        return str(folder.resolve())

    def start(
        self, target: str, server: ServerConfig, models_root: Path, context: Path | None, timeout: float = 300
    ) -> list[ServiceInfo]:
        extra = [*server.serve_args, *(["--context-dataset", str(context)] if context else [])]
        return self.up(
            Path(target), server.port, server.host, api_key=server.api_key, extra_args=extra, timeout=timeout
        )

    def swap(self, target: Path | str, timeout: float = 180) -> list[ServiceInfo]:
        """Serve another model; if it fails its health check or test completion, go back to the old one."""
        state = self._state()
        if not state or not self._alive(state["pid"]):
            raise StackError("The embedded server is not running. Start it with `repopilot server up`.")
        old_model = Path(state["model_dir"])
        self.down()
        self._start(Path(target).resolve(), state["port"], state["host"], state.get("api_key", ""), state["extra"])
        probe = self._check(state["port"], state["host"], state.get("api_key", ""), timeout)
        if probe.ok:
            return self.status()
        tail = self.logs(20)
        self.down()
        self._start(old_model, state["port"], state["host"], state.get("api_key", ""), state["extra"])
        back = self._check(state["port"], state["host"], state.get("api_key", ""), timeout)
        raise StackError(
            f"{target} failed its checks ({probe.detail}); rolled back to {old_model}"
            f" ({'healthy' if back.ok else 'NOT healthy: ' + back.detail}).\n{tail}"
        )

    def logs(self, tail: int = 100, service: str | None = None) -> str:
        return log_tail(self.log_file, tail)

    # -- internals --------------------------------------------------------------------------------------
    def _start(self, model_dir: Path, port: int, host: str, api_key: str, extra: list[str]) -> None:
        if not (model_dir / "config.json").exists():
            raise StackError(f"{model_dir} is not a model folder (no config.json). Give a trained model/.")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pipelines.serve", str(model_dir), "--host", host, "--port", str(port), *extra]
        env = dict(os.environ)
        if api_key:
            key_file = self.state_dir / "api-key"
            write_bytes_atomic(key_file, api_key.encode())  # 0600 from its first byte
            cmd += ["--api-key-file", str(key_file)]
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {model_dir}\n".encode())
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        write_json_atomic(
            self.state_file,
            {"pid": proc.pid, "model_dir": str(model_dir), "port": port, "host": host, "api_key": api_key,
             "extra": extra, "started": time.time()},
        )  # fmt: skip

    def _check(self, port: int, host: str, api_key: str, timeout: float) -> Probe:
        state = self._state()

        def healthy() -> Probe:
            if state and not self._alive(state["pid"]):
                return Probe(False, "the server process exited", final=True)
            return api_health(port, host, api_key)

        probe = wait_for(healthy, timeout)
        if not probe.ok:
            return probe
        return test_completion(port, host, api_key)

    def _state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    _alive = staticmethod(pid_alive)
