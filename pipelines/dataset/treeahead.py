"""Whole trees read by git while a command loads its modules.

A dataset build first asks git for every path of each repo (``git ls-tree``: ~50 ms of git on a repo of ~10,000
files), then waits for it; loading the builder (numpy and the rest) takes as long. :func:`trees_read_ahead` starts the
reads before, and :meth:`GitSource.tree <pipelines.dataset.gitsource.GitSource.tree>` takes what one read when it asks
for the same commit. Kept light (no numpy): it is loaded first.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

LS_TREE = ("ls-tree", "-r", "-l", "-z", "--full-tree")

# (git dir, commit) -> the ``git ls-tree`` started for it, and the file it writes to.
_ahead: dict[tuple[Path, str], tuple[subprocess.Popen, IO[bytes]]] = {}


@contextlib.contextmanager
def trees_read_ahead(repos: Iterable[tuple[str, str | None]]) -> Iterator[None]:
    """Start reading the tree of each (repo path, ref or None for the checked-out one) now, in a git process of its
    own; quietly none for a repo or ref git cannot read (the command then says why). On the way out, the reads not
    taken are stopped."""
    try:
        for path, ref in repos:
            _start(path, ref)
        yield
    finally:
        for proc, out in _ahead.values():
            proc.kill()
            proc.wait()
            out.close()
        _ahead.clear()


def _start(path: str, ref: str | None) -> None:
    found = subprocess.run(
        ["git", "-C", path, "rev-parse", "--absolute-git-dir", "--verify", "--quiet", f"{ref or 'HEAD'}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    lines = found.stdout.split()
    if found.returncode != 0 or len(lines) != 2:
        return
    git_dir, commit = Path(lines[0]), lines[1]
    with contextlib.ExitStack() as on_error:
        out = on_error.enter_context(tempfile.TemporaryFile())  # not a pipe: git would stop at 64 KiB until read
        proc = subprocess.Popen(
            ["git", f"--git-dir={git_dir}", *LS_TREE, commit], stdout=out, stderr=subprocess.DEVNULL
        )
        on_error.pop_all()  # started: kept open until the read is taken or stopped
    _ahead[(git_dir, commit)] = (proc, out)


def reading_ahead() -> bool:
    """Whether git is still reading a tree ahead (time the command may put to use)."""
    return any(proc.poll() is None for proc, _ in _ahead.values())


def tree_read_ahead(git_dir: Path, commit: str) -> bytes | None:
    """What the read started for ``commit`` of the repo at ``git_dir`` wrote; None where none was, or it failed."""
    started = _ahead.pop((git_dir, commit), None)
    if started is None:
        return None
    proc, out = started
    with out:
        if proc.wait() != 0:
            return None
        out.seek(0)
        return out.read()
