"""``python -m pipelines.serve`` as a user runs it: a real server process, its key, its error messages."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serve.conftest import free_port
from tests.services import listening_on

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ROOT = Path(__file__).resolve().parents[2]


def serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.serve", *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_binds_loopback_requires_its_key_and_stops_cleanly(tiny_model: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k-123\n")
    port = free_port()
    proc = serve(str(tiny_model), "--port", str(port), "--api-key-file", str(key_file), "--device", "cpu")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/engines/codegen/completions"
        body = {"prompt": "def get_total(self, count):\n    value = self.", "max_tokens": 8, "temperature": 0}
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer dummy"}).status_code == 401
        done = httpx.post(url, json=body, headers={"Authorization": "Bearer k-123"}, timeout=30)
        assert done.status_code == 200 and done.json()["choices"][0]["text"]
        assert listening_on(port) == {"127.0.0.1"}  # this machine only
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://localhost:{port}/v1" in err


def test_errors_are_one_line_with_what_to_do(tmp_path: Path, tiny_model: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "pipelines.serve", str(tmp_path / "nope")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("Invalid input:") and "Traceback" not in missing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run(
            [sys.executable, "-m", "pipelines.serve", str(tiny_model), "--port", str(port)],
            cwd=ROOT, env=ENV, capture_output=True, text=True,
        )  # fmt: skip
    assert taken.returncode == 1 and "--port" in taken.stderr and "Traceback" not in taken.stderr


def test_listening_beyond_loopback_needs_a_key(tiny_model: Path) -> None:
    port = free_port()
    opened = serve(str(tiny_model), "--host", "0.0.0.0", "--port", str(port))
    _, err = opened.communicate(timeout=120)
    assert opened.returncode == 1 and "Traceback" not in err
    assert err.startswith("Exposed without an API key:") and "no API key is set" in err and "--api-key-file" in err
    assert listening_on(port) == set()
    keyed = serve(str(tiny_model), "--host", "0.0.0.0", "--port", str(port), "--api-key", "k-9", "--device", "cpu")
    try:
        deadline = time.monotonic() + 90
        while not listening_on(port):
            assert keyed.poll() is None and time.monotonic() < deadline, keyed.communicate()[1]
            time.sleep(0.2)
        assert listening_on(port) == {"0.0.0.0"}
        body = {"prompt": "def ", "max_tokens": 2}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30)
        assert answer.status_code == 401  # exposed, and the key is required
    finally:
        keyed.send_signal(signal.SIGINT)
        keyed.communicate(timeout=30)
