"""The hidden work folders of a conversion: one lock per model name, staging beside the output, placement.

A staging folder is ``MODELS_ROOT/.convert+NAME+XXXX`` ('+' cannot occur in a name, so one model's cleanup
never touches another's); it is renamed into place only when complete, and removed on failure or by the
next run after a kill.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipelines.convert.errors import ModelInputError
from pipelines.fsutil import fsync_dir


@contextlib.contextmanager
def locked(root: Path, name: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".convert+{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelInputError(f"Another conversion of {name} is writing to {root}. Wait for it.") from None
        yield


def staging_prefix(name: str) -> str:
    """Hidden work folders of one model's conversions ('+' cannot occur in a name, so no other model matches)."""
    return f".convert+{name}+"


def new_staging(root: Path, name: str) -> Path:
    """A fresh staging folder, after removing those a killed run of this model left (call under ``locked``)."""
    for stale in root.glob(staging_prefix(name) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=staging_prefix(name), dir=root))


def place(staged: Path, final: Path, name: str) -> None:
    """Rename ``staged`` to ``final``, moving an older ``final`` out of the way first."""
    old = None
    if final.exists():
        old = final.with_name(f"{staging_prefix(name)}old-{os.getpid()}")
        final.rename(old)
    staged.rename(final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk (deferred until the checks, so the disk writes meanwhile)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for path in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(path)
