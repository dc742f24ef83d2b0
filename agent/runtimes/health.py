"""Health probes of the completion stack, shared by both runtimes (stdlib HTTP; tritonclient optional)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str
    final: bool = False  # no point in waiting: it will not get better (e.g. the process exited)


def http_json(url: str, body: dict | None = None, timeout: float = 10.0, api_key: str = "") -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except json.JSONDecodeError:
            return exc.code, {}


def api_health(port: int, host: str = "127.0.0.1", api_key: str = "") -> Probe:
    try:
        status, body = http_json(f"http://{host}:{port}/health", timeout=5, api_key=api_key)
    except (OSError, json.JSONDecodeError) as exc:
        return Probe(False, f"API on {host}:{port} not answering ({exc})")
    return Probe(status == 200, f"API health {status}: {body}")


def test_completion(port: int, host: str = "127.0.0.1", api_key: str = "", prompt: str = "def ") -> Probe:
    """A real completion through the API, as the VS Code extension would ask for it."""
    body = {"model": "fastertransformer", "prompt": prompt, "max_tokens": 8, "temperature": 0.0}
    try:
        status, answer = http_json(
            f"http://{host}:{port}/v1/engines/codegen/completions", body, timeout=120, api_key=api_key
        )
    except (OSError, json.JSONDecodeError) as exc:
        return Probe(False, f"test completion failed: {exc}")
    choices = answer.get("choices") or []
    if status != 200 or not choices:
        return Probe(False, f"test completion answered {status}: {answer}")
    return Probe(True, f"test completion: {choices[0].get('text', '')!r}")


def triton_ready(host: str, port: int, model: str = "fastertransformer") -> Probe:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        return Probe(False, "tritonclient is not installed (pip install 'repopilot[serve]')")
    try:
        client = grpcclient.InferenceServerClient(url=f"{host}:{port}")
        if not client.is_server_live():
            return Probe(False, f"Triton on {host}:{port} is not live")
        ready = client.is_model_ready(model)
        return Probe(ready, f"Triton model {model} {'ready' if ready else 'not ready'}")
    except Exception as exc:  # tritonclient raises its own types for a closed port
        return Probe(False, f"Triton on {host}:{port} not answering ({str(exc).splitlines()[0]})")


def wait_for(check: Callable[[], Probe], timeout: float, interval: float = 0.5) -> Probe:
    deadline = time.monotonic() + timeout
    probe = check()
    while not probe.ok and not probe.final and time.monotonic() < deadline:
        time.sleep(interval)
        probe = check()
    return probe
