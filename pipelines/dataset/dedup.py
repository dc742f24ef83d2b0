"""Near-duplicate detection: MinHash signatures over word 5-grams, banded for lookup.

The signature is a one-permutation MinHash (Li, Owen and Zhang, 2012) with optimal densification
(Shrivastava, 2017): every 5-gram is hashed once, the hash's top 7 bits pick one of 128 bins and a bin keeps
its smallest hash; an empty bin borrows the value of the first non-empty bin on its own fixed probe sequence.
Words are runs of ASCII letters, digits, ``_`` and non-ASCII bytes of the UTF-8 text, hashed with numpy over
the whole file at once (no Python loop per word), so a signature costs a sort of the file's 5-grams.

The decision is a pure function of the set of files, so an incremental update and a fresh build agree:
within each group of files connected by "similar at or above the threshold", files are visited in key
order and a file is dropped when a file kept before it is similar to it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Hashable, Iterable

import numpy as np

from pipelines.dataset.native import band_buckets, minhash_bins, pair_matches
from pipelines.fsutil import user_cache_dir, write_cache

NUM_PERM = 128
BANDS = 16
ROWS = NUM_PERM // BANDS
SHINGLE = 5
_BIN_SHIFT = np.uint64(64 - 7)  # 2**7 == NUM_PERM bins
_PROBES = 64  # probe sequence length per bin; a miss on all of them falls back to the next non-empty bin
_SEED = 20231105
_BUCKET_BATCH = 4096  # signatures whose band buckets are worked out together
_GROUP_BYTES = 1 << 20  # texts hashed together (a longer text alone)


def _random_tables() -> tuple[np.ndarray, np.ndarray]:
    """The probe sequences and the band weights: fixed random numbers (numpy's PCG64 from ``_SEED``), kept in the
    user's cache because importing numpy.random costs ~10 ms of every one-file ``repopilot dataset update``."""
    cache = user_cache_dir() / f"minhash-tables-{_SEED}-numpy{np.__version__}.bin"
    probe_bytes, weight_bytes = NUM_PERM * _PROBES * 8, ROWS * 8
    with contextlib.suppress(OSError):
        raw = cache.read_bytes()
        body, digest = raw[:-32], raw[-32:]
        if len(body) == probe_bytes + weight_bytes and hashlib.sha256(body).digest() == digest:
            probe = np.frombuffer(body[:probe_bytes], dtype="<i8").reshape(NUM_PERM, _PROBES).astype(np.int64)
            return probe, np.frombuffer(body[probe_bytes:], dtype="<u8").reshape(1, ROWS).astype(np.uint64)
    rng = np.random.default_rng(_SEED)
    probe = rng.integers(0, NUM_PERM, size=(NUM_PERM, _PROBES), dtype=np.int64)
    weights = rng.integers(1, 1 << 63, size=(1, ROWS), dtype=np.uint64) | np.uint64(1)
    body = probe.astype("<i8").tobytes() + weights.astype("<u8").tobytes()
    write_cache(cache, body + hashlib.sha256(body).digest())
    return probe, weights


_PROBE, _BAND_WEIGHTS = _random_tables()
# 1 for a byte of a word: ASCII letters, digits and "_", and every byte of a character that is not ASCII.
_WORD_TABLE = bytes(int(b >= 128 or chr(b).isalnum() or b == 95) for b in range(256))
_P = 0x100000001B3  # odd, so that it has an inverse modulo 2**64
_Q = np.uint64(1_000_003)
_powers = np.ones(1, dtype=np.uint64)
_inverse_powers = np.ones(1, dtype=np.uint64)


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i modulo 2**64 for i < n (grown on demand, kept for the process)."""
    global _powers, _inverse_powers
    if len(_powers) < n:
        size = max(n, 2 * len(_powers), 1 << 16)
        _powers, _inverse_powers = (_geometric(base, size) for base in (_P, pow(_P, -1, 1 << 64)))
    return _powers, _inverse_powers


def _geometric(base: int, size: int) -> np.ndarray:
    """base**i modulo 2**64 for i < size, by doubling: each step multiplies the known half by one power (vector
    products at memory speed, where ``np.cumprod`` over uint64 took ~60 ns an element)."""
    out = np.empty(size, dtype=np.uint64)
    out[0] = 1
    filled = 1
    while filled < size:
        step = min(filled, size - filled)
        np.multiply(out[:step], np.uint64(pow(base, filled, 1 << 64)), out=out[filled : filled + step])
        filled += step
    return out


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64): every input bit moves every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _words(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(hash, start offset) of every word of UTF-8 ``data``; a word's hash is the polynomial of its bytes,
    read off prefix sums."""
    padded = b" " + data + b" "
    is_word = np.frombuffer(padded.translate(_WORD_TABLE), dtype=bool)  # a byte table lookup at memory speed
    edges = np.flatnonzero(is_word[1:] != is_word[:-1])
    starts, ends = edges[0::2], edges[1::2]
    body = np.frombuffer(data, dtype=np.uint8)
    powers, inverse = _power_tables(len(body) + 1)
    prefix = np.empty(len(body) + 1, dtype=np.uint64)
    prefix[0] = 0
    np.multiply(body, powers[: len(body)], out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * inverse[starts], starts


def signatures_of(datas: list[bytes], min_tokens: int) -> list[np.ndarray | None]:
    """The MinHash signature (uint32[NUM_PERM]) of each UTF-8 text, or None for one with too few words.

    Texts go through numpy together, in groups of about ``_GROUP_BYTES`` (so that the per-byte arrays and the
    power tables stay a few MiB, whatever the batch); a word's hash does not depend on where it sits.
    """
    out: list[np.ndarray | None] = []
    group: list[bytes] = []
    size = 0
    for data in datas:
        if group and size + len(data) > _GROUP_BYTES:
            out += _group_signatures(group, min_tokens)
            group, size = [], 0
        group.append(data)
        size += len(data) + 1
    return out + _group_signatures(group, min_tokens)


def _group_signatures(datas: list[bytes], min_tokens: int) -> list[np.ndarray | None]:
    """:func:`signatures_of` a group of texts at once: their 5-gram bins from the compiled helper (one pass over the
    bytes, :mod:`pipelines.dataset.native`) or, without it, from numpy; then empty bins densified."""
    if not datas:
        return []
    least = max(min_tokens, SHINGLE)
    native = minhash_bins(datas, least, _WORD_TABLE, _P, int(_Q))
    values, filled, eligible = _numpy_bins(datas, least) if native is None else (*native[:2], native[2] >= least)
    if not eligible.any():
        return [None] * len(datas)
    _densify(values, filled, np.flatnonzero(eligible))
    return [values[i] if eligible[i] else None for i in range(len(datas))]


def _numpy_bins(datas: list[bytes], least: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values uint32[n, NUM_PERM], filled bool[n, NUM_PERM], eligible bool[n]) of texts with numpy.

    They are joined with a space, so no word or 5-gram spans two of them; a
    5-gram's hash h goes to bin ``h >> 57`` with value ``h & 0xFFFFFFFF``, and a bin keeps its smallest value
    (``np.minimum.at`` over the flat bins of all texts: one pass, where sorting the hashes took most of the time).
    """
    lengths = np.array([len(d) for d in datas], dtype=np.int64)
    file_starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    words, starts = _words(b" ".join(datas))
    owner = np.searchsorted(file_starts, starts, side="right") - 1
    eligible = np.bincount(owner, minlength=len(datas)) >= least
    values = np.full(len(datas) * NUM_PERM, 0xFFFFFFFF, dtype=np.uint32)
    filled = np.zeros(len(datas) * NUM_PERM, dtype=bool)
    if eligible.any():
        count = max(len(words) - SHINGLE + 1, 0)
        combined = words[:count].copy()
        for offset in range(1, SHINGLE):
            combined = combined * _Q + words[offset : offset + count]
        keep = (owner[:count] == owner[SHINGLE - 1 : SHINGLE - 1 + count]) & eligible[owner[:count]]
        hashes = _mix(combined[keep])
        cells = owner[:count][keep] * NUM_PERM + (hashes >> _BIN_SHIFT).astype(np.intp)  # (text, bin), flattened
        np.minimum.at(values, cells, (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        filled[cells] = True
    return values.reshape(len(datas), NUM_PERM), filled.reshape(len(datas), NUM_PERM), eligible


def _densify(values: np.ndarray, filled: np.ndarray, rows: np.ndarray) -> None:
    """Give each empty bin of ``rows`` the value of the first filled bin on its probe sequence.

    The probes are tried one step at a time for the bins still unresolved (most resolve in the first few), not
    all ``_PROBES`` of every empty bin at once."""
    empty_rows, empty_bins = np.nonzero(~filled[rows])
    if not len(empty_rows):
        return
    empty_rows = rows[empty_rows]
    chosen = np.full(len(empty_rows), -1, dtype=np.int64)
    open_ = np.arange(len(empty_rows))
    for step in range(_PROBES):
        probe = _PROBE[empty_bins[open_], step]
        hit = filled[empty_rows[open_], probe]
        chosen[open_[hit]] = probe[hit]
        open_ = open_[~hit]
        if not len(open_):
            break
    for i in open_:  # rare: the next filled bin, circularly
        order = np.flatnonzero(filled[empty_rows[i]])
        chosen[i] = order[np.searchsorted(order, empty_bins[i]) % len(order)]
    values[empty_rows, empty_bins] = values[empty_rows, chosen]


def signature_of(data: bytes, min_tokens: int) -> np.ndarray | None:
    """The MinHash signature of one UTF-8 text (see :func:`signatures_of`)."""
    return signatures_of([data], min_tokens)[0]


def signature(text: str, min_tokens: int) -> np.ndarray | None:
    """:func:`signature_of` the UTF-8 encoding of ``text``."""
    return signature_of(text.encode("utf-8"), min_tokens)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of the two sets behind two signatures."""
    return float(np.count_nonzero(a == b)) / NUM_PERM


def similarities(a: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """``similarity(a, o)`` for each signature in ``others``, at once."""
    if not others:
        return np.zeros(0)
    return np.count_nonzero(np.stack(others) == a[None, :], axis=1) / NUM_PERM


def pair_similarities(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``similarity(sigs[i], sigs[j])`` for each row (i, j) of ``pairs`` (counted by the compiled loop, else numpy)."""
    same = pair_matches(sigs, pairs)
    return (np.count_nonzero(sigs[pairs[:, 0]] == sigs[pairs[:, 1]], axis=1) if same is None else same) / NUM_PERM


def band_buckets_many(sigs: np.ndarray) -> np.ndarray:
    """int64[n, BANDS]: the bucket of each band of each signature (a 64-bit hash of the band's rows), by the
    compiled loop, else with numpy a few thousand signatures at a time (the 64-bit temporaries of 60,000 at once
    took 250 MB)."""
    compiled = band_buckets(sigs, _BAND_WEIGHTS)
    if compiled is not None:
        return compiled
    out = np.empty((len(sigs), BANDS), dtype=np.int64)
    for start in range(0, len(sigs), _BUCKET_BATCH):
        rows = sigs[start : start + _BUCKET_BATCH].astype(np.uint64).reshape(-1, BANDS, ROWS)
        out[start : start + _BUCKET_BATCH] = np.bitwise_xor.reduce(_mix(rows * _BAND_WEIGHTS), axis=2).view(np.int64)
    return out


def candidate_pairs(buckets: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """int[m, 2] (i < j): every pair of rows of ``buckets`` that share a bucket in some band and of which at least
    one is ``wanted`` (a bool per row), once. Each band's pairs come out of its sorted column at once: a row at
    position p of a run of equal buckets ending at e pairs with the rows at p+1 .. e-1."""
    n = len(buckets)
    found = [np.zeros(0, dtype=np.int64)]  # pair (i, j) as i * n + j
    for band in range(buckets.shape[1]):
        order = np.argsort(buckets[:, band])  # any order within a run of equal buckets gives the same pairs
        column = buckets[order, band]
        starts = np.flatnonzero(np.concatenate([[True], column[1:] != column[:-1]]))
        lengths = np.diff(np.concatenate([starts, [len(column)]]))
        shared = np.repeat(lengths > 1, lengths)
        position = np.flatnonzero(shared)
        if not len(position):
            continue
        later = np.repeat(starts + lengths, lengths)[shared] - position - 1  # the rows after each in its run
        first = np.repeat(position, later)
        step = np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later) + 1
        a, b = order[first], order[first + step]
        keep = wanted[a] | wanted[b]
        found.append(np.minimum(a, b)[keep].astype(np.int64) * n + np.maximum(a, b)[keep])
    codes = np.sort(np.concatenate(found))  # not np.unique: its first call imports numpy.ma (~17 ms per update)
    codes = codes[np.concatenate([[True], codes[1:] != codes[:-1]])] if len(codes) else codes
    return np.stack([codes // max(n, 1), codes % max(n, 1)], axis=1)


def similar_pairs(
    keys: list[Hashable],
    candidates: set[Hashable],
    sig: Callable[[Hashable], bytes | None],
    threshold: float,
    buckets: Callable[[list[Hashable]], np.ndarray] | None = None,
) -> dict[Hashable, list[Hashable]]:
    """For each of ``keys``, the ``candidates`` (those sharing an LSH bucket with one of them), sorted, whose
    similarity to it reaches ``threshold``, found with numpy over every band at once. ``buckets`` gives the band
    buckets of many keys where they are known already (else they are computed from the signatures)."""
    universe = sorted({*keys, *(n for n in candidates if sig(n) is not None)})
    if not universe:
        return {}
    matrix = matrix_of([sig(key) for key in universe])  # type: ignore[misc]
    position = {key: i for i, key in enumerate(universe)}
    wanted = np.zeros(len(universe), dtype=bool)
    wanted[[position[key] for key in keys]] = True
    linked = linked_rows(matrix, band_buckets_many(matrix) if buckets is None else buckets(universe), wanted, threshold)
    return {key: [universe[j] for j in sorted(near)] if (near := linked.get(position[key])) else [] for key in keys}


def linked_rows(matrix: np.ndarray, buckets: np.ndarray, wanted: np.ndarray, threshold: float) -> dict[int, list[int]]:
    """Each row of ``matrix`` (signatures; ``buckets``: their band buckets) that has similar ones -> those rows
    (unsorted): the rows sharing a bucket with it whose similarity to it reaches ``threshold``, of the pairs with at
    least one ``wanted`` row."""
    pairs = candidate_pairs(buckets, wanted)
    similar = [
        chunk[pair_similarities(matrix, chunk) >= threshold] for chunk in np.split(pairs, range(8192, len(pairs), 8192))
    ]
    linked: dict[int, list[int]] = {}
    for a, b in np.concatenate(similar).tolist():
        linked.setdefault(a, []).append(b)
        linked.setdefault(b, []).append(a)
    return linked


def to_bytes(sig: np.ndarray | None) -> bytes | None:
    return None if sig is None else sig.astype("<u4").tobytes()


def matrix_of(raws: list[bytes]) -> np.ndarray:
    """uint32[n, NUM_PERM]: signatures stored as :func:`to_bytes` gave them, as one array (one copy for all)."""
    return np.frombuffer(b"".join(raws), dtype="<u4").reshape(len(raws), NUM_PERM)


def component(
    seeds: Iterable[Hashable], similar: Callable[[list[Hashable]], dict[Hashable, list[Hashable]]]
) -> tuple[set[Hashable], dict[Hashable, list[Hashable]]]:
    """All nodes reachable from ``seeds`` in the similarity graph, and each one's neighbours.

    Walked a layer at a time: ``similar`` answers for a whole frontier at once.
    """
    neighbours: dict[Hashable, list[Hashable]] = {}
    frontier = list(dict.fromkeys(seeds))
    seen = set(frontier)
    while frontier:
        neighbours.update(similar([node for node in frontier if node not in neighbours]))
        frontier = [n for node in frontier for n in neighbours[node] if n not in seen]
        frontier = list(dict.fromkeys(frontier))
        seen.update(frontier)
    return seen, neighbours


def resolve(
    nodes: Iterable[Hashable], neighbours: Callable[[Hashable], Iterable[Hashable]]
) -> dict[Hashable, Hashable | None]:
    """Greedy in key order: map each node to None (kept) or to the earlier kept node it duplicates.

    ``nodes`` must be closed under ``neighbours`` (whole components), so the answer matches a global run.
    """
    kept: set[Hashable] = set()
    result: dict[Hashable, Hashable | None] = {}
    for node in sorted(nodes):
        twins = [n for n in neighbours(node) if n in kept and n < node]
        if twins:
            result[node] = min(twins)
        else:
            kept.add(node)
            result[node] = None
    return result
