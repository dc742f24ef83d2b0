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
from agent.runtimes.embedded import EmbeddedRuntime
from agent.store import Store
from pipelines.finetune.data import iter_records
from tests.agent.agentkit import make_repo, wait_for, write_config
from tests.finetune.conftest import ENV, internal_module

KILLS = int(os.environ.get("REPOPILOT_KILLS", "6"))
# Where to kill, round after round: while a job of that kind runs ("train+": once the run has a checkpoint).
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


def running(data: Path, target: str, after: int) -> bool:
    """A job of that kind (newer than job ``after``) runs; or it is over already: a fast step may slip
    through between polls, and convert/deploy are cancelled when the gate rejects the model."""
    kind = target.rstrip("+")
    for job in jobs(data):
        if job.id <= after or job.kind.value != kind:
            continue
        if job.state in (JobState.DONE, JobState.CANCELLED):
            return True
        if job.state == JobState.RUNNING:
            if not target.endswith("+"):
                return True
            progress = data / "runs" / f"v{job.id}" / "progress.jsonl"
            return progress.exists() and '"checkpoint"' in progress.read_text()
    return False


def chain_over(data: Path) -> bool:
    listed = jobs(data)
    return any(j.kind.value == "deploy" for j in listed) and all(j.state in FINISHED for j in listed)


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
    kills, rounds, files, round_start = [], 1, 31, 0
    try:
        for i in range(KILLS):
            target = TARGETS[i % len(TARGETS)]
            if i and i % len(TARGETS) == 0:  # next round: a commit (made while the agent is down) starts a chain
                proc = start_agent(config, log)
                wait_for(lambda: chain_over(data), 300, "the round's chain", lambda: log.read_text()[-3000:])
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                round_start = max(j.id for j in jobs(data))
                repo.commit({f"jobs/round_{rounds}_{k}.py": internal_module(1000 * rounds + k) for k in range(3)})
                rounds, files = rounds + 1, files + 3
            proc = start_agent(config, log)
            wait_for(
                lambda t=target, r=round_start: running(data, t, r), 300, f"a {target} job",
                lambda: log.read_text()[-3000:],
            )  # fmt: skip
            time.sleep(rng.uniform(0.0, 0.5))
            states = {f"{j.kind.value}#{j.id}": j.state.value for j in jobs(data)}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append({"target": target, "states": sorted(set(states.values()))})
            after = {j.id for j in jobs(data)}
            assert seen_jobs <= after, "a job disappeared"
            seen_jobs = after
        proc = start_agent(config, log)
        wait_for(
            lambda: chain_over(data), 600, "the chain to finish after the last restart", lambda: log.read_text()[-4000:]
        )
        final = jobs(data)
        gate_failed = {j.id for j in final if j.kind.value == "eval" and (j.result or {}).get("gate") == "fail"}
        for job in final:  # all done, except what a rejecting gate cancelled
            assert job.state == JobState.DONE or (
                job.state == JobState.CANCELLED and job.error_title == "gate failed" and job.cancelled_by in gate_failed
            ), [(j.id, j.kind, j.state, j.error_title, j.error_message) for j in final]
        trains = [j for j in final if j.kind.value == "train"]
        assert len(trains) == rounds, [j.kind.value for j in final]
        # Nothing is corrupt: the dataset reads back, every model loads, the server serves.
        snapshot = Path([j for j in final if j.kind.value == "dataset"][-1].result["snapshot"])
        records = list(iter_records(snapshot, "train")) + list(iter_records(snapshot, "validation"))
        assert len(records) == files and all(r["text"] for r in records)
        from transformers import AutoModelForCausalLM

        for train in trains:
            run = data / "runs" / train.result["model"]
            assert json.loads((run / "result.json").read_text())["steps"] == STEPS
            AutoModelForCausalLM.from_pretrained(run / "model")
        assert resumed_from_checkpoint(data / "runs" / trains[0].result["model"])
        assert EmbeddedRuntime(data / "stack").status()[0].healthy
        resumes = sum(resumed_from_checkpoint(data / "runs" / t.result["model"]) for t in trains)
        print(json.dumps({"kills": len(kills), "rounds": rounds, "jobs": len(final), "training_resumes": resumes,
                          "gate_rejections": len(gate_failed), "kills_at": kills}))  # fmt: skip
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        EmbeddedRuntime(data / "stack").down()
        subprocess.run(["pkill", "-9", "-f", str(data)], check=False)
