"""The runtimes behind one interface, chosen in one place: what a state folder's last start used, else the
configured one; an unknown name is refused with what to use instead."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from agent.errors import StackError
from agent.runtimes import choose_runtime, open_runtime, record_runtime, runtime_in_use
from agent.runtimes.base import Runtime
from agent.runtimes.docker_stack import DockerStack
from agent.runtimes.embedded import EmbeddedRuntime
from pipelines.errors import InputError

PROTOCOL = [name for name, value in vars(Runtime).items() if callable(value) and not name.startswith("_")]


@pytest.mark.parametrize("cls", [EmbeddedRuntime, DockerStack])
def test_both_runtimes_offer_every_method_of_the_protocol(cls: type) -> None:
    assert cls.name in ("embedded", "docker")
    for name in PROTOCOL:
        mine, declared = inspect.signature(getattr(cls, name)), inspect.signature(getattr(Runtime, name))
        assert list(mine.parameters)[: len(declared.parameters)] == list(declared.parameters), (cls, name)


def test_the_runtime_in_use_is_the_one_recorded_else_the_configured_one(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="No completion server was started here"):
        runtime_in_use(tmp_path)
    assert runtime_in_use(tmp_path, "embedded").name == "embedded"
    record_runtime(tmp_path, open_runtime("docker", tmp_path))
    assert isinstance(runtime_in_use(tmp_path, "embedded"), DockerStack)  # what runs wins over the setting
    fresh = EmbeddedRuntime(tmp_path)
    assert not fresh.running() and fresh.serving() is None and fresh.url() is None
    assert [s.running for s in fresh.status()] == [False]
    assert DockerStack(tmp_path / "elsewhere").status() == [] and not DockerStack(tmp_path / "elsewhere").running()


def test_auto_means_embedded_without_an_nvidia_gpu_and_unknown_names_are_refused() -> None:
    assert choose_runtime("embedded") == "embedded" and choose_runtime("docker") == "docker"
    assert choose_runtime("auto") == "embedded"  # no NVIDIA GPU on a test machine (a GPU box may say docker)
    with pytest.raises(InputError, match="use one of auto, embedded, docker"):
        choose_runtime("kubernetes")
