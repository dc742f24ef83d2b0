"""`repopilot server up|swap|logs|down|status --stack-dir` by hand, embedded runtime: a real background server,
swap, rollback, down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import StackError
from agent.runtimes.embedded import EmbeddedRuntime
from tests.services import complete, free_port, trained_tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    one = trained_tiny(root / "one", seed=0)
    two = trained_tiny(root / "two", seed=1)
    broken = root / "broken"
    shutil.copytree(two, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    return {"one": one, "two": two, "broken": broken}


def stack(*args: str, stack_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "server", args[0], "--stack-dir", str(stack_dir), *args[1:]],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


def test_up_status_swap_rollback_down_through_the_cli(models, tmp_path: Path) -> None:
    port = free_port()
    up = stack("up", "--runtime", "embedded", "--model", str(models["one"]), "--port", str(port), stack_dir=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "healthy" in up.stdout and f"http://localhost:{port}/v1" in up.stdout
    status, first = complete(port, "def add(a, b):\n")
    assert status == 200 and first["choices"]
    swapped = stack("swap", str(models["two"]), stack_dir=tmp_path)
    assert swapped.returncode == 0, swapped.stderr
    assert str(models["two"]) in stack("status", stack_dir=tmp_path).stdout
    failed = stack("swap", str(models["broken"]), stack_dir=tmp_path)
    assert failed.returncode == 1 and "rolled back" in failed.stderr and "Traceback" not in failed.stderr
    status_out = stack("status", "--json", stack_dir=tmp_path)
    assert status_out.returncode == 0
    [service] = json.loads(status_out.stdout)
    assert service["healthy"] and str(models["two"]) in service["detail"]
    assert complete(port, "def add(a, b):\n")[0] == 200
    assert "starting" in stack("logs", stack_dir=tmp_path).stdout
    down = stack("down", stack_dir=tmp_path)
    assert down.returncode == 0
    assert stack("status", stack_dir=tmp_path).returncode == 3
    with pytest.raises(OSError):
        complete(port, "def ")


def test_a_model_that_cannot_start_is_reported_with_its_log(models, tmp_path: Path) -> None:
    runtime = EmbeddedRuntime(tmp_path)
    with pytest.raises(StackError) as err:
        runtime.up(models["broken"], free_port(), timeout=60)
    assert "did not become healthy" in str(err.value)
    assert not runtime.status()[0].running
