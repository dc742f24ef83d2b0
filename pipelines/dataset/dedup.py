"""Near-duplicate detection: MinHash signatures over word 5-grams, banded for lookup.

The decision is a pure function of the set of files, so an incremental update and a fresh build agree:
within each group of files connected by "similar at or above the threshold", files are visited in key
order and a file is dropped when a file kept before it is similar to it.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Hashable, Iterable

import numpy as np

NUM_PERM = 128
BANDS = 16
ROWS = NUM_PERM // BANDS
SHINGLE = 5
_rng = np.random.default_rng(20231105)
# Multiply-shift hashing over 64-bit words: h(x) = (a*x + b) >> 32 with odd a (no slow modulo).
_A = (_rng.integers(0, 1 << 63, size=(NUM_PERM, 1), dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
_B = _rng.integers(0, 1 << 63, size=(NUM_PERM, 1), dtype=np.uint64)
_WORD = re.compile(r"\w+")
_CHUNK = 4096


class _WordHashes(dict):
    """word -> crc32, memoised (code repeats its words a lot)."""

    def __missing__(self, word: str) -> int:
        if len(self) > 2_000_000:
            self.clear()
        value = self[word] = zlib.crc32(word.encode())
        return value


_WORD_HASHES = _WordHashes()


def signature(text: str, min_tokens: int) -> np.ndarray | None:
    """The MinHash signature (uint32[NUM_PERM]) of a text, or None when it has too few words."""
    words = _WORD.findall(text)
    if len(words) < max(min_tokens, SHINGLE):
        return None
    hashes = np.fromiter(map(_WORD_HASHES.__getitem__, words), dtype=np.uint64, count=len(words))
    # Shingle hash of 5 consecutive words: a polynomial over the word hashes.
    combined = np.zeros(len(words) - SHINGLE + 1, dtype=np.uint64)
    for offset in range(SHINGLE):
        combined = combined * np.uint64(1_000_003) + hashes[offset : offset + len(combined)]
    shingles = np.unique(combined)
    result = np.full(NUM_PERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(shingles), _CHUNK):
            block = shingles[start : start + _CHUNK][None, :]
            permuted = (_A * block + _B) >> np.uint64(32)
            np.minimum(result, permuted.min(axis=1), out=result)
    return result.astype(np.uint32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of the two sets behind two signatures."""
    return float(np.count_nonzero(a == b)) / NUM_PERM


def similarities(a: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """``similarity(a, o)`` for each signature in ``others``, at once."""
    if not others:
        return np.zeros(0)
    return np.count_nonzero(np.stack(others) == a[None, :], axis=1) / NUM_PERM


def band_buckets(sig: np.ndarray) -> list[int]:
    """One bucket id per band; files sharing any bucket are candidate near duplicates."""
    buckets = []
    for band in range(BANDS):
        digest = hashlib.blake2b(sig[band * ROWS : (band + 1) * ROWS].tobytes(), digest_size=8).digest()
        buckets.append(int.from_bytes(digest, "little", signed=True))
    return buckets


def to_bytes(sig: np.ndarray | None) -> bytes | None:
    return None if sig is None else sig.astype("<u4").tobytes()


def from_bytes(raw: bytes | None) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw, dtype="<u4")


def component(seeds: Iterable[Hashable], neighbours: Callable[[Hashable], Iterable[Hashable]]) -> set[Hashable]:
    """All nodes reachable from ``seeds`` in the similarity graph."""
    seen: set[Hashable] = set()
    stack = list(seeds)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(n for n in neighbours(node) if n not in seen)
    return seen


def resolve(
    nodes: Iterable[Hashable], neighbours: Callable[[Hashable], Iterable[Hashable]]
) -> dict[Hashable, Hashable | None]:
    """Greedy in key order: map each node to None (kept) or to the earlier kept node it duplicates.

    ``nodes`` must be closed under ``neighbours`` (whole components), so the answer matches a global run.
    """
    kept: set[Hashable] = set()
    result: dict[Hashable, Hashable | None] = {}
    for node in sorted(nodes):
        twins = sorted(n for n in neighbours(node) if n in kept and n < node)
        if twins:
            result[node] = twins[0]
        else:
            kept.add(node)
            result[node] = None
    return result
