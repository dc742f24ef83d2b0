"""The generated compose project is FauxPilot's: its .env keys, services, mounts and ports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.runtimes.compose import StackSettings, read_settings, render_compose, write_project
from pipelines.errors import InputError

FAUXPILOT_KEYS = {"NUM_GPUS", "GPUS", "API_EXTERNAL_PORT", "TRITON_HOST", "TRITON_PORT", "MODEL", "MODEL_DIR",
                  "HF_CACHE_DIR"}  # fmt: skip


def env_of(project: Path) -> dict[str, str]:
    lines = (project / ".env").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value.removeprefix("'").removesuffix("'") for key, value in pairs}


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
    assert triton["ports"] == ["127.0.0.1:${TRITON_HTTP_PORT}:8000", "127.0.0.1:${TRITON_PORT}:8001"]
    assert triton["shm_size"] == "2gb" and triton["restart"] == "unless-stopped"
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert api["ports"] == ["${API_BIND}:${API_EXTERNAL_PORT}:5000"] and api["env_file"] == [".env"]
    assert "--engine" in api["command"] and "triton" in api["command"]


def test_the_api_container_reads_repository_context_from_the_agents_datasets(tmp_path: Path) -> None:
    settings = StackSettings(models_root="/m", model="x", context_dir="/data/datasets")
    api = json.loads(render_compose(settings).split("\n", 1)[1])["services"]["copilot_proxy"]
    assert "${CONTEXT_DIR}:/datasets:ro" in api["volumes"]  # read-only: the container cannot touch the data
    assert api["command"][api["command"].index("--context-dataset") + 1] == "/datasets/current"
    write_project(tmp_path, settings)
    assert env_of(tmp_path)["CONTEXT_DIR"] == "/data/datasets"
    plain = json.loads(render_compose(StackSettings(models_root="/m", model="x")).split("\n", 1)[1])
    assert "--context-dataset" not in plain["services"]["copilot_proxy"]["command"]


def test_gpu_reservation_is_optional_and_host_network_is_available() -> None:
    compose = json.loads(
        render_compose(StackSettings(models_root="/m", model="x", gpu=False, host_network=True)).split("\n", 1)[1]
    )
    triton, api = compose["services"]["triton"], compose["services"]["copilot_proxy"]
    assert "deploy" not in triton and "ports" not in triton
    assert triton["network_mode"] == api["network_mode"] == "host"
    assert "--grpc-port=${TRITON_PORT}" in triton["command"][2] and "${API_EXTERNAL_PORT}" in api["command"]
    assert "--grpc-address=127.0.0.1 --http-address=127.0.0.1 --allow-metrics=false" in triton["command"][2]
    assert api["command"][api["command"].index("--host") + 1] == "${API_BIND}"


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is installed by .ci/run")
def test_compose_cli_accepts_the_project(tmp_path: Path) -> None:
    write_project(tmp_path, StackSettings(models_root=str(tmp_path), model="x", gpu=True))
    result = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}/x-1gpu:/model" in result.stdout.replace("source: ", "").replace("\n      target: ", ":")


def compose_config(project: Path) -> str:
    result = subprocess.run(["docker-compose", "config"], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is installed by .ci/run")
def test_published_ports_stay_on_this_machine_unless_exposed_with_a_key(tmp_path: Path) -> None:
    write_project(tmp_path / "local", StackSettings(models_root=str(tmp_path), model="x", api_port=5123))
    published = [line.strip("- ") for line in compose_config(tmp_path / "local").splitlines() if ":" in line]
    assert "127.0.0.1:5123:5000/tcp" in published  # the API: this machine only
    assert {"127.0.0.1:8000:8000/tcp", "127.0.0.1:8001:8001/tcp"} <= set(published)  # Triton: the same
    assert not [p for p in published if p.endswith(("8002/tcp", "5000/tcp")) and not p.startswith("127.0.0.1:")]
    env = env_of(tmp_path / "local")
    assert env["API_BIND"] == "127.0.0.1" and "REPOPILOT_API_KEY" not in env
    with pytest.raises(InputError, match="no API key is set"):
        write_project(tmp_path / "open", StackSettings(models_root="/m", model="x", bind="0.0.0.0"))
    assert not (tmp_path / "open" / ".env").exists()
    write_project(tmp_path / "keyed", StackSettings(models_root="/m", model="x", bind="0.0.0.0", api_key="s3cret"))
    env = env_of(tmp_path / "keyed")
    assert env["API_BIND"] == "0.0.0.0" and env["REPOPILOT_API_KEY"] == "s3cret"
    assert ((tmp_path / "keyed" / ".env").stat().st_mode & 0o777) == 0o600  # it holds the key


HOSTILE = '/srv/my $HOME models #1 "quoted" back\\slash'


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is installed by .ci/run")
def test_env_values_reach_compose_literally(tmp_path: Path) -> None:
    settings = StackSettings(models_root=HOSTILE, model="x", api_key='k$y#1 "z"', gpu=False)
    write_project(tmp_path, settings)
    config = compose_config(tmp_path)
    assert f"{HOSTILE}/x-1gpu".replace("$", "$$") in config  # compose escapes a literal $ as $$ when it prints
    assert "k$$y#1" in config  # the key reached the API's environment whole, not cut at # nor interpolated


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [("api_key", "key\nINJECTED=1", "a line break"), ("models_root", "/srv/it's", "a single quote"),
     ("triton_image", "img\r", "a carriage return")],
)  # fmt: skip
def test_env_values_compose_cannot_carry_are_refused(tmp_path: Path, field: str, value: str, what: str) -> None:
    settings = StackSettings(**{"models_root": "/m", "model": "x", field: value})
    with pytest.raises(InputError, match=what):
        write_project(tmp_path, settings)
    assert not (tmp_path / ".env").exists()
