"""Deleting what the agent no longer needs: models beyond ``[policy] keep_models`` and their files, and the
dataset snapshots no kept model was trained on."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

from agent.jobs import JobKind, JobState
from agent.policy import models_to_prune
from agent.services import Services

log = logging.getLogger(__name__)


def prune_models(svc: Services) -> list[str]:
    """Delete models beyond ``[policy] keep_models`` (never the serving one or one a pending job needs)."""
    serving = svc.store.current_deployment()
    models = svc.store.list_models()
    pending = {
        job.params.get("model")
        for state in (JobState.QUEUED, JobState.RUNNING)
        for job in svc.queue.list(state)
        if job.kind == JobKind.DEPLOY
    }
    candidates = [
        (m.version, dt.datetime.fromtimestamp(m.created_at), bool(serving and serving.model == m.version))
        for m in models
    ]
    removed = []
    for version in models_to_prune(candidates, svc.config.policy.keep_models):
        if version in pending:
            continue
        model = svc.store.get_model(version)
        svc.store.remove_model(version)  # forget first: a half-deleted folder is never offered for deploy
        for folder in [Path(model.run_dir), svc.paths.evals(version), *map(Path, model.converted_dirs.values())]:
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(version)
        log.info("pruned model %s", version)
    keep = {m.dataset_version for m in svc.store.list_models()}
    latest = svc.latest_dataset()
    if latest:
        keep.add(latest["dataset_version"])
    snapshots = svc.paths.datasets / "snapshots"
    if removed and snapshots.is_dir():
        for snapshot in snapshots.iterdir():
            if snapshot.name not in keep and not snapshot.name.endswith(".tmp"):
                shutil.rmtree(snapshot, ignore_errors=True)
    return removed
