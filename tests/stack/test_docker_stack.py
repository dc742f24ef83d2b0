"""The FauxPilot compose stack against a REAL dockerd, with images built locally (nothing is pulled).

The `triton` service runs the CPU STAND-IN image for Triton+FasterTransformer (a real tritonserver from
nvidia-pytriton computing with the NumPy reference forward over the converted FT files), because
FasterTransformer needs an NVIDIA GPU; the `copilot_proxy` service is this project's API image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from agent.errors import StackError
from agent.runtimes.compose import TRITON_CPU_STANDIN_IMAGE, StackSettings
from agent.runtimes.docker_stack import DockerStack, docker_available
from pipelines.convert import ConvertOptions, convert
from tests.services import ROOT, complete, free_port, listening_on, require, trained_tiny

KEY = "stack-key-1"  # [server] api_key: the served API must require it


def build_images() -> None:
    base = subprocess.run(["bash", "packaging/docker/make-base-image.sh"], cwd=ROOT, capture_output=True, text=True)
    assert base.returncode == 0, base.stderr
    built = subprocess.run(
        ["bash", "packaging/docker/build-images.sh", "--standin"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "BASE_IMAGE": "repopilot/base:bookworm"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    require(docker_available() and shutil.which("docker-compose") is not None, "dockerd and docker-compose")
    build_images()
    root = tmp_path_factory.mktemp("docker-stack")
    models = root / "models"
    for name, seed in (("v1", 0), ("v2", 1)):
        convert(ConvertOptions(model_dir=trained_tiny(root / name, seed=seed), models_root=models, gpus=1, name=name))
    # v3 converts fine but its API cannot load the tokenizer: it must fail its checks and roll back.
    convert(ConvertOptions(model_dir=root / "v2", models_root=models, gpus=1, name="v3"))
    (models / "v3-hf" / "tokenizer.json").write_text("{broken")
    settings = StackSettings(
        models_root=str(models), model="v1", gpu=False, host_network=True, triton_host="127.0.0.1",
        api_port=free_port(), triton_port=free_port(), triton_http_port=free_port(),
        triton_metrics_port=free_port(), triton_image=TRITON_CPU_STANDIN_IMAGE, api_key=KEY,
    )  # fmt: skip
    docker = DockerStack(root / "compose")
    try:
        docker.up(settings, timeout=240)
        yield docker, settings
    finally:
        docker.down()


def healthy(docker: DockerStack) -> bool:
    return all(s.healthy for s in docker.status())


def test_up_serves_a_completion_through_triton(stack) -> None:
    docker, settings = stack
    statuses = {s.name: s for s in docker.status()}
    assert statuses["triton"].healthy and statuses["copilot_proxy"].healthy
    status, body = complete(settings.api_port, "def add(a, b):\n", KEY)
    assert status == 200 and body["choices"][0]["text"]
    assert complete(settings.api_port, "def add(a, b):\n")[0] == 401  # a wrong key
    assert complete(settings.api_port, "def add(a, b):\n", key="")[0] == 401  # none
    env = (docker.project_dir / ".env").read_text()
    ports = (settings.api_port, settings.triton_port, settings.triton_http_port)
    assert {port: listening_on(port) for port in ports} == {port: {"127.0.0.1"} for port in ports}  # nothing more
    assert listening_on(settings.triton_metrics_port) == set()
    assert "MODEL='v1'" in env and "NUM_GPUS='1'" in env


def test_swap_then_failed_swap_rolls_back(stack) -> None:
    docker, settings = stack
    docker.swap("v2", timeout=240)
    assert "MODEL='v2'" in (docker.project_dir / ".env").read_text() and healthy(docker)
    with pytest.raises(StackError) as err:
        docker.swap("v3", timeout=90)
    assert "rolled back to v2" in str(err.value)
    assert "MODEL='v2'" in (docker.project_dir / ".env").read_text()
    deadline = time.monotonic() + 240  # v2 comes back (the swap waited 90 s for it; a loaded machine may need more)
    while not healthy(docker) and time.monotonic() < deadline:
        time.sleep(1)
    assert healthy(docker)
    assert complete(settings.api_port, "import os\n", KEY)[0] == 200


def test_service_restarts_after_a_crash(stack) -> None:
    docker, settings = stack
    before = {s["service"]: s["restarts"] for s in docker._containers()}
    docker.crash("copilot_proxy")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = {s["service"]: s for s in docker._containers()}
        if now["copilot_proxy"]["restarts"] > before["copilot_proxy"] and healthy(docker):
            break
        time.sleep(1)
    else:
        pytest.fail(f"copilot_proxy did not come back: {docker.logs(20, 'copilot_proxy')}")
    assert complete(settings.api_port, "def ", KEY)[0] == 200


def test_down_removes_the_containers(stack) -> None:
    docker, settings = stack
    docker.down()
    assert docker._containers() == []
    with pytest.raises(OSError):
        complete(settings.api_port, "def ", KEY)
    docker.up(settings, timeout=240)  # up again from nothing; the module fixture tears it down
    assert healthy(docker)
