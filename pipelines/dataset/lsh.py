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
from pipelines.dataset.state import LSH_CHUNKS, LSH_ROW_BYTES, Key, StateStore, damaged, decode_chunk_keys, lsh_chunk


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
        self.rows: dict[int, dict[Key, int]] = {}  # chunk -> its keys' rows, for the chunks read
        self.changed: set[int] = set(range(LSH_CHUNKS)) if anew else set()

    def _chunk_rows(self, chunk: int) -> dict[Key, int]:
        """The rows of a chunk's keys (its keys read from the state on first use)."""
        if chunk not in self.rows:
            rows: dict[Key, int] = {}
            if chunk in self.stored:
                start, size, raw = self.stored[chunk]
                keys = decode_chunk_keys(raw)
                if keys is None or len(keys) != size:
                    raise damaged(self.store.path)
                for row, key in enumerate(keys, start):
                    rows[key] = row
                    self.keys[row] = key
            self.rows[chunk] = rows
        return self.rows[chunk]

    def _row(self, key: Key) -> int | None:
        return self._chunk_rows(lsh_chunk(key)).get(key)

    def sharing(self, keys: list[Key]) -> set[Key]:
        """Every key sharing a bucket with one of ``keys`` (at once, for many)."""
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
            self._chunk_rows(chunk)
        return {self.keys[row] for row in found.tolist()}  # type: ignore[misc]

    def buckets_of(self, keys: list[Key]) -> np.ndarray:
        """The band buckets of ``keys``, each in the index with buckets (as every key that shares a bucket, or was
        put with buckets, is)."""
        rows = [self._row(key) for key in keys]
        if any(row is None or not self.alive[row] for row in rows):
            raise RuntimeError("near-duplicate index: buckets asked for a file it does not hold")
        return self.buckets[rows]

    def put_many(self, entries: dict[Key, np.ndarray | None]) -> None:
        """Set the buckets of many keys (None: the key has none); written to the state by :meth:`flush`."""
        added: list[tuple[int, Key, np.ndarray]] = []
        for key, buckets in entries.items():
            chunk = lsh_chunk(key)
            row = self._chunk_rows(chunk).get(key)
            if row is None:
                if buckets is not None:
                    added.append((chunk, key, buckets))
                    self.changed.add(chunk)
                continue
            self.changed.add(chunk)
            self.alive[row] = buckets is not None
            if buckets is not None:
                self.buckets[row] = buckets
        if added:
            first = len(self.keys)
            for row, (chunk, key, _) in enumerate(added, first):
                self.rows[chunk][key] = row
            self.keys += [key for _, key, _ in added]
            self.buckets = np.concatenate([self.buckets, np.array([b for _, _, b in added], dtype=np.int64)])
            self.alive = np.concatenate([self.alive, np.ones(len(added), dtype=bool)])
            self.chunk_of_row = np.concatenate([self.chunk_of_row, np.array([c for c, _, _ in added], dtype=np.int64)])

    def flush(self) -> None:
        """Write the chunks changed since the last flush back to the state."""
        out = self.buckets.astype("<i8", copy=False)
        self.store.lsh_write_chunks(
            {
                chunk: [(key, out[row].tobytes()) for key, row in self._chunk_rows(chunk).items() if self.alive[row]]
                for chunk in sorted(self.changed)
            }
        )
        self.changed.clear()
