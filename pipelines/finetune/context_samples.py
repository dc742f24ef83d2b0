"""Training blocks with repository context: the model learns to use what the completion server puts before a prompt.

A code model never saw the server's block of definitions and similar code written as comments, so it may not use
it well. Some training blocks therefore look like a served request: at a seeded random line of a training file,
the provider (``pipelines/context``) chooses the block for the text above that line from the other training files
(never the file itself, never validation records), exactly as the server would; the training block is that
block followed by the file's text up to a few lines past that point, cut from the left to fit. The loss is taken
on the file's tokens only: the model learns to predict code given the block, not to write blocks.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.context.provider import ContextSettings, choose, fit
from pipelines.context.source import load_index
from pipelines.dataset.folder import read_manifest
from pipelines.finetune.data import IGNORE_INDEX, tokenizer_fingerprint
from pipelines.fsutil import atomic_write, write_json_atomic

FORMAT = 2  # bump when the samples change
AFTER_LINES = 8  # lines of the file after the cut point: what the model learns to complete
MIN_LINES = 8
MAX_SAMPLES = 4000


@dataclass(frozen=True)
class ContextSamples:
    """Blocks of (context, then code): token ids of each, and how many of its first tokens are context."""

    tokens: np.ndarray  # uint32, every sample's ids one after another
    offsets: np.ndarray  # int64, where each sample starts (and one past the last)
    context: np.ndarray  # int64, context tokens at the start of each sample
    block_size: int
    pad_id: int

    @property
    def count(self) -> int:
        return len(self.context)

    def block(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, labels, attention_mask) of sample ``index``: labels only on the code after the context."""
        chunk = self.tokens[self.offsets[index] : self.offsets[index + 1]].astype(np.int64)
        n, k = len(chunk), int(self.context[index])
        ids = np.full(self.block_size, self.pad_id, dtype=np.int64)
        labels = np.full(self.block_size, IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros(self.block_size, dtype=np.int64)
        ids[:n], mask[:n] = chunk, 1
        labels[k:n] = chunk[k:]
        return ids, labels, mask


def _sample(index, file, cut: int, tokenizer, block_size: int, budget: int) -> tuple[list[int], int] | None:
    """One sample at line ``cut`` of ``file``: (ids, context tokens), or None when no context helps there."""
    prompt = "\n".join(file.lines[:cut])
    items, lang = choose(index, prompt, ContextSettings(max_tokens=budget), repo=file.repo, skip_path=file.path)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    block = fit(items, file.lang or lang, budget, count)[0]
    if not block:
        return None
    head = tokenizer(block, add_special_tokens=False, verbose=False)["input_ids"][: block_size // 2]
    text = "\n".join(file.lines[: cut + AFTER_LINES])
    room = block_size - len(head)
    body = tokenizer(text[-room * 8 :], add_special_tokens=False, verbose=False)["input_ids"][-room:]
    return head + body, len(head)


def build_samples(dataset: Path, tokenizer, block_size: int, wanted: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """About ``wanted`` samples, cycling over the training files (a new seeded cut point each time round)."""
    index = load_index(dataset, splits=("train",))
    files = [f for f in index.files if len(f.lines) >= MIN_LINES]
    budget = min(ContextSettings.max_tokens, block_size // 4)
    samples: list[tuple[list[int], int]] = []
    for round_ in range(8):
        for file in files:
            if len(samples) >= wanted:
                return samples
            rng = np.random.default_rng([seed, round_, zlib.crc32(f"{file.repo}/{file.path}".encode())])
            made = _sample(
                index, file, int(rng.integers(MIN_LINES // 2, len(file.lines))), tokenizer, block_size, budget
            )
            if made is not None:
                samples.append(made)
    return samples


def pack_context(
    dataset: Path, tokenizer, block_size: int, cache_dir: Path, wanted: int, seed: int = 0
) -> tuple[ContextSamples | None, dict]:
    """The context samples of ``dataset`` (cached per dataset version, tokenizer, block size and count)."""
    wanted = min(wanted, MAX_SAMPLES)
    if wanted <= 0:
        return None, {}
    manifest = read_manifest(dataset)
    identity = f"{FORMAT}|{manifest['dataset_version']}|{tokenizer_fingerprint(tokenizer)}|{block_size}|{wanted}|{seed}"
    key = "context-" + hashlib.sha256(identity.encode()).hexdigest()[:20]
    arrays, meta_path = Path(cache_dir) / f"{key}.npz", Path(cache_dir) / f"{key}.json"
    eos = tokenizer.eos_token_id
    if arrays.exists() and meta_path.exists():
        stored = np.load(arrays)
        meta = json.loads(meta_path.read_text())
        return ContextSamples(stored["tokens"], stored["offsets"], stored["context"], block_size, eos), meta
    started = time.perf_counter()
    samples = build_samples(Path(dataset), tokenizer, block_size, wanted, seed)
    if not samples:
        return None, {"samples": 0}
    tokens = np.concatenate([np.asarray(ids, dtype=np.uint32) for ids, _ in samples])
    offsets = np.cumsum([0] + [len(ids) for ids, _ in samples]).astype(np.int64)
    context = np.asarray([k for _, k in samples], dtype=np.int64)
    meta = {"samples": len(samples), "context_tokens": int(context.sum()), "tokens": len(tokens),
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with atomic_write(arrays, "wb") as handle:
        np.savez(handle, tokens=tokens, offsets=offsets, context=context)
    write_json_atomic(meta_path, meta)
    return ContextSamples(tokens, offsets, context, block_size, eos), meta
