"""Keeping the last K models: older ones go (rows, runs, conversions, evals, unused snapshots); the serving
model and one a queued deploy needs stay."""

from __future__ import annotations

import time
from pathlib import Path

from agent.core import Agent
from agent.jobs import JobKind
from agent.pruning import prune_models
from agent.store import Model, ModelStatus
from tests.agent.agentkit import write_config


def add_model(agent: Agent, version: str, age: int) -> Path:
    run = agent.paths.runs / version
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    hf = agent.paths.serving_root / f"{version}-hf"
    hf.mkdir(parents=True)
    agent.paths.evals(version).mkdir(parents=True)
    snapshot = agent.paths.snapshot(f"data-{version}")
    snapshot.mkdir(parents=True)
    (snapshot / "manifest.json").write_text("{}")
    agent.store.add_dataset_version(f"data-{version}", {})
    agent.store.add_model(
        Model(
            version, None, f"data-{version}", str(run), None, {"hf": str(hf)}, time.time() - age, ModelStatus.CONVERTED
        )
    )
    return run


def test_old_models_are_pruned_but_not_the_serving_or_a_pending_one(tmp_path: Path) -> None:
    agent = Agent(config_file=write_config(tmp_path, keep=2))
    runs = {v: add_model(agent, v, age) for v, age in [("v1", 500), ("v2", 400), ("v3", 300), ("v4", 200), ("v5", 100)]}
    agent.store.start_deployment("v1", "embedded")  # the oldest serves
    agent.queue.enqueue(JobKind.DEPLOY, {"model": "v2"}, (), "deploy")  # and a deploy of v2 waits

    removed = prune_models(agent.services)

    assert removed == ["v3"]
    assert sorted(m.version for m in agent.store.list_models()) == ["v1", "v2", "v4", "v5"]
    assert not runs["v3"].exists() and not (agent.paths.serving_root / "v3-hf").exists()
    assert not agent.paths.evals("v3").exists() and not agent.paths.snapshot("data-v3").exists()
    for kept in ("v1", "v2", "v4", "v5"):
        assert (runs[kept] / "model").is_dir() and agent.paths.snapshot(f"data-{kept}").exists()
    assert [m.version for m in agent.list_models()] == ["v5", "v4", "v2", "v1"]
