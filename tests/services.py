"""Real services for integration tests: a tritonserver (nvidia-pytriton, CPU) and `repopilot serve`.

Where a service cannot run (no `.venv-triton`, no dockerd) the tests skip, except under
REPOPILOT_REQUIRE_SERVICES=1 (set by scripts/test.sh, so CI fails instead of skipping).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
STANDIN = ROOT / "packaging" / "triton-standin" / "standin.py"


def require(available: bool, what: str) -> None:
    if available:
        return
    if os.environ.get("REPOPILOT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required here (run scripts/services.sh)")
    pytest.skip(f"{what} is not available (run scripts/services.sh)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_on(port: int) -> set[str]:
    """Addresses with a TCP socket listening on ``port`` in this network namespace (from /proc/net/tcp*)."""
    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))  # little-endian words
                    ip = ipaddress.ip_address(words)
                    found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # ::ffff:127.0.0.1 is 127.0.0.1
    return found


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited early:\n{log.read_text()[-3000:] if log else ''}")
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} did not come up in {timeout}s:\n{log.read_text()[-3000:] if log else ''}")


def triton_is_ready(port: int) -> bool:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}").is_model_ready("fastertransformer")


def start_standin(model_repository: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """The CPU stand-in for Triton+FT: a real tritonserver (pytriton) over the converted files."""
    require(TRITON_PYTHON.exists(), "the pytriton venv (.venv-triton)")
    libdir = subprocess.run(
        [str(TRITON_PYTHON), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
    ).stdout.strip() or sysconfig.get_config_var("LIBDIR")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        "PYTRITON_HOME": str(log.parent / "pytriton-home"),
        "PYTHONPATH": str(ROOT),
    }
    cmd = [str(TRITON_PYTHON), str(STANDIN), f"--model-repository={model_repository}",
           f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}"]  # fmt: skip
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_until(lambda: triton_is_ready(grpc_port), 180, "tritonserver (stand-in)", proc, log)
    return proc, grpc_port


def start_api(model_dir: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "pipelines.serve", str(model_dir), "--port", str(port), *extra]
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200, 120,
               "repopilot serve", proc, log)  # fmt: skip
    return proc, port


def complete(port: int, prompt: str, key: str = "dummy", **fields) -> tuple[int, dict]:
    body = {"model": "fastertransformer", "prompt": prompt, "max_tokens": 16, "temperature": 0.0, **fields}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/engines/codegen/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Ledger:\n    def __init__(self):\n        self.entries = []\n",
    "import os\nprint(os.getcwd())\n",
] * 20


def trained_tiny(folder: Path, steps: int = 120, seed: int = 0) -> Path:
    """A tiny CodeGen trained until its greedy choices are clear (random weights have near-ties)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.finetune.tiny import make_tiny_base

    make_tiny_base(CODE, folder, vocab_size=400, context=128)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    text = "".join(CODE[seed % 3 :][:3]) * 3
    ids = torch.tensor([tokenizer(text)["input_ids"][:128]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder
