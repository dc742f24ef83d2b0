"""What the agent's parts share, passed down to them instead of the Agent.

The job steps (:mod:`agent.steps`), the retrain policy (:mod:`agent.retrain`), the read models
(:mod:`agent.views`), pruning (:mod:`agent.pruning`) and the completion server (:mod:`agent.completion_server`)
each take a :class:`Services`; none of them imports :mod:`agent.core` or calls back into the Agent, which is a
thin facade that builds one of these and hands it down.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.events import EventLog
from agent.executors import make_executor
from agent.executors.base import Executor
from agent.jobs import JobQueue
from agent.paths import AgentPaths
from agent.store import Store
from agent.watcher import Watcher
from pipelines.dataset.folder import is_dataset

log = logging.getLogger(__name__)


@dataclass
class Services:
    """The store, the job queue, the configuration (replaced when settings change), the event log and the repo
    watcher of one agent, and the few things done with them everywhere."""

    config: Config
    config_file: Path
    paths: AgentPaths
    store: Store
    queue: JobQueue
    events: EventLog
    watcher: Watcher
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set while the agent stops: running jobs end (and resume at the next start), remote ones are left running."""
    wake: threading.Condition = field(default_factory=threading.Condition)
    """Notified when a job is queued: the agent's workers wait on it."""

    def changed(self, event: str, **data: Any) -> None:
        """Publish an event (``job``, ``repo``, ``model``, ``server``, ``status``, ``settings``)."""
        self.events.publish(event, data)

    def notify(self, title: str, message: str) -> None:
        """A desktop notification for the tray (model trained/deployed/rolled back, job failed)."""
        log.info("%s: %s", title, message)
        self.events.publish("notification", {"title": title, "message": message})

    def kick(self) -> None:
        """Wake the workers: a job was queued."""
        with self.wake:
            self.wake.notify_all()

    def executor(self, box_name: str | None = None) -> Executor:
        """The executor of the GPU box ``box_name`` (default: ``[training] box``, else the first box, else here)."""
        # detach: when the agent stops, a remote job keeps running and the next start reattaches to it
        return make_executor(self.config, box_name, self.paths, detach=self.stopping.is_set, where=self.config_file)

    def latest_dataset(self, version: str | None = None) -> dict[str, Any] | None:
        """``{"dataset_version", "snapshot"}`` of the newest dataset version (or of ``version``), None if none."""
        versions = self.store.list_dataset_versions()
        if version is None and versions:
            version = max(versions, key=lambda v: v.created_at).version
        if version is None or not is_dataset(self.paths.snapshot(version)):
            return None
        return {"dataset_version": version, "snapshot": str(self.paths.snapshot(version))}
