"""Batched decoding: rows from different requests advance together, each over its own key/value cache.

A request's prompt is prefilled first (:class:`Prefill`: the longest prefix the prefix cache holds is copied in,
the rest runs in chunks, so that rows already decoding keep going and a cancelled request stops early); then
each of its choices becomes a :class:`Row` holding its cache and the distribution of its next token. Every
step (:meth:`Decoder.run`) feeds each row its chosen token — and, for a greedy row, a guess of the tokens
after it (prompt-lookup speculation) — plus the next chunk of a prompt being prefilled, in one forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines.serve.engine import CompletionRequest, StopTracker
from pipelines.serve.kvcache import KVCache
from pipelines.serve.prefix_cache import PrefixCache
from pipelines.serve.runner import CodeGenRunner, Feed
from pipelines.serve.speculation import DraftLength, NgramDrafter


@dataclass(eq=False)
class Row:
    """One choice being generated."""

    job: Any
    """The request it belongs to (the engine's job object)."""
    index: int
    request: CompletionRequest
    tracker: StopTracker
    generator: torch.Generator | None
    cache: KVCache | None = None
    """The keys/values of its prompt and of every generated token fed back."""
    logits: torch.Tensor | None = None
    """Float32 ``[vocab]``: the distribution of its next token."""
    generated: list[int] = field(default_factory=list)
    text: str = ""
    drafter: NgramDrafter | None = None
    """Prompt-lookup index over the prompt and generated tokens (greedy rows without penalties only)."""
    draft: DraftLength = field(default_factory=DraftLength)
    done: bool = False

    @property
    def length(self) -> int:
        """Tokens held in its cache."""
        return self.cache.length if self.cache is not None else 0


@dataclass(eq=False)
class Prefill:
    """A prompt going into a cache, chunk by chunk, after the part the prefix cache already had: a request's
    (``job`` and its ``rows``), or one the worker expects next (no job, no rows)."""

    ids: list[int]
    rows: list[Row]
    cache: KVCache
    reused: int
    job: Any = None
    logits: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.cache.length >= len(self.ids)


class Decoder:
    """Runs the model for the engine: prefill (with prefix reuse), decode steps and speculative verification."""

    def __init__(self, runner: CodeGenRunner, prefix: PrefixCache) -> None:
        self.runner = runner
        self.prefix = prefix

    def start(self, ids: list[int], rows: list[Row], room: int, job: Any = None) -> Prefill:
        """Begin prefilling ``ids``: load the longest cached prefix (always leaving one token to run)."""
        match = self.prefix.lookup(ids, limit=len(ids) - 1, count=job is not None)
        cache = self.runner.new_cache()
        cache.ensure(len(ids) + room)  # the whole completion fits without growing the cache
        cache.load(match.segments)
        return Prefill(ids, rows, cache, match.length, job)

    def run(
        self, decode: Sequence[tuple[Row, list[int]]], prefills: Sequence[Prefill], chunk: int
    ) -> list[torch.Tensor]:
        """One forward: each row fed its tokens (logits of every position when it is more than one), and each
        prompt in ``prefills`` its next ``chunk`` tokens (all that is left when that is no more; chunks of a long
        prompt end on multiples of ``chunk`` positions). Returns the rows' logits; prefills keep theirs."""
        feeds = [Feed(row.cache, tokens, every=len(tokens) > 1) for row, tokens in decode]
        for prefill in prefills:
            at = prefill.cache.length
            end = len(prefill.ids) if len(prefill.ids) - at <= chunk else (at // chunk + 1) * chunk
            feeds.append(Feed(prefill.cache, prefill.ids[at:end]))
        outs = self.runner.forward(feeds)
        for prefill, logits in zip(prefills, outs[len(decode) :], strict=True):
            prefill.logits = logits
        return outs[: len(decode)]

    def remember(self, prefill: Prefill) -> None:
        """Put what ``prefill`` has computed so far into the prefix cache."""
        cache = prefill.cache
        self.prefix.insert(prefill.ids[: cache.length], cache.segment)

    def finish(self, prefill: Prefill) -> list[Row]:
        """Remember the prompt in the prefix cache; its rows start decoding (a copy of the cache for each extra)."""
        self.remember(prefill)
        for i, row in enumerate(prefill.rows):
            row.cache = prefill.cache if i == 0 else prefill.cache.copy()
            row.logits = prefill.logits
        return prefill.rows


def adjust_logits(logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """Penalties and logit bias applied to a copy of ``logits [rows, V]``."""
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
    return logits


def choose_tokens(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
    """The next token of every row: penalties and logit bias, then argmax (greedy) or seeded sampling."""
    logits = adjust_logits(logits, rows)
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
    top_p = top_p.clamp(min=torch.finfo(top_p.dtype).tiny)  # 1e-320 is 0 in float32: keep the likeliest token
    if bool((top_p < 1.0).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # probability of the more likely tokens
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs.cpu()
    usable = (torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)).tolist()
    for j, i in enumerate(sampled):
        if usable[j]:  # else (extreme settings overflowed) the argmax stands
            with contextlib.suppress(RuntimeError):  # one row's settings never fail the batch it shares
                chosen[i] = int(torch.multinomial(probs[j], 1, generator=rows[i].generator).item())
    return chosen
