"""How each job kind runs. The pipelines run in subprocesses (`python -m agent.cli ...`), so the agent
never imports torch, a job can be cancelled by stopping its process group, and a crash of either side
leaves the other intact. Every step is safe to run again after the agent died in the middle of it:
the dataset builder and training resume, evaluation and conversion start over, deploy is idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.completion_server import ServerControl
from agent.errors import ExecutorError, StepError, StoreError
from agent.executors.base import TrainTask, repopilot_command, run_logged
from agent.jobs import Job, JobKind
from agent.logs import tail
from agent.pruning import prune_models
from agent.retrain import baseline_for, train_args
from agent.services import Services
from agent.store import Model, ModelStatus
from pipelines.cli_util import Exit
from pipelines.convert.layout import ft_folder, hf_folder
from pipelines.dataset.folder import MANIFEST, STATS, data_files, indexed_commits, is_dataset, read_manifest, read_stats
from pipelines.errors import RepoError, RepopilotError
from pipelines.fsutil import write_json_atomic


@dataclass
class StepContext:
    """What a step gets: its job, the agent's services and completion server, and how to report and to know it
    is cancelled."""

    job: Job
    svc: Services
    server: ServerControl
    report: Callable[[dict[str, Any]], None]
    is_cancelled: Callable[[], bool]

    def upstream(self, kind: JobKind) -> dict[str, Any] | None:
        """The result of the nearest job of ``kind`` this job depends on (directly or not)."""
        frontier, seen = list(self.job.depends_on), set()
        while frontier:
            job = self.svc.queue.get(frontier.pop(0))
            if job.kind == kind:
                return job.result or {}
            seen.add(job.id)
            frontier.extend(d for d in job.depends_on if d not in seen)
        return None

    def run_cli(self, *args: str) -> int:
        """`repopilot ARGS` with JSON progress, logged to the job's log; its exit code."""
        paths = self.svc.paths
        return run_logged(
            repopilot_command(*args),
            job_id=self.job.id,
            log_file=paths.job_log(self.job.id),
            pid_file=paths.job_pid(self.job.id),
            is_cancelled=self.is_cancelled,
            on_line=self._progress_line,
        )

    def fail(self, what: str, code: int) -> StepError:
        log = self.svc.paths.job_log(self.job.id)
        last = tail(log, 12)
        return disk_full(self.svc.paths.root, self.job.id, last) or StepError(
            f"{what} exited with code {code}. Log: {log}\n{last}", title=f"{self.job.kind.value} failed"
        )

    def _progress_line(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if event.get("event") in ("progress", "done") and event.get("total"):
            done, total = event["done"], event["total"]
            self.report(
                {
                    "fraction": round(min(done / total, 1.0), 4),
                    "eta_s": event.get("eta_s"),
                    "message": f"{event.get('stage', '')}: {done}/{total} {event.get('unit', '')}".strip(),
                }
            )
        elif event.get("event") and "stage" not in event:
            self.report({"message": event["event"]})


def disk_full(root: Path, job_id: int, text: str = "") -> StepError | None:
    """The clear error for a full disk (ENOSPC in the output, or almost no space left), else None."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    if "No space left on device" not in text and (free is None or free > 2 * 2**20):
        return None
    left = f" ({free / 2**20:.1f} MB free)" if free is not None else ""
    return StepError(
        f"The disk holding {root} is full{left}. Free some space (or move [agent] data_dir), then retry job "
        f"{job_id} with `repopilot job retry {job_id}`; nothing written so far is lost.",
        title="Disk full",
    )


# -- dataset ------------------------------------------------------------------------------------------------


def run_dataset(ctx: StepContext) -> dict[str, Any]:
    svc, paths = ctx.svc, ctx.svc.paths
    repos = svc.store.list_repos()
    if not repos:
        raise StepError("No repository is watched. Add one with `repopilot repo add PATH`.", title="Nothing to index")
    for repo in repos:
        if not Path(repo.path).exists():
            raise RepoError(
                f"{repo.name}: {repo.path} no longer exists. Restore it, or stop watching it with "
                f"`repopilot repo remove {repo.name}`."
            )
    specs = [
        {"name": r.name, "path": r.path, "ref": None if r.ref == "HEAD" else r.ref, "include": r.include,
         "exclude": r.exclude}
        for r in sorted(repos, key=lambda r: r.name)
    ]  # fmt: skip
    key = hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()[:12]
    folder = paths.datasets / key
    if is_dataset(folder):
        code = ctx.run_cli("dataset", "update", str(folder), "--progress", "json", "--json")
    else:
        spec_file = paths.jobs / f"{ctx.job.id}.repos.json"
        write_json_atomic(spec_file, specs)
        code = ctx.run_cli("dataset", "build", str(folder), "--repos-json", str(spec_file), "--progress", "json")
    if code != 0:
        raise ctx.fail("`repopilot dataset`", code)
    paths.point_current_dataset(folder)  # the completion server's repository context follows it
    manifest = read_manifest(folder)
    version = manifest["dataset_version"]
    snapshot = freeze(folder, paths.snapshot(version))
    stats = read_stats(folder)
    commits = indexed_commits(manifest)
    if not any(v.version == version for v in svc.store.list_dataset_versions()):
        svc.store.add_dataset_version(version, {**_stats_summary(stats), "commits": commits})
    for name, commit in commits.items():
        if commit:
            with contextlib.suppress(StoreError):  # removed while indexing
                svc.store.set_repo_indexed(name, commit)
    return {"dataset_version": version, "dataset_dir": str(folder), "snapshot": str(snapshot), "commits": commits}


def _stats_summary(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("files_seen", "files_kept", "files_dropped", "bytes_kept", "dropped", "redactions")
    summary = {k: stats[k] for k in keys if k in stats}
    summary["languages"] = {k: v.get("files", 0) for k, v in stats.get("languages", {}).items()}
    summary["repos"] = stats.get("repos", {})
    return summary


def freeze(folder: Path, snapshot: Path) -> Path:
    """A frozen copy of the dataset's current version (hard links: shards are immutable, content-addressed)."""
    if is_dataset(snapshot):
        return snapshot
    tmp = snapshot.with_name(snapshot.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in data_files(read_manifest(folder)):
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(folder / rel, target)
        except OSError:
            shutil.copy2(folder / rel, target)
    for name in (STATS, MANIFEST):  # the manifest last: it marks the copy complete
        shutil.copy2(folder / name, tmp / name)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if snapshot.exists():
        shutil.rmtree(snapshot)
    tmp.rename(snapshot)
    return snapshot


# -- train --------------------------------------------------------------------------------------------------


def run_train(ctx: StepContext) -> dict[str, Any]:
    svc = ctx.svc
    dataset = ctx.upstream(JobKind.DATASET) or svc.latest_dataset()
    if not dataset:
        raise StepError("There is no dataset yet. Add a repository first.", title="Nothing to train on")
    version = model_version(ctx.job)
    run_dir = svc.paths.runs / version
    executor = svc.executor(ctx.job.params.get("box"))
    task = TrainTask(
        job_id=ctx.job.id,
        dataset_dir=Path(dataset["snapshot"]),
        run_dir=run_dir,
        train_args=train_args(svc.config.training),
        log_file=svc.paths.job_log(ctx.job.id),
    )
    ctx.report({"message": f"training {version} on {executor.name}", "fraction": 0.0})
    result = executor.train(task, ctx.report, ctx.is_cancelled)
    if not (run_dir / "model").is_dir():
        raise ExecutorError(f"the run finished but {run_dir}/model is missing", title="Training failed")
    serving = svc.store.current_deployment()
    try:
        svc.store.get_model(version)
    except StoreError:
        svc.store.add_model(
            Model(
                version=version,
                parent=serving.model if serving else None,
                dataset_version=dataset["dataset_version"],
                run_dir=str(run_dir),
                eval_report=None,
                converted_dirs={},
                created_at=time.time(),
                status=ModelStatus.TRAINED,
            )
        )
    svc.notify("Model trained", f"{version}: {result.get('steps')} steps, loss {_num(result.get('train_loss'))}")
    return {
        "model": version,
        "run_dir": str(run_dir),
        "box": executor.name,
        **{k: result.get(k) for k in ("steps", "train_loss", "eval_loss", "base_model")},
    }


def model_version(job: Job) -> str:
    return f"v{job.id}"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "?"


# -- eval ---------------------------------------------------------------------------------------------------


def run_eval(ctx: StepContext) -> dict[str, Any]:
    svc = ctx.svc
    train = ctx.upstream(JobKind.TRAIN)
    dataset = ctx.upstream(JobKind.DATASET) or svc.latest_dataset()
    if not train or not dataset:
        raise StepError("evaluation needs a training job and a dataset upstream", title="Job problem")
    version = train["model"]
    run_dir = Path(train["run_dir"])
    baseline, baseline_name = baseline_for(svc, version, run_dir)
    out = svc.paths.evals(version)
    code = ctx.run_cli(
        "eval", dataset["snapshot"], "--baseline", str(baseline), "--candidate", str(run_dir / "model"),
        "--out", str(out), "--gate", "--progress", "json",
        *(["--context", "repo"] if svc.config.server.context else []),  # judged as it will be served
        *svc.config.training.eval_args,
    )  # fmt: skip
    if code not in (Exit.OK, Exit.CHECK_FAILED):  # the gate said no: a verdict, not a failure
        raise ctx.fail("`repopilot eval`", code)
    passed = code == 0
    report = out / "report.json"
    svc.store.update_model(
        version, eval_report=str(report), status=ModelStatus.EVALUATED if passed else ModelStatus.REJECTED
    )
    if not passed:
        svc.notify("Model rejected", f"{version} is worse than {baseline_name} on held-out code; it is not deployed.")
    return {"gate": "pass" if passed else "fail", "model": version, "baseline": baseline_name, "report": str(report)}


# -- convert ------------------------------------------------------------------------------------------------


def run_convert(ctx: StepContext) -> dict[str, Any]:
    svc = ctx.svc
    train = ctx.upstream(JobKind.TRAIN)
    if not train:
        raise StepError("conversion needs a training job upstream", title="Job problem")
    version, gpus = train["model"], svc.config.server.gpus
    root = svc.paths.serving_root
    code = ctx.run_cli(
        "convert", str(Path(train["run_dir"]) / "model"), "--models-root", str(root), "--name", version,
        "--gpus", str(gpus), "--force", "--progress", "json",
    )  # fmt: skip
    if code != 0:
        raise ctx.fail("`repopilot convert`", code)
    dirs = {"fastertransformer": str(ft_folder(root, version, gpus)), "hf": str(hf_folder(root, version))}
    svc.store.update_model(version, converted_dirs=dirs, status=ModelStatus.CONVERTED)
    return {"model": version, **dirs}


# -- deploy -------------------------------------------------------------------------------------------------


def run_deploy(ctx: StepContext) -> dict[str, Any]:
    version = ctx.job.params.get("model") or (ctx.upstream(JobKind.TRAIN) or {}).get("model")
    if not version:
        raise StepError("nothing to deploy: no model given and no training job upstream", title="Job problem")
    ctx.report({"message": f"deploying {version}"})
    result = ctx.server.serve(version, reason=ctx.job.params.get("reason", "deploy"))
    with contextlib.suppress(OSError, RepopilotError):  # a model too many is no reason to fail the deploy
        prune_models(ctx.svc)
    return result


STEPS: dict[JobKind, Callable[[StepContext], dict[str, Any]]] = {
    JobKind.DATASET: run_dataset,
    JobKind.TRAIN: run_train,
    JobKind.EVAL: run_eval,
    JobKind.CONVERT: run_convert,
    JobKind.DEPLOY: run_deploy,
}
