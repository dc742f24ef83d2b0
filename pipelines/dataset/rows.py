"""What the dataset's state knows of each file, and the runs of files it reads in key order.

A file is known by its key (repo, path); the hash of its key decides its split, where shards and index chunks
start, and its chunk of the near-duplicate index. A selection is a run of rows in key order, cut into ranges (the
shards of a split, the index chunks) at rows that mark a boundary.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from dataclasses import dataclass

from pipelines.dataset.config import DatasetConfig

Key = tuple[str, str]  # (repo, path)
INDEX_CHUNK_FILES = 256  # mean number of files per index chunk
LSH_CHUNKS = 256  # rows of the near-duplicate index; a file's is a hash of its key


@dataclass
class FileRow:
    """One path of one indexed repo and what became of it."""

    repo: str
    path: str
    mode: str
    sha: str
    size: int
    commit_sha: str
    lang: str | None
    split: str
    boundary: int
    filter_reason: str | None
    status: str
    dup_of: str | None = None
    shard: str | None = None
    line: int | None = None
    iboundary: int = 0
    chunk: str | None = None

    @property
    def key(self) -> Key:
        return (self.repo, self.path)


@dataclass(frozen=True)
class Selection:
    """A run of rows in key order, cut into ranges at rows whose ``boundary`` column is 1: the kept files of one
    split (``kept_split``), or every file."""

    where: str
    params: tuple
    boundary: str
    kept_split: str | None = None

    def holds(self, row: FileRow) -> bool:
        """Whether ``row`` is one of the selection (what ``where`` asks SQLite)."""
        return self.kept_split is None or (row.status == "kept" and row.split == self.kept_split)


def shard_selection(split: str) -> Selection:
    return Selection("status = 'kept' AND split = ?", (split,), "boundary", split)


INDEX_SELECTION = Selection("1 = 1", (), "iboundary")


class SelectionKeys:
    """All keys of one selection in memory (and the keys that start a range), answering :meth:`StateStore.before`,
    :meth:`StateStore.range_start` and :meth:`StateStore.range_end` as SQLite would."""

    def __init__(self, keys: list[Key], starts: list[Key]) -> None:
        self.keys, self.starts = keys, starts

    def before(self, sel: Selection, key: Key) -> Key | None:
        i = bisect.bisect_left(self.keys, key)
        return self.keys[i - 1] if i else None

    def range_start(self, sel: Selection, key: Key) -> Key | None:
        i = bisect.bisect_right(self.starts, key)
        if i:
            return self.starts[i - 1]
        return self.keys[0] if self.keys else None

    def range_end(self, sel: Selection, start: Key) -> Key | None:
        i = bisect.bisect_right(self.starts, start)
        return self.starts[i] if i < len(self.starts) else None

    def range_starts(self) -> list[Key]:
        """The first key of every range."""
        return self.starts if not self.keys or self.starts[:1] == self.keys[:1] else [self.keys[0], *self.starts]

    def range_keys(self, start: Key) -> list[Key]:
        """The keys from ``start`` up to (not including) the next range's start."""
        end = self.range_end(None, start)  # type: ignore[arg-type]
        return self.keys[
            bisect.bisect_left(self.keys, start) : len(self.keys) if end is None else bisect.bisect_left(self.keys, end)
        ]

    def _next_start(self, start: Key) -> Key | None:
        i = bisect.bisect_right(self.starts, start)
        return self.starts[i] if i < len(self.starts) else None


@functools.lru_cache(maxsize=1 << 17)
def key_hash(key: Key) -> int:
    """A stable 64-bit hash of a file's key (its split, its shard and index boundaries, its index chunk); kept for
    the last 131,072 keys asked (a build asks it several times a file)."""
    digest = hashlib.blake2b(f"{key[0]}\0{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def placement(key: Key, config: DatasetConfig) -> tuple[str, int, int]:
    """A file's split, whether a kept file starts a shard of its split, and whether a file starts an index chunk
    (three parts of its key's hash)."""
    hashed = key_hash(key)
    split = "validation" if hashed % 10_000 < round(config.val_fraction * 10_000) else "train"
    return split, int((hashed >> 24) % config.shard_records == 0), int((hashed >> 44) % INDEX_CHUNK_FILES == 0)


def lsh_chunk(key: Key) -> int:
    """The chunk of the near-duplicate index that holds a file's buckets."""
    return key_hash(key) % LSH_CHUNKS
