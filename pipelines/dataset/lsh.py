"""The near-duplicate index: the band buckets of every file with a MinHash signature.

Two files are candidate near duplicates when they share a bucket in a band. The buckets of all files are one
int64[n, BANDS] array, searched with numpy at once; the state stores them in ``LSH_CHUNKS`` rows, files grouped by
a hash of their key, so that an update reads every bucket in a few large reads, turns into keys only the chunks it
looks at (those of the files it changed and of their candidates), and writes back only the chunks it changed:
what a one-file update costs hardly grows with the repository.
"""

from __future__ import annotations

import numpy as np

from pipelines.dataset.dedup import BANDS
from pipelines.dataset.rows import LSH_CHUNKS, Key, lsh_chunk
from pipelines.dataset.state import LSH_ROW_BYTES, StateStore, damaged, decode_chunk_keys


class LshIndex:
    """The band buckets of the files of a state, in memory; changes go back to the state with :meth:`flush`."""

    def __init__(self, store: StateStore, *, anew: bool = False) -> None:
        """``anew``: start from an empty index, every stored chunk rewritten by :meth:`flush` (a full update puts
        every file again, and a damaged index is then replaced rather than read)."""
        self.store = store
        stored = [] if anew else store.lsh_chunks()
        if any(len(buckets) % LSH_ROW_BYTES for _, _, buckets in stored):
            raise damaged(store.path)
        sizes = [len(buckets) // LSH_ROW_BYTES for _, _, buckets in stored]
        self.buckets = np.frombuffer(b"".join(b for _, _, b in stored), dtype="<i8").reshape(-1, BANDS).copy()
        self.alive = np.ones(len(self.buckets), dtype=bool)
        self.chunk_of_row = np.repeat(np.array([chunk for chunk, _, _ in stored], dtype=np.int64), sizes)
        self.stored: dict[int, tuple[int, int, bytes]] = {}  # chunk -> (first row, rows, its keys as stored)
        start = 0
        for (chunk, keys, _), size in zip(stored, sizes, strict=True):
            self.stored[chunk] = (start, size, keys)
            start += size
        self.keys: list[Key | None] = [None] * len(self.buckets)  # of the rows whose chunk was read
        self.row_of: dict[Key, int] = {}  # the rows of the keys of the chunks read
        self.read: set[int] = set(range(LSH_CHUNKS)) - set(self.stored)  # chunks whose keys are known
        self.changed: set[int] = set(range(LSH_CHUNKS)) if anew else set()

    def _read(self, chunk: int) -> None:
        """Learn the rows of a stored chunk's keys (its keys read from the state on first use)."""
        if chunk in self.read:
            return
        start, size, raw = self.stored[chunk]
        keys = decode_chunk_keys(raw)
        if keys is None or len(keys) != size:
            raise damaged(self.store.path)
        self.keys[start : start + size] = keys
        self.row_of.update(zip(keys, range(start, start + size), strict=True))
        self.read.add(chunk)

    def _row(self, key: Key) -> int | None:
        row = self.row_of.get(key)
        if row is None and len(self.read) < LSH_CHUNKS and (chunk := lsh_chunk(key)) not in self.read:
            self._read(chunk)
            row = self.row_of.get(key)
        return row

    def sharing(self, keys: list[Key]) -> set[Key]:
        """Every key sharing a bucket with one of ``keys`` (at once, for many)."""
        if not len(self.buckets):
            return set()  # an empty index (a full update, before its files are put)
        rows = [row for row in map(self._row, keys) if row is not None and self.alive[row]]
        if not rows:
            return set()
        mask = np.zeros(len(self.buckets), dtype=bool)
        for band in range(BANDS):  # np.isin would sort the whole column (and import numpy.ma, ~10 ms)
            wanted = np.sort(self.buckets[rows, band])
            column = self.buckets[:, band]
            mask |= wanted[np.searchsorted(wanted, column).clip(max=len(wanted) - 1)] == column
        found = np.flatnonzero(mask & self.alive)
        for chunk in set(self.chunk_of_row[found].tolist()):  # not np.unique: it imports numpy.ma (~25 ms)
            self._read(chunk)
        return {self.keys[row] for row in found.tolist()}  # type: ignore[misc]

    def buckets_of(self, keys: list[Key]) -> np.ndarray:
        """The band buckets of ``keys``, each in the index with buckets (as every key that shares a bucket, or was
        put with buckets, is)."""
        rows = [self._row(key) for key in keys]
        if any(row is None or not self.alive[row] for row in rows):
            raise RuntimeError("near-duplicate index: buckets asked for a file it does not hold")
        return self.buckets[rows]

    def drop(self, keys: list[Key]) -> None:
        """Forget the buckets of ``keys`` (files gone, or with no signature now); written by :meth:`flush`."""
        for row in map(self._row, keys):
            if row is not None and self.alive[row]:
                self.alive[row] = False
                self.changed.add(int(self.chunk_of_row[row]))

    def put_many(self, keys: list[Key], buckets: np.ndarray) -> None:
        """Set the buckets (int64[len(keys), BANDS]) of many keys; written to the state by :meth:`flush`."""
        rows = [self._row(key) for key in keys]
        known = [i for i, row in enumerate(rows) if row is not None]
        if known:
            at = np.array([rows[i] for i in known], dtype=np.int64)
            self.buckets[at] = buckets[known]
            self.alive[at] = True
            self.changed.update(self.chunk_of_row[at].tolist())
        added = [i for i, row in enumerate(rows) if row is None]
        if added:
            chunks = [lsh_chunk(keys[i]) for i in added]
            self.row_of.update((keys[i], row) for row, i in enumerate(added, len(self.keys)))
            self.changed.update(chunks)
            self.keys += [keys[i] for i in added]
            self.buckets = np.concatenate([self.buckets, buckets[added]])
            self.alive = np.concatenate([self.alive, np.ones(len(added), dtype=bool)])
            self.chunk_of_row = np.concatenate([self.chunk_of_row, np.array(chunks, dtype=np.int64)])

    def flush(self) -> None:
        """Write the chunks changed since the last flush back to the state (every one of them read, as a chunk is
        changed only through a key of it)."""
        is_changed = np.zeros(LSH_CHUNKS, dtype=bool)
        is_changed[list(self.changed)] = True
        rows = np.flatnonzero(is_changed[self.chunk_of_row] & self.alive)  # not np.isin: it imports numpy.ma
        chunks: dict[int, list[tuple[Key, bytes]]] = {chunk: [] for chunk in sorted(self.changed)}
        out = self.buckets.astype("<i8", copy=False)
        for row, chunk in zip(rows.tolist(), self.chunk_of_row[rows].tolist(), strict=True):
            chunks[chunk].append((self.keys[row], out[row].tobytes()))  # type: ignore[arg-type]
        self.store.lsh_write_chunks(chunks)
        self.changed.clear()
