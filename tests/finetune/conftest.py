"""A small real dataset (git repo -> dataset builder) and helpers to run the real `repopilot train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.dataset.builder import build
from pipelines.dataset.config import DatasetConfig, RepoSpec
from tests.dataset.conftest import Repo

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def internal_module(i: int) -> str:
    """Code that leans on one internal API, so a model can learn its names."""
    return (
        f'"""Billing job {i}."""\n\n'
        "from acme.ledger import LedgerClient, acme_fetch_ledger, acme_post_invoice\n\n\n"
        f"def settle_account_{i}(client: LedgerClient, account_id: str) -> int:\n"
        "    ledger = acme_fetch_ledger(client, account_id)\n"
        f"    total = sum(entry.amount for entry in ledger.entries) + {i}\n"
        "    acme_post_invoice(client, account_id, total)\n"
        "    return total\n"
    )


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    repo = Repo(root / "acme")
    files = {f"jobs/job_{i:02d}.py": internal_module(i) for i in range(40)}
    files["acme/ledger.py"] = (
        "class LedgerClient:\n    def __init__(self, url):\n        self.url = url\n\n\n"
        "def acme_fetch_ledger(client, account_id):\n    return client.get(account_id)\n\n\n"
        "def acme_post_invoice(client, account_id, total):\n    return client.post(account_id, total)\n"
    )
    repo.commit(files)
    out = root / "dataset"
    build(out, [RepoSpec("acme", str(repo.path))], DatasetConfig(val_fraction=0.15, near_dup=False))
    return out


def run_train(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "train", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        **kwargs,
    )


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


TINY_FAST = [
    "--base-model", "tiny", "--block-size", "64", "--micro-batch-size", "8", "--grad-accum", "1",
    "--tiny-vocab", "600", "--logging-steps", "5",
]  # fmt: skip
