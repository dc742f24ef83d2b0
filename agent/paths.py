"""Where the agent keeps things under its data folder (``[agent] data_dir``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CURRENT_DATASET = "current"


@dataclass(frozen=True)
class AgentPaths:
    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def datasets(self) -> Path:
        """One dataset folder per set of watched repos (``<key>/``) and frozen copies per version."""
        return self.root / "datasets"

    @property
    def current_dataset(self) -> Path:
        """A relative link to the dataset folder of the repositories watched now (what the completion server reads
        repository context from; relative, so it also resolves where ``datasets`` is mounted in a container)."""
        return self.datasets / CURRENT_DATASET

    def point_current_dataset(self, folder: Path) -> None:
        """Point :attr:`current_dataset` at ``folder`` (atomically: a reader sees the old or the new one)."""
        tmp = self.datasets / f".{CURRENT_DATASET}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(folder).name)
        os.replace(tmp, self.current_dataset)

    def snapshot(self, version: str) -> Path:
        """The frozen dataset a model trains and evaluates on (hard links; immutable)."""
        return self.datasets / "snapshots" / version

    @property
    def runs(self) -> Path:
        """Training runs, one per model version."""
        return self.root / "runs"

    @property
    def serving_root(self) -> Path:
        """Converted models (``<version>-<N>gpu/`` for Triton, ``<version>-hf/`` for the embedded engine)."""
        return self.root / "models"

    def evals(self, version: str) -> Path:
        return self.root / "evals" / version

    @property
    def jobs(self) -> Path:
        """Per job: its log and the process group it runs."""
        return self.root / "jobs"

    def job_log(self, job_id: int) -> Path:
        return self.jobs / f"{job_id}.log"

    def job_pid(self, job_id: int) -> Path:
        return self.jobs / f"{job_id}.pid"

    @property
    def stack(self) -> Path:
        return self.root / "stack"

    @property
    def log_file(self) -> Path:
        return self.root / "agent.log"

    @property
    def token_file(self) -> Path:
        """The API token, readable by this user only (0600)."""
        return self.root / "agent.token"

    @property
    def endpoint_file(self) -> Path:
        """``{"url", "pid"}`` of the running agent's API."""
        return self.root / "agent.json"

    @property
    def paused_flag(self) -> Path:
        return self.root / "paused"

    @property
    def lock_file(self) -> Path:
        """Held by the running agent: one agent per data folder."""
        return self.root / "agent.lock"
