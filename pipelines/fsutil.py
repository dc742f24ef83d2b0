"""Atomic file writes: a file is written beside its target and renamed into place."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file object whose content replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def dump_json(obj: Any, compact: bool = False) -> bytes:
    """Canonical JSON with sorted keys (byte-stable across runs); ``compact`` for big documents."""
    if compact:  # one line per top-level key: C-encoder speed, still diffable
        body = ",\n".join(
            f" {json.dumps(k, ensure_ascii=False)}: {json.dumps(obj[k], sort_keys=True, ensure_ascii=False)}"
            for k in sorted(obj)
        )
        return ("{\n" + body + "\n}\n").encode("utf-8")
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, dump_json(obj))


def user_cache_dir() -> Path:
    """Where repopilot keeps what is slow to work out and safe to lose (``$XDG_CACHE_HOME/repopilot``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repopilot"


def write_cache(path: Path, data: bytes) -> None:
    """Write a cache file atomically; a read-only home only means it is worked out again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError:
        pass


def sync_files(folder: Path, paths: list[Path]) -> None:
    """Make the content of many files just written durable: one ``syncfs`` of their filesystem (Linux), else an
    ``fsync`` of each."""
    if not paths:
        return
    if len(paths) > 8 and _syncfs(folder):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing a file's dirty pages now, without waiting (Linux ``sync_file_range``), so
    that a later :func:`sync_files` finds little left to do."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), 2)  # SYNC_FILE_RANGE_WRITE


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syncfs(folder: Path) -> bool:
    try:
        libc = _libc()
        fd = os.open(folder, os.O_RDONLY)
    except (OSError, AttributeError):
        return False
    try:
        return getattr(libc, "syncfs", None) is not None and libc.syncfs(fd) == 0
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_private(root: Path) -> int:
    """Take group and other permissions off ``root`` and everything under it (folders end up 0700, files
    0600, executables 0700); returns how many entries changed. Symbolic links are left alone."""
    changed = 0
    for folder, dirs, files in os.walk(root):
        for entry in [folder, *(os.path.join(folder, name) for name in (*dirs, *files))]:
            try:
                info = os.lstat(entry)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                continue
            mode = stat.S_IMODE(info.st_mode)
            wanted = (mode & 0o700) | (0o700 if stat.S_ISDIR(info.st_mode) else 0o600)
            if entry != folder and stat.S_ISDIR(info.st_mode):
                continue  # a folder is handled as the ``folder`` of its own walk step
            if mode != wanted:
                with contextlib.suppress(OSError):
                    os.chmod(entry, wanted)
                    changed += 1
    return changed
