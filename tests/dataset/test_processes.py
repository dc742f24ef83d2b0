"""`repopilot dataset build` leaves no process behind: not on success, a crash, Ctrl-C or SIGTERM.

The build analyses blobs in a pool of worker processes once there are enough of them; each case below runs
the real CLI in its own session on a repository big enough for the pool, and then looks for any process
left in that session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dataset.conftest import Repo, python_file

FILES = 450  # above the builder's _PARALLEL_FROM (400): the pool starts


def session_processes(sid: int) -> list[str]:
    """Live (not zombie) processes of session ``sid``, as 'pid cmdline'."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry} {cmdline[:120]}")
    return found


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("big") / "repo")
    repo.commit({f"pkg/m{i}.py": python_file(f"m{i}", body_lines=3, seed=i) for i in range(FILES)})
    return repo


def scratch_files(out: Path) -> list[str]:
    return sorted(path.name for path in out.glob(".tmp-*"))


def start_build(repo: Repo, out: Path, failpoint: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "REPOPILOT_FAILPOINT"}
    if failpoint:
        env["REPOPILOT_FAILPOINT"] = failpoint
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "dataset", "build", str(out), str(repo.path), "--progress", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own session: everything it starts can be found by session id
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, not a script
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, list[str]]:
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read() if proc.stderr else ""
    gone = wait_until(lambda: not session_processes(proc.pid), 10)
    return code, stderr, [] if gone else session_processes(proc.pid)


def test_a_finished_build_leaves_no_process(big_repo: Repo, tmp_path: Path) -> None:
    code, stderr, left = finish(start_build(big_repo, tmp_path / "ds", None))
    assert code == 0, stderr
    assert left == []
    assert scratch_files(tmp_path / "ds") == []  # the workers' spool files of record texts are gone too


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_build_stops_its_workers(big_repo: Repo, tmp_path: Path, sig: int, expected: int) -> None:
    proc = start_build(big_repo, tmp_path / "ds", "pool-running:hang")  # waits with its pool running
    try:
        pool_up = wait_until(lambda: len(session_processes(proc.pid)) >= 3, 60)  # build + tracker + workers
        assert pool_up, f"the worker pool did not start: {session_processes(proc.pid)}"
        proc.send_signal(sig)
        code, stderr, left = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == expected, stderr
    assert "nothing was lost" in stderr
    assert left == []
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert scratch_files(tmp_path / "ds") == []


def test_a_crashed_build_takes_its_workers_along(big_repo: Repo, tmp_path: Path) -> None:
    """The build dies at once (as from SIGKILL) with its pool running: the kernel ends the workers."""
    code, stderr, left = finish(start_build(big_repo, tmp_path / "ds", "pool-running"))
    assert code == 86, stderr
    assert left == []
    # What a killed build spooled is swept by the next one, which finishes the dataset.
    code, stderr, _ = finish(start_build(big_repo, tmp_path / "ds", None))
    assert code == 0, stderr
    assert scratch_files(tmp_path / "ds") == []
    assert (tmp_path / "ds" / "manifest.json").exists()
