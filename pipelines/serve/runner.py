"""CodeGen's forward pass over per-sequence key/value caches: the decoder the embedded engine runs.

Hugging Face's ``CodeGenForCausalLM.forward`` builds masks, position tables and cache objects on every call,
which costs more than the arithmetic when decoding one token on a CPU. This runs the same layers (the model's
own LayerNorms and weights, so float32, bfloat16 and dynamically quantized int8 all work) with rotary tables
computed once. One forward takes several :class:`Feed` s — a decoding row's next token (and a guess of the
tokens after it), a chunk of a prompt being prefilled — as one flat list of tokens: the weights are read once
for all of them, while attention runs per sequence over its own cache, so sequences of any lengths share a
forward without padding and join or leave without copying.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipelines.errors import InputError
from pipelines.serve.kvcache import KVCache


@dataclass
class Feed:
    """Tokens to run after what ``cache`` holds; ``every``: logits at every position, not only the last."""

    cache: KVCache
    ids: Sequence[int]
    every: bool = False


class CodeGenRunner:
    """Runs a loaded ``CodeGenForCausalLM`` (any dtype, int8 dynamic quantization included)."""

    def __init__(self, model: Any) -> None:
        if type(model).__name__ != "CodeGenForCausalLM":
            raise InputError(
                f"The embedded engine serves CodeGen models (what `repopilot train` makes); this folder holds a "
                f"{type(model).__name__}. Fine-tune a CodeGen base, or serve converted models with --engine triton."
            )
        config = model.config
        body = model.transformer
        self.layers = len(body.h)
        self.heads = int(config.n_head)
        self.head_dim = int(config.n_embd) // self.heads
        self.mp_num = int(getattr(body.h[0].attn, "mp_num", 4))
        self.rotary_dim = int(config.rotary_dim or self.head_dim)
        self.embed = body.wte
        self.blocks = [
            (
                b.ln_1,
                *(_linear(m) for m in (b.attn.qkv_proj, b.attn.out_proj, b.mlp.fc_in, b.mlp.fc_out)),
                _act(b.mlp.act),
            )
            for b in body.h
        ]
        self.ln_f, self.lm_head = body.ln_f, _linear(model.lm_head)
        sincos = body.rotary_emb.embed_positions  # [positions, rotary_dim]: the sines, then the cosines
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        self.sin = torch.repeat_interleave(sin, 2, dim=-1)  # each angle covers a pair of dimensions
        self.cos = torch.repeat_interleave(cos, 2, dim=-1)
        self.device = self.embed.weight.device
        self.cache_dtype = self.embed.weight.dtype  # int8 models keep float32 activations

    def new_cache(self) -> KVCache:
        return KVCache(self.layers, self.heads, self.head_dim, self.cache_dtype, self.device)

    @torch.inference_mode()
    def forward(self, feeds: Sequence[Feed]) -> list[torch.Tensor]:
        """Run every feed's tokens after its cache (which grows by them). Per feed, float32 logits of its last
        position ``[vocab]``, or of every position ``[S, vocab]`` with ``every``."""
        spans, at = [], 0
        for feed in feeds:
            feed.cache.ensure(feed.cache.length + len(feed.ids))
            spans.append((at, at + len(feed.ids), feed.cache.length))
            at += len(feed.ids)
        ids = torch.tensor([t for feed in feeds for t in feed.ids], dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(start, start + end - begin) for begin, end, start in spans]).to(self.device)
        sin = self.sin[positions].unsqueeze(1)  # [N, 1, rotary_dim]
        cos = self.cos[positions].unsqueeze(1)
        masks = [_causal(end - begin, start, self.device) for begin, end, start in spans]
        x = self.embed(ids)
        for index, block in enumerate(self.blocks):
            x = self._block(index, block, x, sin, cos, feeds, spans, masks)
        for feed in feeds:
            feed.cache.length += len(feed.ids)
        keep = [
            i
            for feed, (begin, end, _) in zip(feeds, spans, strict=True)
            for i in (range(begin, end) if feed.every else [end - 1])
        ]
        logits = self.lm_head(self.ln_f(x[keep])).float()
        out, at = [], 0
        for feed in feeds:
            n = len(feed.ids) if feed.every else 1
            out.append(logits[at : at + n] if feed.every else logits[at])
            at += n
        return out

    def _block(self, index, block, x, sin, cos, feeds, spans, masks) -> torch.Tensor:
        ln, qkv_proj, out_proj, fc_in, fc_out, act = block
        tokens, width = x.shape
        hidden = ln(x)
        local = width // self.mp_num
        qkv = qkv_proj(hidden).view(tokens, self.mp_num, 3, local)
        query, value, key = qkv.unbind(2)  # CodeGen's shards hold q, v, k in this order
        shape = (tokens, self.heads, self.head_dim)
        query = self._rotate(query.reshape(shape), sin, cos, x.dtype).transpose(0, 1)  # [heads, N, head_dim]
        key = self._rotate(key.reshape(shape), sin, cos, x.dtype).transpose(0, 1)
        value = value.reshape(shape).transpose(0, 1)
        outs = []
        for feed, (begin, end, start), mask in zip(feeds, spans, masks, strict=True):
            feed.cache.write(index, start, key[:, begin:end], value[:, begin:end])
            keys, values = feed.cache.layer(index, start + end - begin)
            q = query[None, :, begin:end]  # 4-D, or torch takes its slow generic path instead of flash attention
            outs.append(F.scaled_dot_product_attention(q, keys[None], values[None], attn_mask=mask)[0])
        attn = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # [heads, N, head_dim]
        attn = out_proj(attn.transpose(0, 1).reshape(tokens, width))
        return attn + fc_out(act(fc_in(hidden))) + x

    def _rotate(self, t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rotary position embedding on the first ``rotary_dim`` dimensions of each head (pairs interleaved)."""
        rot, rest = t[..., : self.rotary_dim], t[..., self.rotary_dim :]
        swapped = torch.stack((-rot[..., 1::2], rot[..., ::2]), dim=-1).flatten(-2)
        rot = rot * cos + swapped * sin
        return torch.cat([rot, rest.to(rot.dtype)], dim=-1).to(dtype)


def _linear(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's matrix product without its Python wrapper (it runs 80 times per token)."""
    packed = getattr(getattr(module, "_packed_params", None), "_packed_params", None)
    if packed is not None and module._packed_params.dtype == torch.qint8:  # dynamic int8 (quantize_dynamic)
        op = torch.ops.quantized.linear_dynamic.default
        return lambda x: op(x, packed, True)  # reduce_range, as the module itself calls it
    if isinstance(module, torch.nn.Linear):
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module


def _act(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """CodeGen's activation; its tanh-approximated GELU as one fused operation."""
    if type(module).__name__ in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return module


def _causal(steps: int, start: int, device: torch.device) -> torch.Tensor | None:
    """Which cache columns each of ``steps`` new positions after ``start`` may attend to (None: all of them)."""
    if steps == 1:
        return None
    return torch.ones(steps, start + steps, dtype=torch.bool, device=device).tril(start)
