"""The generated compose project is FauxPilot's: its .env keys, services, mounts and ports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.stack.compose import StackSettings, read_settings, render_compose, write_project

FAUXPILOT_KEYS = {"NUM_GPUS", "GPUS", "API_EXTERNAL_PORT", "TRITON_HOST", "TRITON_PORT", "MODEL", "MODEL_DIR",
                  "HF_CACHE_DIR"}  # fmt: skip


def env_of(project: Path) -> dict[str, str]:
    lines = (project / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_env_has_fauxpilots_keys_and_points_at_the_converted_model(tmp_path: Path) -> None:
    settings = StackSettings(models_root="/srv/models", model="acme", num_gpus=2, gpus="0,1", gpu=True)
    write_project(tmp_path, settings)
    env = env_of(tmp_path)
    assert set(env) >= FAUXPILOT_KEYS
    assert env["MODEL_DIR"] == "/srv/models/acme-2gpu" and env["NUM_GPUS"] == "2" and env["GPUS"] == "0,1"
    assert env["TRITON_HOST"] == "triton" and env["TRITON_PORT"] == "8001" and env["API_EXTERNAL_PORT"] == "5000"
    assert read_settings(tmp_path) == settings


def test_compose_services_like_fauxpilot(tmp_path: Path) -> None:
    compose = json.loads(render_compose(StackSettings(models_root="/m", model="x")).split("\n", 1)[1])
    triton, api = compose["services"]["triton"], compose["services"]["copilot_proxy"]
    assert "tritonserver --model-repository=/model" in triton["command"][2]
    assert "CUDA_VISIBLE_DEVICES=${GPUS}" in triton["command"][2]
    assert "${MODEL_DIR}:/model" in triton["volumes"]
    assert "${HF_CACHE_DIR}:/root/.cache/huggingface" in triton["volumes"]
    assert triton["ports"] == ["${TRITON_HTTP_PORT}:8000", "${TRITON_PORT}:8001", "${TRITON_METRICS_PORT}:8002"]
    assert triton["shm_size"] == "2gb" and triton["restart"] == "unless-stopped"
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert api["ports"] == ["${API_EXTERNAL_PORT}:5000"] and api["env_file"] == [".env"]
    assert "--engine" in api["command"] and "triton" in api["command"]


def test_gpu_reservation_is_optional_and_host_network_is_available() -> None:
    compose = json.loads(
        render_compose(StackSettings(models_root="/m", model="x", gpu=False, host_network=True)).split("\n", 1)[1]
    )
    triton, api = compose["services"]["triton"], compose["services"]["copilot_proxy"]
    assert "deploy" not in triton and "ports" not in triton
    assert triton["network_mode"] == api["network_mode"] == "host"
    assert "--grpc-port=${TRITON_PORT}" in triton["command"][2] and "${API_EXTERNAL_PORT}" in api["command"]


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is installed by .ci/run")
def test_compose_cli_accepts_the_project(tmp_path: Path) -> None:
    write_project(tmp_path, StackSettings(models_root=str(tmp_path), model="x", gpu=True))
    result = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}/x-1gpu:/model" in result.stdout.replace("source: ", "").replace("\n      target: ", ":")
