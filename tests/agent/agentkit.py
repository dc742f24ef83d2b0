"""A real agent on a temp data folder, with a real git repo of internal code and a tiny-model config."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agent.config import AgentConfig, Config, PolicyConfig, ServerConfig, TrainingConfig, save_config
from tests.dataset.conftest import Repo
from tests.finetune.conftest import internal_module
from tests.services import free_port

TRAIN_ARGS = [
    "--block-size", "64", "--micro-batch-size", "8", "--tiny-vocab", "600", "--logging-steps", "5",
    "--save-steps", "10", "--launcher", "none",
]  # fmt: skip
EVAL_ARGS = ["--max-files", "4", "--max-lines-per-file", "2", "--max-new-tokens", "8", "--bootstrap", "100"]
LEDGER = (
    "class LedgerClient:\n    def __init__(self, url):\n        self.url = url\n\n\n"
    "def acme_fetch_ledger(client, account_id):\n    return client.get(account_id)\n\n\n"
    "def acme_post_invoice(client, account_id, total):\n    return client.post(account_id, total)\n"
)


def make_repo(path: Path, files: int = 30) -> Repo:
    repo = Repo(path)
    content = {f"jobs/job_{i:02d}.py": internal_module(i) for i in range(files)}
    content["acme/ledger.py"] = LEDGER
    repo.commit(content)
    return repo


def write_config(
    root: Path,
    *,
    retrain: bool = True,
    steps: int = 30,
    keep: int = 5,
    boxes: list | None = None,
    box: str = "",
    context: bool = False,
) -> Path:
    """config.toml for a test agent; ``retrain=False`` sets thresholds no change reaches. Repository context is off
    unless a test checks it (``context=True``): with it every evaluation also scores its completions with it."""
    threshold = 1 if retrain else 10**9
    config = Config(
        agent=AgentConfig(api_port=free_port(), data_dir=str(root / "data")),
        training=TrainingConfig(
            base_model="tiny",
            max_steps=steps,
            learning_rate=3e-3,
            batch_size=8,
            box=box,
            train_args=list(TRAIN_ARGS),
            eval_args=list(EVAL_ARGS),
        ),
        policy=PolicyConfig(min_changed_lines=threshold, min_changed_files=threshold, keep_models=keep),
        server=ServerConfig(runtime="embedded", port=free_port(), context=context),
        gpu_boxes=list(boxes or []),
    )
    return save_config(config, root / "config.toml")


def wait_for(check: Callable[[], object], timeout: float, what: str, on_timeout: Callable[[], str] = lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")


def jobs_summary(agent) -> str:
    lines = []
    for job in reversed(agent.list_jobs(limit=50)):
        error = f" {job.error.title}: {job.error.message[-1500:]}" if job.error else ""
        lines.append(f"#{job.id} {job.kind} {job.state}{error}")
    return "\n".join(lines)


def settled(agent, count: int) -> bool:
    """At least ``count`` jobs exist and none is queued or running."""
    jobs = agent.list_jobs()
    return len(jobs) >= count and all(j.state in ("done", "failed", "cancelled") for j in jobs)
