"""Kill -9 the agent at random points of a full retrain chain, again and again: nothing is corrupt, no job
is lost, and the chain finishes after the last restart (training resumed from its checkpoints)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.config import load_config
from agent.core import Agent
from agent.jobs import JobQueue, JobState
from agent.stack.embedded import EmbeddedRuntime
from agent.store import Store
from pipelines.finetune.data import iter_records
from tests.agent.agentkit import make_repo, wait_for, write_config
from tests.finetune.conftest import ENV

KILLS = int(os.environ.get("REPOPILOT_KILLS", "7"))
# Where to kill: while a job of that kind runs ("train+" once the run has a checkpoint), then at random.
TARGETS = ["dataset", "train", "train+", "eval", "convert", "deploy"]
STEPS = 200  # ~10 s of tiny training: a kill right after the first checkpoint lands mid-run
FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "agent", "start", "--foreground", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=ENV,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip


def jobs(data: Path) -> list:
    with Store(data / "state.db") as store:
        return JobQueue(store).list()


def running(data: Path, target: str) -> bool:
    """A job of that kind runs (or already finished: a fast step may slip through between polls)."""
    kind = target.rstrip("+")
    for job in jobs(data):
        if job.kind.value == kind and job.state == JobState.DONE:
            return True
        if job.kind.value == kind and job.state == JobState.RUNNING:
            if not target.endswith("+"):
                return True
            progress = data / "runs" / f"v{job.id}" / "progress.jsonl"
            return progress.exists() and '"checkpoint"' in progress.read_text()
    return False


def resumed_from_checkpoint(run: Path) -> bool:
    events = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    return any(e["event"] == "start" and e["step"] > 0 for e in events)


def test_kill_9_at_random_points_of_a_retrain_chain(tmp_path: Path) -> None:
    config = write_config(tmp_path, steps=STEPS)
    data = Path(load_config(config).agent.data_dir)
    repo = make_repo(tmp_path / "acme")
    Agent(config_file=config).add_repo(str(repo.path))  # not started: only records the repo and queues indexing
    rng = random.Random(int(os.environ.get("REPOPILOT_KILL_SEED", "7")))
    log = tmp_path / "agent.log"
    seen_jobs: set[int] = set()
    kills = []
    try:
        for i in range(KILLS):
            proc = start_agent(config, log)
            target = TARGETS[i] if i < len(TARGETS) else None
            if target:
                wait_for(
                    lambda t=target: running(data, t), 120, f"a {target} job to run", lambda: log.read_text()[-3000:]
                )
            time.sleep(rng.uniform(0.0, 0.5) if target else rng.uniform(1.0, 10.0))
            states = {f"{j.kind.value}#{j.id}": j.state.value for j in jobs(data)}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(states)
            after = {j.id for j in jobs(data)}
            assert seen_jobs <= after, "a job disappeared"
            seen_jobs = after
        proc = start_agent(config, log)

        def finished() -> bool:
            listed = jobs(data)
            return len(listed) >= 5 and all(
                j.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED) for j in listed
            )

        wait_for(finished, 600, "the chain to finish after the last restart", lambda: log.read_text()[-4000:])
        final = jobs(data)
        assert [j.state for j in final] == [JobState.DONE] * len(final), [
            (j.kind, j.state, j.error_message) for j in final
        ]
        kinds = [j.kind.value for j in final]
        assert kinds.count("train") == 1 and kinds[-4:] == ["train", "eval", "convert", "deploy"], kinds
        # Nothing is corrupt: the dataset reads back, the model loads, the server serves it.
        train = next(j for j in final if j.kind.value == "train")
        snapshot = Path(next(j for j in final if j.kind.value == "dataset").result["snapshot"])
        records = list(iter_records(snapshot, "train")) + list(iter_records(snapshot, "validation"))
        assert len(records) == 31 and all(r["text"] for r in records)
        run = data / "runs" / train.result["model"]
        result = json.loads((run / "result.json").read_text())
        assert result["steps"] == STEPS
        assert resumed_from_checkpoint(run)
        progress = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
        resumed = [e for e in progress if e["event"] == "start" and e["step"] > 0]
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(run / "model")
        runtime = EmbeddedRuntime(data / "stack")
        assert runtime.status().healthy
        print(json.dumps({"kills": len(kills), "jobs": len(final), "training_resumes": len(resumed),
                          "states_at_kill": [sorted(set(k.values())) for k in kills]}))  # fmt: skip
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        EmbeddedRuntime(data / "stack").down()
        subprocess.run(["pkill", "-9", "-f", str(data)], check=False)
