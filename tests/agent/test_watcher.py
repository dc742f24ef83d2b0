"""The ref watcher on real git repositories, with real watchdog (inotify) and the polling fallback."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.watcher import RepoWatch, Watcher

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=GIT_ENV
    ).stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    commit(path)
    return path


def commit(repo: Path) -> str:
    git(repo, "commit", "-q", "--allow-empty", "-m", f"c {time.monotonic_ns()}")
    return git(repo, "rev-parse", "HEAD")


class Recorder:
    """Collects callbacks from the watcher's threads."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []
        self.errors: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def on_change(self, name: str, ref: str, sha: str) -> None:
        with self.lock:
            self.changes.append((name, ref, sha))

    def on_error(self, name: str, message: str) -> None:
        with self.lock:
            self.errors.append((name, message))


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Whether ``cond`` holds within ``timeout`` (it returns as soon as it does: a generous limit costs a passing run
    nothing and keeps a loaded machine from failing the test)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def make_watcher(rec: Recorder) -> Iterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def make(**kw: object) -> Watcher:
        kw.setdefault("debounce_s", 0.3)
        kw.setdefault("poll_interval_s", 60.0)  # inotify only unless a test asks for polling
        watcher = Watcher(rec.on_change, on_error=rec.on_error, **kw)  # type: ignore[arg-type]
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.stop()


def test_commit_on_watched_branch_calls_back_quickly(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    repo = make_repo(tmp_path / "r")
    watcher = make_watcher()
    watcher.add(RepoWatch("r", repo))
    watcher.start()
    time.sleep(0.1)
    sha = commit(repo)
    t0 = time.monotonic()
    # inotify, not the 60 s poll: well within 10 s even on a loaded machine
    assert wait_for(lambda: rec.changes, timeout=10.0), "no callback within 10 s"
    assert time.monotonic() - t0 < 10.0
    assert rec.changes == [("r", "main", sha)]


def test_burst_of_commits_gives_one_callback_with_the_last_sha(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    repo = make_repo(tmp_path / "r")
    watcher = make_watcher(debounce_s=3.0)  # longer than five commits take, even on a loaded machine
    watcher.add(RepoWatch("r", repo))
    watcher.start()
    time.sleep(0.1)
    shas = [commit(repo) for _ in range(5)]
    assert wait_for(lambda: rec.changes)
    time.sleep(3.5)  # a second callback would come within another debounce period
    assert rec.changes == [("r", "main", shas[-1])]


def test_commit_on_another_branch_does_not_call_back(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    repo = make_repo(tmp_path / "r")
    git(repo, "branch", "other")
    watcher = make_watcher()
    watcher.add(RepoWatch("r", repo))  # default ref: main, the branch checked out now
    watcher.start()
    time.sleep(0.1)
    git(repo, "checkout", "-q", "other")
    commit(repo)
    commit(repo)
    time.sleep(1.0)
    assert rec.changes == []
    git(repo, "checkout", "-q", "main")
    sha = commit(repo)  # the watcher is still alive for its own branch
    assert wait_for(lambda: rec.changes)
    assert rec.changes == [("r", "main", sha)]


def test_polling_mode_detects_commits(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    repo = make_repo(tmp_path / "r")
    watcher = make_watcher(use_inotify=False, poll_interval_s=0.2, debounce_s=0.1)
    watcher.add(RepoWatch("r", repo, "main"))
    watcher.start()
    assert watcher._observer is None
    sha = commit(repo)
    assert wait_for(lambda: rec.changes)
    assert rec.changes == [("r", "main", sha)]


def test_paused_holds_back_until_resumed_then_one_callback(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    repo = make_repo(tmp_path / "r")
    watcher = make_watcher(poll_interval_s=0.2)
    watcher.add(RepoWatch("r", repo))
    watcher.start()
    watcher.pause()
    assert watcher.paused
    commit(repo)
    sha = commit(repo)
    time.sleep(1.0)
    watcher.check_now()
    assert rec.changes == []
    watcher.resume()
    assert not watcher.paused
    assert wait_for(lambda: rec.changes)
    time.sleep(0.6)
    assert rec.changes == [("r", "main", sha)]


def test_deleted_repo_reports_once_and_others_keep_working(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    gone, alive = make_repo(tmp_path / "gone"), make_repo(tmp_path / "alive")
    watcher = make_watcher(poll_interval_s=0.2, debounce_s=0.1)
    watcher.add(RepoWatch("gone", gone))
    watcher.add(RepoWatch("alive", alive))
    watcher.start()
    shutil.rmtree(gone)
    assert wait_for(lambda: rec.errors)
    sha = commit(alive)
    assert wait_for(lambda: rec.changes)
    time.sleep(0.8)  # several polls later: still one error
    assert rec.changes == [("alive", "main", sha)]
    assert len(rec.errors) == 1
    name, message = rec.errors[0]
    assert name == "gone" and str(gone) in message and "gone" in message
    # it comes back (made elsewhere and moved in, so the watcher sees only its last commit): watching resumes
    staging = make_repo(tmp_path / "staging")
    back = commit(staging)
    os.rename(staging, gone)
    assert wait_for(lambda: len(rec.changes) == 2)
    assert rec.changes[-1] == ("gone", "main", back)
    later = commit(gone)
    assert wait_for(lambda: len(rec.changes) == 3)
    assert rec.changes[-1] == ("gone", "main", later)
    assert len(rec.errors) == 1


def test_raising_callback_does_not_stop_later_callbacks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = make_repo(tmp_path / "r")
    seen: list[str] = []

    def on_change(name: str, ref: str, sha: str) -> None:
        seen.append(sha)
        if len(seen) == 1:
            raise RuntimeError("boom")

    watcher = Watcher(on_change, debounce_s=0.2, poll_interval_s=60.0)
    watcher.add(RepoWatch("r", repo))
    watcher.start()
    try:
        with caplog.at_level(logging.ERROR, logger="agent.watcher"):
            first = commit(repo)
            assert wait_for(lambda: seen)
            assert wait_for(lambda: "boom" in caplog.text)
            time.sleep(0.3)
            second = commit(repo)
            assert wait_for(lambda: len(seen) == 2)
        assert seen == [first, second]
    finally:
        watcher.stop()


def test_bare_repo(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    work = make_repo(tmp_path / "work")
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    watcher = make_watcher()
    watcher.add(RepoWatch("bare", bare))
    watcher.start()
    time.sleep(0.1)
    sha = commit(work)
    git(work, "push", "-q", str(bare), "main")
    assert wait_for(lambda: rec.changes)
    assert rec.changes == [("bare", "main", sha)]
