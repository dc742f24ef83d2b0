"""The tray app against a real agent: the daemon started by the app itself (connect_or_start) on a temp folder,
a real git repo, a tiny-model config. Qt runs offscreen (no display, no tray host needed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.daemon import data_paths
from tests.agent.agentkit import make_repo
from tests.agent.agentkit import write_config as agent_config

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before pytest-qt makes the QApplication; no display needed


def write_config(root: Path, steps: int = 20) -> Path:
    """config.toml of a test agent: tiny model, CPU, embedded server; no automatic retrain (the user asks)."""
    return agent_config(root, retrain=False, steps=steps)


@dataclass
class LiveAgent:
    config: Path
    repo: Path
    root: Path

    def stop(self) -> None:
        """Stop the agent and the completion server it may have started (that one outlives the agent)."""
        from agent import daemon
        from agent.runtimes.embedded import EmbeddedRuntime

        daemon.stop(str(self.config), timeout=30)
        EmbeddedRuntime(data_paths(str(self.config)).stack).down()

    def log_tail(self) -> str:
        from agent.daemon import data_paths

        path = data_paths(str(self.config)).log_file
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no agent log)"


@pytest.fixture
def live_agent(tmp_path: Path) -> Iterator[LiveAgent]:
    """A config + repo; the agent daemon is started by the UI under test and stopped here afterwards."""
    config = write_config(tmp_path)
    repo = make_repo(tmp_path / "repo")
    live = LiveAgent(config, repo.path, tmp_path)
    try:
        yield live
    finally:
        live.stop()
