"""Tokenize and pack a dataset like run_clm, without its flaws.

Every file is followed by the EOS token, so the model learns where files end; the token stream is cut into
blocks of ``block_size`` and the last, shorter block is kept (padded, its padding masked out of the loss)
instead of being silently dropped. Tokenization runs in the fast tokenizer's threads and is cached per
(dataset version, tokenizer, block size), so a rerun or a resume does not tokenize again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.dataset.folder import is_dataset, read_manifest, read_shard, shard_names
from pipelines.dataset.languages import language_of
from pipelines.errors import DatasetError
from pipelines.fsutil import atomic_write, write_json_atomic

IGNORE_INDEX = -100
STDLIB, NO_MIX = "stdlib", "none"
SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "ensurepip", "__pycache__"}
)


def iter_records(dataset: Path, split: str) -> Iterator[dict]:
    """The records of one split, in manifest order."""
    for name in shard_names(read_manifest(dataset), (split,)):
        yield from read_shard(dataset, name)


def tokenizer_fingerprint(tokenizer) -> str:
    """Changes whenever the tokenizer would produce other ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    raw = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{raw}|{tokenizer.eos_token_id}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Packed:
    """A split as one token stream, cut into blocks on the fly."""

    tokens: np.ndarray  # uint32, every file followed by EOS
    block_size: int
    pad_id: int
    files: int
    source_bytes: int

    @property
    def blocks(self) -> int:
        return -(-len(self.tokens) // self.block_size) if len(self.tokens) else 0

    def block(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, labels, attention_mask) of block ``index``; the last one is padded."""
        start = index * self.block_size
        chunk = self.tokens[start : start + self.block_size].astype(np.int64)
        n = len(chunk)
        ids = np.full(self.block_size, self.pad_id, dtype=np.int64)
        labels = np.full(self.block_size, IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros(self.block_size, dtype=np.int64)
        ids[:n], labels[:n], mask[:n] = chunk, chunk, 1
        return ids, labels, mask


def pack(
    dataset: Path,
    split: str,
    tokenizer,
    block_size: int,
    cache_dir: Path | None = None,
    workers: int = 0,
    batch_files: int = 256,
) -> tuple[Packed, dict]:
    """Tokenize ``split`` of ``dataset`` (or load it from the cache); returns the packed split and facts."""
    manifest = read_manifest(dataset)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DatasetError("The tokenizer has no EOS token, so files cannot be separated. Use a CodeGen tokenizer.")
    cache_dir = Path(cache_dir) if cache_dir else Path(dataset) / "cache" / "tokens"
    key = hashlib.sha256(
        f"{manifest['dataset_version']}|{tokenizer_fingerprint(tokenizer)}|{split}".encode()
    ).hexdigest()[:20]
    tokens_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if tokens_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        tokens = np.load(tokens_path, mmap_mode="r")
        return Packed(tokens, block_size, eos, meta["files"], meta["bytes"]), {**meta, "cached": True}
    if workers > 0:
        os.environ["RAYON_NUM_THREADS"] = str(workers)
    started = time.perf_counter()
    tokens, files, nbytes = _tokenize(
        (record["text"] for record in iter_records(dataset, split)), tokenizer, batch_files
    )
    meta = _meta(files, nbytes, len(tokens), time.perf_counter() - started)
    meta["dataset_version"] = manifest["dataset_version"]
    _save(cache_dir, tokens_path, meta_path, tokens, meta)
    return Packed(tokens, block_size, eos, files, nbytes), {**meta, "cached": False}


def _tokenize(texts: Iterable[str], tokenizer, batch_files: int = 256) -> tuple[np.ndarray, int, int]:
    """One token stream of ``texts``, each followed by EOS, tokenized in batches; with files and bytes read."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    eos = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    files = nbytes = 0
    batch: list[str] = []

    def flush() -> None:
        if batch:
            # Files are longer than the context on purpose (they are cut into blocks): no length warning.
            for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
                parts.append(np.asarray([*ids, eos], dtype=np.uint32))
            batch.clear()

    for text in texts:
        batch.append(text)
        files += 1
        nbytes += len(text.encode("utf-8"))
        if len(batch) >= batch_files:
            flush()
    flush()
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)), files, nbytes


