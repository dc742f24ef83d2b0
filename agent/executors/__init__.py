"""Where training runs: this machine (:mod:`.local`) or a GPU box over SSH (:mod:`.ssh`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.errors import UnknownBox
from agent.executors.base import Executor
from agent.executors.local import LocalExecutor

if TYPE_CHECKING:
    from agent.config import Config, GpuBox
    from agent.paths import AgentPaths


def make_executor(
    config: Config, box_name: str | None, paths: AgentPaths, detach: Callable[[], bool], where: object = "the config"
) -> Executor:
    """The executor of GPU box ``box_name`` (default: ``[training] box``, else the first box, else this machine)."""
    boxes = config.gpu_boxes
    box: GpuBox | None = None
    if box_name or config.training.box:
        wanted = box_name or config.training.box
        box = next((b for b in boxes if b.name == wanted), None)
        if box is None and wanted != "local":
            raise UnknownBox(f"No GPU box named {wanted!r} in {where}.")
    elif boxes:
        box = boxes[0]
    work = paths.jobs
    if box is None or box.kind == "local":
        return LocalExecutor(box.name if box else "local", box.gpus if box else [], work_dir=work)
    from agent.executors.ssh import SshExecutor

    return SshExecutor(box, local_work_dir=paths.root / "remote", detach=detach)
