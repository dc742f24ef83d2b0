"""When to retrain and what a retrain is: the policy applied to the agent's state, the chain of jobs it
queues, the arguments training gets, and what a new model is compared with."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import TrainingConfig
from agent.errors import StoreError
from agent.executors.base import read_json
from agent.jobs import GATE_PASSED, Job, JobKind, JobSpec, JobState
from agent.policy import Decision, should_retrain

if TYPE_CHECKING:
    from agent.core import Agent

log = logging.getLogger(__name__)

RESOURCES = {
    JobKind.DATASET: "dataset",
    JobKind.EVAL: "eval",
    JobKind.CONVERT: "convert",
    JobKind.DEPLOY: "deploy",
}


def apply_policy(agent: Agent, now: dt.datetime) -> Decision | None:
    """Queue a retrain chain when the policy says so (the caller holds the agent's policy lock)."""
    if agent.watcher.paused or pending_retrain(agent) is not None:
        return None
    dataset = agent.latest_dataset()
    if dataset is None:
        return None
    version = dataset["dataset_version"]
    if any(m.dataset_version == version for m in agent.store.list_models()):
        return None  # a model was already trained on this data (deployed or rejected)
    trains = agent.queue.list(kind=JobKind.TRAIN)
    if trains and trains[-1].params.get("dataset_version") == version and trains[-1].state != JobState.DONE:
        return None  # the last attempt on this data failed: the user retries it
    decision = decide(agent, now)
    if decision.retrain:
        jobs = agent.queue.chain(retrain_steps(agent, {"dataset_version": version, "reason": decision.reason}))
        log.info("retrain queued (job %s): %s", jobs[0].id, decision.reason)
        agent.changed("job", id=jobs[0].id, state="queued", message=decision.reason)
        agent.kick()
    return decision


def decide(agent: Agent, now: dt.datetime) -> Decision:
    from agent.views import changes_since_serving

    models = agent.store.list_models()
    last = max((m.created_at for m in models), default=None)
    last_at = dt.datetime.fromtimestamp(last) if last else None
    return should_retrain(changes_since_serving(agent), last_at, now, agent.config.policy)


def retrain_steps(agent: Agent, train_params: dict[str, Any]) -> list[JobSpec]:
    train_executor = agent.executor(train_params.get("box"))
    return [
        JobSpec(JobKind.TRAIN, {**train_params, "box": train_executor.name}, train_executor.resource),
        JobSpec(JobKind.EVAL, {}, RESOURCES[JobKind.EVAL]),
        JobSpec(JobKind.CONVERT, {}, RESOURCES[JobKind.CONVERT], run_if=GATE_PASSED),
        JobSpec(JobKind.DEPLOY, {"reason": "retrain"}, RESOURCES[JobKind.DEPLOY], run_if=GATE_PASSED),
    ]


def pending_retrain(agent: Agent) -> Job | None:
    for state in (JobState.RUNNING, JobState.QUEUED):
        for job in agent.queue.list(state):
            if job.kind in (JobKind.TRAIN, JobKind.EVAL, JobKind.CONVERT):
                return job
            if job.kind == JobKind.DATASET and job.params.get("reason") == "retrain now":
                return job
    return None


def train_args(t: TrainingConfig) -> list[str]:
    args = ["--base-model", t.base_model, "--micro-batch-size", str(t.batch_size), "--grad-accum", "1"]
    args += ["--lora" if t.lora else "--no-lora"]
    if t.max_steps:
        args += ["--max-steps", str(t.max_steps)]
    if t.learning_rate:
        args += ["--learning-rate", str(t.learning_rate)]
    return [*args, *t.train_args]


def baseline_for(agent: Agent, version: str, run_dir: Path) -> tuple[Path, str]:
    """What a new model is compared with: the serving model, else the base it was trained from."""
    serving = agent.store.current_deployment()
    if serving and serving.model != version:
        with contextlib.suppress(StoreError):
            model = agent.store.get_model(serving.model)
            if (Path(model.run_dir) / "model").is_dir():
                return Path(model.run_dir) / "model", serving.model
    result = read_json(run_dir / "result.json") or {}
    base = result.get("base_model") or agent.config.training.base_model
    return Path(base) if Path(base).exists() else Path(str(base)), "the base model"
