"""Compiled loops of the dataset builder (``native.c``, loaded with ctypes), each with a numpy twin in Python that
gives the same numbers: MinHash bins (twin: ``dedup._numpy_bins``), line lengths (twin: ``filters.long_lines``) and
the equal values of pairs of signatures (twin: ``dedup.pair_similarities``).

The C source ships with the package and is compiled once per machine, on first use (or by ``scripts/bootstrap.sh``),
with the system's C compiler (``$CC``, else ``cc``) into the user's cache, under a name that holds a hash of the
source: a changed source is compiled anew, a damaged library is replaced. Where no compiler is at hand, or
``REPOPILOT_NATIVE=0``, the numpy twins run instead (same output; MinHash takes ~2.5x the CPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.fsutil import user_cache_dir

_SOURCE = Path(__file__).with_name("native.c")
_BINS = 128  # the C source's BINS: dedup.NUM_PERM, a hash's top 7 bits
_unset = object()
_library: ctypes.CDLL | object | None = _unset


def library() -> ctypes.CDLL | None:
    """The compiled library, or None where it cannot be had (compiled now if needed; looked for once a process)."""
    global _library
    if _library is _unset:
        _library = None if os.environ.get("REPOPILOT_NATIVE") == "0" else _load()
    return _library  # type: ignore[return-value]


def minhash_bins(
    datas: list[bytes], min_words: int, word_table: bytes, p: int, q: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(values uint32[n, 128], filled bool[n, 128], words int64[n]) of each text's 5-gram bins, as
    ``dedup._numpy_bins`` works them out; a text with fewer than ``min_words`` words has no bin filled. None without
    the compiled library."""
    compiled = library()
    if compiled is None:
        return None
    n = len(datas)
    values = np.full((n, _BINS), 0xFFFFFFFF, dtype=np.uint32)
    filled = np.zeros((n, _BINS), dtype=np.uint8)
    words = np.zeros(n, dtype=np.int64)
    compiled.minhash_bins(*_texts(datas), n, word_table, p, q, min_words, values, filled, words)
    return values, filled.view(bool), words


def line_stats(datas: list[bytes]) -> tuple[list[int], list[int], list[bool]] | None:
    """(longest line, lines, simple) of each text, lines as ``str.splitlines`` cuts a simple one (ASCII, breaking
    lines only at ``\\n``); for another text only ``simple`` (False) holds. None without the compiled library."""
    compiled = library()
    if compiled is None:
        return None
    n = len(datas)
    longest, lines, simple = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.uint8)
    compiled.line_stats(*_texts(datas), n, longest, lines, simple)
    return longest.tolist(), lines.tolist(), simple.view(bool).tolist()


def pair_matches(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray | None:
    """int64[m]: for each row (i, j) of ``pairs`` (int64[m, 2]), at how many positions the rows i and j of ``sigs``
    (uint32[n, 128]) are equal. None without the compiled library."""
    compiled = library()
    if compiled is None:
        return None
    sigs = np.ascontiguousarray(sigs, dtype=np.uint32)
    pairs = np.ascontiguousarray(pairs, dtype=np.int64)
    if sigs.ndim != 2 or sigs.shape[1] != _BINS or pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pair_matches: signatures {sigs.shape} and pairs {pairs.shape} are not (n, 128) and (m, 2)")
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(sigs)):
        raise IndexError("pair_matches: a pair names a row that is not there")
    same = np.zeros(len(pairs), dtype=np.int64)
    compiled.pair_matches(sigs, pairs, len(pairs), same)
    return same


def band_buckets(sigs: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """int64[n, 128 // len(weights)]: each band's bucket of each signature (rows of ``sigs``, uint32[n, 128]), as
    ``dedup.band_buckets_many`` works them out. None without the compiled library."""
    compiled = library()
    if compiled is None:
        return None
    sigs = np.ascontiguousarray(sigs, dtype=np.uint32)
    weights = np.ascontiguousarray(weights, dtype=np.uint64).reshape(-1)
    if sigs.ndim != 2 or sigs.shape[1] != _BINS or not len(weights) or _BINS % len(weights):
        raise ValueError(f"band_buckets: signatures {sigs.shape} and {len(weights)} rows a band do not fit")
    out = np.empty((len(sigs), _BINS // len(weights)), dtype=np.int64)
    compiled.band_buckets(sigs, len(sigs), weights, len(weights), out)
    return out


def _texts(datas: list[bytes]) -> tuple[ctypes.Array, np.ndarray]:
    """Where each text's bytes are (not copied: the array holds the bytes objects), and their int64 sizes."""
    return (ctypes.c_char_p * len(datas))(*datas), np.array([len(data) for data in datas], dtype=np.int64)


def _load() -> ctypes.CDLL | None:
    source = _SOURCE.read_bytes()
    tag = hashlib.sha256(source + f"{sys.platform} {platform.machine()}".encode()).hexdigest()[:16]
    target = user_cache_dir() / f"native-{tag}.so"
    for attempt in range(2):
        if not target.exists() and not _compile(target):
            return None
        try:
            compiled = ctypes.CDLL(str(target))
        except OSError:  # damaged (or of another machine): compiled again once
            target.unlink(missing_ok=True)
            if attempt:
                return None
            continue
        compiled.minhash_bins.restype = compiled.line_stats.restype = compiled.pair_matches.restype = None
        compiled.minhash_bins.argtypes = [
            ctypes.POINTER(ctypes.c_char_p), _array(np.int64), ctypes.c_int64, ctypes.c_char_p, ctypes.c_uint64,
            ctypes.c_uint64, ctypes.c_int64, _array(np.uint32), _array(np.uint8), _array(np.int64),
        ]  # fmt: skip
        compiled.line_stats.argtypes = [
            ctypes.POINTER(ctypes.c_char_p), _array(np.int64), ctypes.c_int64, _array(np.int64), _array(np.int64),
            _array(np.uint8),
        ]  # fmt: skip
        compiled.pair_matches.argtypes = [_array(np.uint32), _array(np.int64), ctypes.c_int64, _array(np.int64)]
        compiled.band_buckets.restype = None
        compiled.band_buckets.argtypes = [
            _array(np.uint32), ctypes.c_int64, _array(np.uint64), ctypes.c_int64, _array(np.int64),
        ]  # fmt: skip
        return compiled
    return None


def _array(dtype: type) -> type:
    """An argument type that takes a C-ordered numpy array of ``dtype`` (refused otherwise, never misread)."""
    return np.ctypeslib.ndpointer(dtype=dtype, flags="C_CONTIGUOUS")


def _compile(target: Path) -> bool:
    """Compile the source into ``target`` (written under another name, then renamed: never half there)."""
    compiler = shlex.split(os.environ.get("CC") or "cc")
    temporary = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [*compiler, "-O2", "-shared", "-fPIC", "-o", str(temporary), str(_SOURCE)],
            check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.replace(temporary, target)
        return True
    except (OSError, subprocess.SubprocessError):
        temporary.unlink(missing_ok=True)
        return False


if __name__ == "__main__":  # scripts/bootstrap.sh: compile now rather than on the first build
    if library() is None:
        print("No C compiler found (cc or $CC): the dataset builder runs its numpy twins (same output, slower).")
