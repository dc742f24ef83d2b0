"""Batched decoding with a key/value cache: rows from different requests share one padded forward per token.

A :class:`DecodeBatch` holds the rows being generated, their cache (left-padded to a common length) and the
attention mask. New requests are prefilled as their own padded batch and merged in between two decode steps
(continuous batching); finished rows are dropped and columns that are padding for every row are trimmed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from pipelines.serve.engine import CompletionRequest, StopTracker

GROW = 64  # cache columns added at a time


class GrowingLayer(DynamicLayer):
    """One layer's keys and values in a buffer with spare columns: a decode step writes one column in place
    instead of copying the whole cache as ``DynamicLayer``'s concatenation does."""

    def __init__(self) -> None:
        super().__init__()
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.buf_k is None or end > self.buf_k.shape[-2]:
            self._reserve(end, key_states)
        self.buf_k[:, :, self.length : end] = key_states
        self.buf_v[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.buf_k[:, :, :end]
        self.values = self.buf_v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def _reserve(self, columns: int, like: torch.Tensor) -> None:
        capacity = -(-(columns + GROW) // GROW) * GROW
        shape = (like.shape[0], like.shape[1], capacity, like.shape[3])
        new_k = like.new_zeros(shape)
        new_v = like.new_zeros(shape)
        if self.buf_k is not None and self.length:
            new_k[:, :, : self.length] = self.buf_k[:, :, : self.length]
            new_v[:, :, : self.length] = self.buf_v[:, :, : self.length]
        self.buf_k, self.buf_v = new_k, new_v

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the content (``[B, H, T, D]``), keeping spare room for the next columns."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self.buf_k = self.buf_v = None
        self.length = 0
        self._reserve(keys.shape[-2], keys)
        self.update(keys, values)


def new_cache(n_layers: int) -> Cache:
    return Cache(layers=[GrowingLayer() for _ in range(n_layers)])


def _layers(cache: Cache) -> list[GrowingLayer]:
    return list(cache.layers)


@dataclass
class Row:
    """One choice being generated."""

    job: Any
    """The request it belongs to (the engine's job object)."""
    index: int
    request: CompletionRequest
    tracker: StopTracker
    generator: torch.Generator | None
    length: int
    """Tokens of this row held in the cache (prompt, then every generated token fed back)."""
    generated: list[int] = field(default_factory=list)
    text: str = ""


class DecodeBatch:
    """The rows being decoded together, their cache, mask and next-token logits."""

    def __init__(self, rows: list[Row], cache: Cache, mask: torch.Tensor, logits: torch.Tensor) -> None:
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [B, T], 1 for real tokens, 0 for left padding
        self.logits = logits  # [B, V] float32: the distribution of each row's next token

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def keep(self, keep: Sequence[int]) -> None:
        """Keep only rows at positions ``keep`` and drop leading columns that are padding for all of them."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask, self.logits = new_cache(0), self.mask[:0], self.logits[:0]
            return
        index = torch.tensor(list(keep), device=self.mask.device)
        lead = self.columns - max(r.length for r in self.rows)
        self.mask = self.mask.index_select(0, index)[:, lead:]
        self.logits = self.logits.index_select(0, index)
        for layer in _layers(self.cache):
            layer.set(layer.keys.index_select(0, index)[:, :, lead:], layer.values.index_select(0, index)[:, :, lead:])

    def merge(self, other: DecodeBatch) -> None:
        """Append ``other``'s rows, left-padding the shorter of the two caches."""
        if not self.rows:
            self.rows, self.cache, self.mask, self.logits = other.rows, other.cache, other.mask, other.logits
            return
        width = max(self.columns, other.columns)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        self.logits = torch.cat([self.logits, other.logits])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            keys = torch.cat([_pad_left(mine.keys, width, dim=2), _pad_left(theirs.keys, width, dim=2)])
            values = torch.cat([_pad_left(mine.values, width, dim=2), _pad_left(theirs.values, width, dim=2)])
            mine.set(keys, values)
        self.rows = self.rows + other.rows


def _pad_left(t: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Forward:
    """Runs the model: padded prefill of new prompts and one decode step for a batch."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.n_layers = int(model.config.num_hidden_layers)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_arg = "logits_to_keep" if "logits_to_keep" in params else None

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Cache) -> torch.Tensor:
        kwargs: dict[str, Any] = {self.cache_arg: cache, "use_cache": True}
        if self.keep_arg:
            kwargs[self.keep_arg] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], rows_per_prompt: Sequence[list[Row]]) -> DecodeBatch:
        """One padded forward over ``prompts``; each prompt's cache row is repeated for each of its rows."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.n_layers)
        logits = self._run(ids, mask, positions, cache)
        rows = [row for group in rows_per_prompt for row in group]
        batch = DecodeBatch(rows, cache, mask, logits)
        if len(rows) != len(prompts):
            repeats = [len(group) for group in rows_per_prompt]
            index = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(repeats)).to(self.device)
            batch.mask, batch.logits = mask.index_select(0, index), logits.index_select(0, index)
            for layer in _layers(cache):
                layer.set(layer.keys.index_select(0, index), layer.values.index_select(0, index))
        return batch

    @torch.inference_mode()
    def step(self, batch: DecodeBatch, tokens: Sequence[int]) -> None:
        """Feed each row its new token; ``batch.logits`` becomes the distribution of the token after it."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        positions = torch.tensor([r.length for r in batch.rows], dtype=torch.long, device=self.device).unsqueeze(1)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        batch.logits = self._run(ids, batch.mask, positions, batch.cache)
        for row in batch.rows:
            row.length += 1


def choose_tokens(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
    """The next token of every row: penalties and logit bias, then argmax (greedy) or seeded sampling."""
    logits = logits.clone()
    for i, row in enumerate(rows):
        req = row.request
        if (req.presence_penalty or req.frequency_penalty) and row.generated:
            counts = torch.bincount(torch.tensor(row.generated), minlength=logits.shape[1])[: logits.shape[1]]
            counts = counts.to(logits.device, logits.dtype)
            logits[i] -= req.frequency_penalty * counts + req.presence_penalty * (counts > 0).to(logits.dtype)
        if req.logit_bias:
            index = torch.tensor(list(req.logit_bias), device=logits.device)
            logits[i, index] += torch.tensor(list(req.logit_bias.values()), device=logits.device)
    chosen = logits.argmax(dim=-1).tolist()
    sampled = [i for i, row in enumerate(rows) if not row.request.greedy]
    if not sampled:
        return chosen
    sub = logits[sampled]
    temps = torch.tensor([rows[i].request.temperature for i in sampled], device=sub.device).unsqueeze(1)
    sub = sub / temps
    for j, i in enumerate(sampled):
        k = rows[i].request.top_k
        if 0 < k < sub.shape[1]:
            kth = torch.topk(sub[j], k).values[-1]
            sub[j] = sub[j].masked_fill(sub[j] < kth, float("-inf"))
    probs = torch.softmax(sub, dim=-1)
    top_p = torch.tensor([rows[i].request.top_p for i in sampled], device=sub.device).unsqueeze(1)
    if bool((top_p < 1.0).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # probability of the more likely tokens
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs.cpu()
    for j, i in enumerate(sampled):
        chosen[i] = int(torch.multinomial(probs[j], 1, generator=rows[i].generator).item())
    return chosen
