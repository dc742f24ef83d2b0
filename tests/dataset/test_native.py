"""The compiled loops (pipelines/dataset/native.c) give exactly the numbers of their numpy twins, are compiled once
into the user's cache (again when damaged), and a machine without a C compiler runs the twins instead."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.dataset import dedup, native
from pipelines.dataset.config import DatasetConfig
from pipelines.dataset.filters import long_lines
from tests.dataset.conftest import has_compiler, python_file

needs_compiler = pytest.mark.skipif(not has_compiler(), reason="no C compiler on this machine")


def texts(seed: int, count: int) -> list[bytes]:
    """Code, prose in other scripts, runs of separators, words of every length (odd and even), tiny texts."""
    rng = random.Random(seed)
    pieces = ["a", "bc", "def", "_x9", "Ωμέγα", "数据集", "🙂", " ", "\n", "\t", "==", ".", "(", "é", "\u2028", "\r\n"]
    out = [python_file(f"m{i}", body_lines=5 + i, seed=i).encode() for i in range(20)]
    for _ in range(count):
        words = [rng.choice(pieces) * rng.randint(1, 9) for _ in range(rng.randint(0, 400))]
        out.append("".join(words).encode())
    out += [b"", b" ", b"one two three four", b"one two three four five", b"x" * (3 << 20)]
    return out


@needs_compiler
def test_minhash_signatures_are_the_numpy_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    datas = texts(1, 600)
    assert native.library() is not None
    compiled = dedup.signatures_of(datas, 10)
    monkeypatch.setattr(native, "_library", None)
    twin = dedup.signatures_of(datas, 10)
    assert sum(sig is None for sig in twin) >= 3 and sum(sig is not None for sig in twin) >= 500
    for i, (a, b) in enumerate(zip(compiled, twin, strict=True)):
        assert (a is None) == (b is None), i
        assert a is None or (a.dtype == b.dtype and np.array_equal(a, b)), i


@needs_compiler
def test_line_lengths_are_the_numpy_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    config = DatasetConfig(max_line_length=300, max_mean_line_length=60.0)
    datas = [d for d in texts(2, 2000) if d.strip()]
    strings = [d.decode() for d in datas]
    compiled = long_lines(datas, strings, config)
    monkeypatch.setattr(native, "_library", None)
    assert compiled == long_lines(datas, strings, config)
    assert 100 < sum(compiled) < len(compiled) - 100


@needs_compiler
def test_line_stats_find_every_other_break_at_every_place_in_a_word() -> None:
    datas = [
        b"x" * before + bytes([byte]) + b"\nyy" * after
        for byte in range(256)
        for before in range(10)
        for after in (0, 3)
    ]
    datas += [b"", b"\n", b"a\n\n", b"ab" * 40 + b"\n" + b"c" * 7]
    longest, lines, simple = native.line_stats(datas)  # type: ignore[misc]
    for i, data in enumerate(datas):
        plain = data.isascii() and not any(brk in data for brk in (b"\r", b"\v", b"\f", b"\x1c", b"\x1d", b"\x1e"))
        assert simple[i] == plain, data
        if plain:
            cut = data.decode().splitlines()
            assert (longest[i], lines[i]) == (max(map(len, cut), default=0), len(cut) or 1), data


@needs_compiler
def test_pair_similarities_are_the_numpy_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 4, size=(300, dedup.NUM_PERM), dtype=np.uint32)  # four values: a quarter equal by chance
    sigs[1] = sigs[0]
    pairs = np.concatenate([[[0, 1], [2, 2]], rng.integers(0, 300, size=(5000, 2))]).astype(np.int64)
    compiled = dedup.pair_similarities(sigs, pairs)
    monkeypatch.setattr(native, "_library", None)
    twin = dedup.pair_similarities(sigs, pairs)
    assert compiled.dtype == twin.dtype and np.array_equal(compiled, twin)
    assert compiled[0] == compiled[1] == 1.0 and 0.1 < compiled[2:].mean() < 0.4
    assert len(dedup.pair_similarities(sigs, pairs[:0])) == 0
    monkeypatch.undo()  # the compiled loop refuses what it would misread
    for bad_sigs, bad_pairs in ((sigs[:, :64], pairs), (sigs, pairs[:, 0]), (sigs, pairs + 300)):
        with pytest.raises((ValueError, IndexError)):
            native.pair_matches(bad_sigs, bad_pairs)


def loads_compiled(cache: Path) -> bool:
    """Whether a fresh process (dlopen keeps a library it loaded, whatever happens to its file) gets the library."""
    code = "from pipelines.dataset import native; print(native.library() is not None)"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("REPOPILOT_NATIVE", None)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=root)
    return out.stdout.strip() == "True"


@needs_compiler
def test_compiled_once_into_the_cache_and_again_when_damaged(tmp_path: Path) -> None:
    assert loads_compiled(tmp_path)
    (built,) = (tmp_path / "repopilot").glob("native-*.so")
    first = built.stat().st_mtime_ns
    assert loads_compiled(tmp_path) and built.stat().st_mtime_ns == first  # loaded, not compiled again
    built.write_bytes(b"not a library")
    assert loads_compiled(tmp_path)
    assert built.read_bytes()[:4] == b"\x7fELF"  # compiled again
    assert [p.name for p in (tmp_path / "repopilot").iterdir()] == [built.name]  # no temporary left behind


def test_without_a_compiler_the_numpy_twins_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_library", native._unset)
    assert native.library() is None
    assert not list((tmp_path / "repopilot").glob("native-*"))
    text = b"alpha beta gamma delta epsilon zeta eta theta iota kappa"
    assert dedup.signature_of(text, 5) is not None and long_lines([text], [text.decode()], DatasetConfig()) == [False]
    monkeypatch.delenv("CC")
    monkeypatch.setenv("REPOPILOT_NATIVE", "0")
    monkeypatch.setattr(native, "_library", native._unset)
    assert native.library() is None  # turned off: not compiled either
    assert not list((tmp_path / "repopilot").glob("native-*"))


@needs_compiler
def test_band_buckets_are_the_numpy_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    sigs = rng.integers(0, 2**32, size=(9000, dedup.NUM_PERM), dtype=np.uint32)  # more than one numpy batch
    sigs[1] = sigs[0]
    sigs[2, : dedup.ROWS] = sigs[0, : dedup.ROWS]  # one band in common
    compiled = dedup.band_buckets_many(sigs)
    monkeypatch.setattr(native, "_library", None)
    twin = dedup.band_buckets_many(sigs)
    assert compiled.dtype == twin.dtype == np.int64 and np.array_equal(compiled, twin)
    assert compiled.shape == (9000, dedup.BANDS) and (compiled[0] == compiled[1]).all()
    assert (compiled[0] == compiled[2]).tolist() == [True] + [False] * (dedup.BANDS - 1)
    assert len(dedup.band_buckets_many(sigs[:0])) == 0
    monkeypatch.undo()  # the compiled loop refuses what it would misread
    with pytest.raises(ValueError):
        native.band_buckets(sigs[:, :64], dedup._BAND_WEIGHTS)
