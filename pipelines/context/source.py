"""The index of a dataset folder, kept up to date while a server runs.

The dataset builder rewrites ``manifest.json`` last and atomically, and names shards by their content. So a change
is seen by a ``stat`` of the manifest (at most every ``poll_s``), and only the shards whose names are new are read
again; the index is rebuilt in a background thread and swapped in whole, so a request never waits for it and never
sees half of one. Until the first build is done, completions go without context.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.context.index import IndexedFile, RepoIndex
from pipelines.dataset.folder import MANIFEST, SPLITS, read_manifest, read_shard, shard_names
from pipelines.errors import RepopilotError

log = logging.getLogger(__name__)


def load_index(
    folder: Path, cache: dict[str, list[IndexedFile]] | None = None, splits: tuple[str, ...] = SPLITS
) -> RepoIndex:
    """The index of every record (of ``splits``) of the dataset at ``folder``; ``cache`` (shard name -> files) is
    reused and updated."""
    manifest = read_manifest(folder)
    cache = {} if cache is None else cache
    names = shard_names(manifest, splits)
    for name in names:
        if name not in cache:
            cache[name] = [IndexedFile.from_record(record) for record in read_shard(folder, name)]
    for name in set(cache) - set(names):
        del cache[name]
    files = [file for name in names for file in cache[name]]
    return RepoIndex(files, str(manifest.get("dataset_version", "")))


class DatasetIndex:
    """A :class:`RepoIndex` of the dataset at ``folder``, rebuilt in the background when the dataset changes."""

    def __init__(self, folder: Path, poll_s: float = 2.0) -> None:
        self.folder = Path(folder)
        self.poll_s = poll_s
        self._index: RepoIndex | None = None
        self._cache: dict[str, list[IndexedFile]] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._building: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error: str | None = None
        self.build_seconds = 0.0
        self.builds = 0

    def __call__(self) -> RepoIndex | None:
        """The current index (None before the first build); starts a rebuild when the manifest changed."""
        now = time.monotonic()
        if now - self._checked >= self.poll_s:
            self._checked = now
            self.refresh()
        return self._index

    def refresh(self) -> threading.Thread | None:
        """Start a rebuild in the background if the manifest changed since the last one; the thread, if any."""
        try:
            stat = (self.folder / MANIFEST).stat()
        except OSError:
            return None
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if seen == self._seen or (self._building is not None and self._building.is_alive()):
                return self._building
            self._seen = seen
            self._building = threading.Thread(target=self._build, name="context-index", daemon=True)
            self._building.start()
            return self._building

    def wait(self, timeout: float = 60.0) -> RepoIndex | None:
        """Build (or finish building) now; the index."""
        thread = self.refresh()
        if thread is not None:
            thread.join(timeout)
        return self._index

    def _build(self) -> None:
        started = time.perf_counter()
        try:
            index = load_index(self.folder, self._cache)
        except (RepopilotError, OSError, ValueError, KeyError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("repository context: cannot read %s (%s); completions go without it", self.folder, exc)
            with self._lock:
                self._seen = None  # try again at the next poll
            return
        self._index, self.error = index, None
        self.build_seconds = time.perf_counter() - started
        self.builds += 1
        log.info("repository context: %s files of %s indexed in %.2f s (dataset %s)", len(index.files), self.folder,
                 self.build_seconds, index.version)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """The index's state (asking for it also looks for a newer dataset, as a request does)."""
        index = self()
        out: dict[str, Any] = {"dataset": str(self.folder), "ready": index is not None, "builds": self.builds}
        if index is not None:
            out.update(index.stats(), version=index.version, build_seconds=round(self.build_seconds, 3))
        if self.error:
            out["error"] = self.error
        return out
