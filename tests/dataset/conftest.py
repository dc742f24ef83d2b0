"""Real git repositories made on the fly, and helpers to read a dataset folder back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.dataset import native

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=ENV, input=input)
    return out.stdout.decode(errors="replace").strip()


class Repo:
    """A git working copy under a temp dir, with a clock so commits are reproducible."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", branch)
        git(path, "config", "commit.gpgsign", "false")
        self.tick = 0

    def write(self, files: dict[str, str | bytes | None]) -> None:
        for rel, content in files.items():
            target = self.path / rel
            if content is None:
                if target.exists() or target.is_symlink():
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")

    def commit(self, files: dict[str, str | bytes | None] | None = None, message: str = "change") -> str:
        if files:
            self.write(files)
        git(self.path, "add", "-A")
        self.tick += 1
        stamp = f"{1_700_000_000 + self.tick * 60} +0000"
        env_date = {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        subprocess.run(
            ["git", "-C", str(self.path), "commit", "-q", "--allow-empty", "-m", message],
            check=True,
            capture_output=True,
            env={**ENV, **env_date},
        )
        return self.head()

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def git(self, *args: str) -> str:
        return git(self.path, *args)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "project")


def python_file(name: str, body_lines: int = 12, seed: int = 0) -> str:
    """A distinct, realistic Python module (distinct enough not to be a near duplicate of another)."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda_", "zeta"]
    lines = [f'"""Module {name}."""', "", "import os", ""]
    for i in range(body_lines):
        w = words[(i * 7 + seed * 3 + len(name)) % len(words)]
        lines.append(f"def {name}_{w}_{i}_{seed}(value_{i}, other_{seed}):")
        lines.append(f"    return value_{i} * {i + seed * 13} + len(os.sep) - other_{seed} + {len(name) * i}")
        lines.append("")
    return "\n".join(lines) + "\n"


def read_dataset(out: Path) -> dict[str, bytes]:
    """Every file a dataset consists of (shards, manifest, stats), by relative path."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and (rel.split("/")[0] in ("train", "validation", "index") or "/" not in rel):
            if rel in (".lock", "state.sqlite") or rel.startswith("state.sqlite"):
                continue
            found[rel] = path.read_bytes()
    return found


def records(out: Path, split: str | None = None) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for name, shards in manifest["shards"].items():
        if split and name != split:
            continue
        for shard in shards:
            with open(out / shard["file"], encoding="utf-8") as handle:
                rows.extend(json.loads(line) for line in handle)
    return rows


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def has_compiler() -> bool:
    return shutil.which((os.environ.get("CC") or "cc").split()[0]) is not None


@pytest.fixture(params=["compiled", "numpy"])
def loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the compiled loops of :mod:`pipelines.dataset.native`, then with their numpy twins."""
    if request.param == "numpy":
        monkeypatch.setattr(native, "_library", None)
    elif not has_compiler():
        pytest.skip("no C compiler on this machine: only the numpy twins can run")
    else:
        assert native.library() is not None, "a C compiler is here, yet the compiled loops did not load"
    return request.param