def _meta(files: int, nbytes: int, tokens: int, seconds: float) -> dict:
    mb_per_s = round(nbytes / 1e6 / seconds, 2) if seconds > 0 else None
    return {"files": files, "bytes": nbytes, "tokens": tokens, "seconds": round(seconds, 3), "mb_per_s": mb_per_s}


def _save(cache_dir: Path, tokens_path: Path, meta_path: Path, tokens: np.ndarray, meta: dict) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(tokens_path, "wb") as handle:
        np.save(handle, tokens)
    write_json_atomic(meta_path, meta)


def public_files(folder: Path) -> list[Path]:
    """The source files of a folder of public code (tests, vendored packages and tools left out)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not SKIP_DIRS.intersection(p.relative_to(folder).parts[:-1])
        and language_of(p.name) is not None
        and p.stat().st_size <= 1_000_000
    )


def pack_public(source: str, tokenizer, block_size: int, cache_dir: Path, wanted: int) -> tuple[Packed | None, dict]:
    """The public code mixed into training (``--public-mix``): ``stdlib`` (the Python standard library of the
    interpreter that trains, on every machine), a repopilot dataset folder, a folder of source files, or
    ``none``. From a folder, files in a fixed shuffled order until about ``wanted`` tokens (no more is mixed)."""
    if source == NO_MIX:
        return None, {}
    folder = Path(sysconfig.get_paths()["stdlib"]) if source == STDLIB else Path(source).expanduser()
    if is_dataset(folder):
        return pack(folder, "train", tokenizer, block_size)
    if not folder.is_dir():
        raise DatasetError(f"--public-mix {source}: no such folder. Give stdlib, none, a dataset or a folder of code.")
    files = public_files(folder)
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    identity = f"{folder.resolve()}|{len(files)}|{wanted}|{tokenizer_fingerprint(tokenizer)}"
    key = "public-" + hashlib.sha256(identity.encode()).hexdigest()[:20]
    tokens_path, meta_path = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json"
    eos = tokenizer.eos_token_id
    if tokens_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Packed(np.load(tokens_path, mmap_mode="r"), block_size, eos, meta["files"], meta["bytes"]), meta
    started = time.perf_counter()
    tokens, count, nbytes = _tokenize(_readable(files, wanted * 4), tokenizer)  # about 3-4 bytes a token
    meta = {**_meta(count, nbytes, len(tokens), time.perf_counter() - started), "folder": str(folder)}
    _save(Path(cache_dir), tokens_path, meta_path, tokens, meta)
    return Packed(tokens, block_size, eos, count, nbytes), meta


def _readable(paths: Iterable[Path], budget: int) -> Iterator[str]:
    """The texts of ``paths`` until about ``budget`` characters were read."""
    for path in paths:
        if budget <= 0:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            budget -= len(text)
            yield text


class BlockDataset:
    """A torch-style dataset over packed blocks (dicts of tensors, as HF Trainer wants).

    With ``mix`` (public code), ``share`` of the blocks are the mix's, chosen with ``seed`` (the same ones every
    epoch), so a model learning the team's code keeps seeing ordinary code and forgets less of it. With
    ``context`` (``context_samples``), its samples come after: blocks of the team's code behind repository
    context."""

    def __init__(self, packed: Packed, mix: Packed | None = None, share: float = 0.0, seed: int = 0,
                 context: Any = None) -> None:  # fmt: skip
        self.packed = packed
        self.mix = mix
        self.context = context
        extra = round(share / (1 - share) * packed.blocks) if mix is not None and mix.blocks and share > 0 else 0
        rng = np.random.default_rng(seed)
        self.mixed = np.resize(rng.permutation(mix.blocks), extra) if extra else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.packed.blocks + len(self.mixed) + (self.context.count if self.context is not None else 0)

    def __getitem__(self, index: int) -> dict:
        import torch

        plain = self.packed.blocks + len(self.mixed)
        if index < self.packed.blocks:
            ids, labels, mask = self.packed.block(index)
        elif index < plain:
            ids, labels, mask = self.mix.block(int(self.mixed[index - self.packed.blocks]))
        else:
            ids, labels, mask = self.context.block(index - plain)
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(mask),
        }
