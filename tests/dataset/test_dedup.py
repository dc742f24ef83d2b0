"""The near-duplicate signature: estimates Jaccard similarity of word 5-grams, the same alone or in a batch."""

from __future__ import annotations

import random
import re

import numpy as np

from pipelines.dataset import dedup
from tests.dataset.conftest import python_file


def shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text)
    return {tuple(words[i : i + dedup.SHINGLE]) for i in range(len(words) - dedup.SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def edited(text: str, rng: random.Random, lines: int) -> str:
    rows = text.splitlines()
    for _ in range(lines):
        rows[rng.randrange(len(rows))] = f"changed = {rng.randrange(10**9)}"
    return "\n".join(rows) + "\n"


def test_estimates_follow_the_true_similarity() -> None:
    rng = random.Random(3)
    errors = []
    for i in range(60):
        text = python_file(f"m{i}", body_lines=20 + i % 30, seed=i)
        other = edited(text, rng, 1 + i % 12)
        estimate = dedup.similarity(dedup.signature(text, 50), dedup.signature(other, 50))
        errors.append(estimate - jaccard(text, other))
    assert abs(float(np.mean(errors))) < 0.03 and float(np.std(errors)) < 0.06 and max(map(abs, errors)) < 0.2


def test_copies_near_copies_and_strangers() -> None:
    text = python_file("alpha", body_lines=40)
    sig = dedup.signature(text, 50)
    assert dedup.similarity(sig, dedup.signature(text, 50)) == 1.0
    near = text.replace("return value_3 * ", "return 1 + value_3 * ", 1)
    assert dedup.similarity(sig, dedup.signature(near, 50)) >= 0.85
    stranger = python_file("omega", body_lines=40, seed=9)
    assert dedup.similarity(sig, dedup.signature(stranger, 50)) < 0.3
    assert dedup.signature("too few words here", 50) is None


def test_a_batch_gives_each_text_its_own_signature() -> None:
    texts = [python_file(f"b{i}", body_lines=5 + i, seed=i).encode() for i in range(12)] + [b"short", "ünï 🚀".encode()]
    batch = dedup.signatures_of(texts, 50)
    for text, sig in zip(texts, batch, strict=True):
        alone = dedup.signature_of(text, 50)
        assert (sig is None and alone is None) or (sig == alone).all()


def test_near_copies_share_a_band_bucket() -> None:
    text = python_file("gamma", body_lines=40)
    sigs = np.stack([dedup.signature(t, 50) for t in (text, text + "extra = 1\n", python_file("delta", seed=5))])
    pairs = dedup.candidate_pairs(dedup.band_buckets_many(sigs), np.ones(3, dtype=bool)).tolist()
    assert [0, 1] in pairs and [0, 2] not in pairs and [1, 2] not in pairs


def test_the_cached_random_tables_are_numpys_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch) -> None:
    """The MinHash's fixed random numbers come from the user's cache (no numpy.random import per update); what
    the cache gives is exactly what numpy's generator gives, and a damaged file is noticed and replaced."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rng = np.random.default_rng(dedup._SEED)
    probe = rng.integers(0, dedup.NUM_PERM, size=(dedup.NUM_PERM, dedup._PROBES))
    weights = rng.integers(1, 1 << 63, size=(1, dedup.ROWS), dtype=np.uint64) | np.uint64(1)
    for attempt in ("generated", "from the cache", "after damage"):
        got_probe, got_weights = dedup._random_tables()
        assert got_probe.dtype == probe.dtype and (got_probe == probe).all(), attempt
        assert got_weights.dtype == weights.dtype and (got_weights == weights).all(), attempt
        (cache,) = (tmp_path / "repopilot").iterdir()
        if attempt == "from the cache":
            raw = bytearray(cache.read_bytes())
            raw[100] ^= 0xFF
            cache.write_bytes(bytes(raw))
    assert np.array_equal(dedup._PROBE, probe) and np.array_equal(dedup._BAND_WEIGHTS, weights)
