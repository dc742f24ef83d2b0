"""Record texts handed from the analysis workers to the builder through files instead of a pipe.

A worker appends each kept blob's record text (``output.record_text``) to a scratch file of its own in the dataset
folder (``.tmp-spool-<build>-<worker pid>``, swept like every temporary file a killed run leaves) and sends back only
where it is (:class:`Spooled`). The builder maps those files when it writes the shards and reads the texts in place:
they are not pickled, cross no pipe and are never all in the builder's memory at once (a build of spring-framework
sent ~60 MB back that way: ~0.1 s of its analysis, and ~60 MB of its peak memory).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from pathlib import Path
from typing import NamedTuple

from pipelines.fsutil import TMP_PREFIX

_IOV_MAX = 512  # texts per writev call (Linux takes up to 1,024)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # the whole file mapped at once: one fault each page costs more


class Spooled(NamedTuple):
    """Where a record text is: ``size`` bytes from ``offset`` of the spool file ``name`` (in the dataset folder)."""

    name: str
    offset: int
    size: int


# This process's spool file per build (prefix, pid): (fd, its name, bytes written). Keyed by pid too: a process
# forked from a writer has a file of its own.
_written: dict[tuple[str, int], tuple[int, str, int]] = {}


def spool_texts(prefix: str, texts: list[bytes | None]) -> list[Spooled | None]:
    """Append ``texts`` to this process's spool file of the build whose files start with ``prefix`` (a path); where
    each went (None for None)."""
    mine = (prefix, os.getpid())
    if mine not in _written:
        path = f"{prefix}-{mine[1]}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        _written[mine] = (fd, os.path.basename(path), 0)
    fd, name, offset = _written[mine]
    places: list[Spooled | None] = []
    pending = [text for text in texts if text]
    for text in texts:
        if text:
            places.append(Spooled(name, offset, len(text)))
            offset += len(text)
        else:
            places.append(None)
    for start in range(0, len(pending), _IOV_MAX):
        _write_all(fd, pending[start : start + _IOV_MAX])
    _written[mine] = (fd, name, offset)
    return places


def _write_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(chunk) for chunk in chunks]
    while views:
        done = os.writev(fd, views)
        if not done:
            raise OSError(errno.ENOSPC, "no byte of a spooled text was written")
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if views and done:
            views[0] = views[0][done:]


class SpoolReader:
    """The texts of a build's spool files in the dataset folder ``folder``, read in place (each file mapped once:
    with ``whole``, all its pages at once, for a reader of every text; else page by page as they are read)."""

    def __init__(self, folder: Path, whole: bool = True) -> None:
        self.folder = folder
        self._flags = mmap.MAP_SHARED | (_POPULATE if whole else 0)
        self._maps: dict[str, mmap.mmap] = {}

    def text(self, place: Spooled) -> bytes | memoryview:
        """The record text at ``place`` (read in place: valid until :meth:`close`; read into memory from a file
        system that cannot map files)."""
        mapped = self._maps.get(place.name)
        if mapped is None or len(mapped) < place.offset + place.size:  # mapped before the worker wrote it: again
            with open(self.folder / place.name, "rb") as handle:
                try:
                    mapped = self._maps[place.name] = mmap.mmap(
                        handle.fileno(), 0, flags=self._flags, prot=mmap.PROT_READ
                    )
                except OSError:
                    return os.pread(handle.fileno(), place.size, place.offset)
        return memoryview(mapped)[place.offset : place.offset + place.size]

    def close(self) -> None:
        """Unmap the files (a text still referenced keeps its map until freed)."""
        for mapped in self._maps.values():
            with contextlib.suppress(BufferError):
                mapped.close()
        self._maps.clear()


class Spool(SpoolReader):
    """The spool files of one build: their names' prefix for the workers, and their texts for the builder."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.prefix = os.fspath(folder / f"{TMP_PREFIX}spool-{os.getpid()}-{os.urandom(4).hex()}")

    def close(self) -> None:
        """Unmap and delete every spool file of this build, emptied first: a worker still alive keeps its file open,
        and the disk would get the pages of a file still open (e.g. at the ``syncfs`` of the outputs)."""
        super().close()
        if (written := _written.pop((self.prefix, os.getpid()), None)) is not None:  # this process wrote some too
            os.close(written[0])
        folder, stem = os.path.split(self.prefix)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if name.startswith(stem + "-"):
                with contextlib.suppress(FileNotFoundError):
                    os.truncate(os.path.join(folder, name), 0)
                    os.unlink(os.path.join(folder, name))
