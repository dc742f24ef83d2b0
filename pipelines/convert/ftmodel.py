"""A reference GPT-J forward pass over FasterTransformer files (NumPy only), for checks and a CPU stand-in server.

``FTModel.load(ft_dir)`` reads ``config.ini`` and every rank's files after checking their byte sizes, and
joins the tensor-parallel shards the way FT combines them: column-split weights (qkv, h_to_4h) are
concatenated on their columns, row-split ones (attention dense, 4h_to_h) on their rows, which is exactly
the sum FT's all-reduce computes over the ranks' partial products (each rank's file is read straight into
its slice, so the model is in memory once). It needs NumPy only (no torch), so it also runs in the
Triton/pytriton environment; ``generate`` keeps a KV cache.

FT itself normalises with eps 1e-6 whatever the model says; this pass uses the model's own eps
(``layernorm_eps`` in config.ini) so that its logits can be compared exactly with the source model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.convert.errors import DamagedOutputError, problems_message
from pipelines.convert.ftformat import FLOAT, FTConfig, size_problems

_GELU_C = math.sqrt(2.0 / math.pi)


def _read_into(path: Path, out: np.ndarray) -> None:
    with open(path, "rb") as handle:
        if handle.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise DamagedOutputError(f"{path} changed while it was read. Convert the model again.")


@dataclass
class Generation:
    """One completion: the new tokens (stop words included, the end id not), why it ended, their log-probs."""

    tokens: list[int]
    finish_reason: str  # "stop" (end id or a stop word) or "length"
    logprobs: list[float] = field(default_factory=list)


@dataclass
class _Layer:
    ln_w: np.ndarray
    ln_b: np.ndarray
    qkv: np.ndarray  # [H, 3H]: x @ qkv -> q | k | v
    dense: np.ndarray  # [H, H]
    fc_in: np.ndarray  # [H, I]
    fc_in_b: np.ndarray
    fc_out: np.ndarray  # [I, H]
    fc_out_b: np.ndarray


class FTModel:
    """GPT-J computed from FasterTransformer weight files, on the CPU."""

    def __init__(self, config: FTConfig, read: Callable[[str, int, tuple[int, ...]], np.ndarray]) -> None:
        """``read(file pattern, split axis, full shape)`` returns a tensor with its rank shards joined."""
        self.config = c = config
        h, inter = c.hidden, c.inter_size
        self.layers: list[_Layer] = []
        for i in range(c.num_layer):
            p = f"model.layers.{i}."
            self.layers.append(
                _Layer(
                    ln_w=read(p + "input_layernorm.weight.bin", 0, (h,)),
                    ln_b=read(p + "input_layernorm.bias.bin", 0, (h,)),
                    qkv=read(p + "attention.query_key_value.weight.{r}.bin", -1, (h, 3, h)).reshape(h, 3 * h),
                    dense=read(p + "attention.dense.weight.{r}.bin", 0, (h, h)),
                    fc_in=read(p + "mlp.dense_h_to_4h.weight.{r}.bin", -1, (h, inter)),
                    fc_in_b=read(p + "mlp.dense_h_to_4h.bias.{r}.bin", 0, (inter,)),
                    fc_out=read(p + "mlp.dense_4h_to_h.weight.{r}.bin", 0, (inter, h)),
                    fc_out_b=read(p + "mlp.dense_4h_to_h.bias.bin", 0, (h,)),
                )
            )
        self.wte = read("model.wte.bin", 0, (c.vocab_size, h))
        self.ln_f_w = read("model.final_layernorm.weight.bin", 0, (h,))
        self.ln_f_b = read("model.final_layernorm.bias.bin", 0, (h,))
        self.lm_head_t = read("model.lm_head.weight.bin", 0, (c.vocab_size, h)).T  # a view: BLAS reads it transposed
        self.lm_head_b = read("model.lm_head.bias.bin", 0, (c.vocab_size,))
        rot = c.rotary_embedding
        self._inv_freq = 1.0 / (10000.0 ** (np.arange(0, rot, 2, dtype=np.float64) / rot))

    @classmethod
    def load(cls, ft_dir: Path) -> FTModel:
        """Read ``ft_dir`` (``.../fastertransformer/1/<N>-gpu``); raise DamagedOutputError if any file is off."""
        ft_dir = Path(ft_dir)
        try:
            cfg = FTConfig.read(ft_dir / "config.ini")
        except (ValueError, KeyError) as exc:
            raise DamagedOutputError(f"{ft_dir}: {exc}. Convert the model again.") from None
        problems = size_problems(ft_dir, cfg)
        if problems:
            raise DamagedOutputError(f"{ft_dir}: {problems_message(problems)}. Convert the model again.")
        n = cfg.tensor_para_size

        def read(pattern: str, axis: int, shape: tuple[int, ...]) -> np.ndarray:
            """Each rank's file straight into its slice of the joined tensor (no second copy of the model)."""
            full = np.empty(shape, dtype=FLOAT)
            if "{r}" not in pattern:
                _read_into(ft_dir / pattern, full)
                return full
            width = shape[axis] // n
            for r in range(n):
                cut = [slice(None)] * len(shape)
                cut[axis] = slice(r * width, (r + 1) * width)
                part = full[tuple(cut)]
                if part.flags.c_contiguous:  # row-split: the rank's rows are one block
                    _read_into(ft_dir / pattern.format(r=r), part)
                else:  # column-split: the rank's columns are strided
                    part[...] = np.fromfile(ft_dir / pattern.format(r=r), dtype=FLOAT).reshape(part.shape)
            return full

        return cls(cfg, read)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_pos_seq_len

    # ------------------------------------------------------------------------------------------ forward

    def _norm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = np.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.config.layernorm_eps) * w + b

    def _rotate(self, x: np.ndarray, start: int) -> np.ndarray:
        """Rotary embedding (GPT-J style, adjacent pairs) on the first dims of x [b, s, heads, hd]."""
        rot = self.config.rotary_embedding
        angles = np.arange(start, start + x.shape[1], dtype=np.float64)[:, None] * self._inv_freq[None, :]
        sin = np.sin(angles).astype(np.float32)[None, :, None, :]
        cos = np.cos(angles).astype(np.float32)[None, :, None, :]
        even, odd = x[..., 0:rot:2], x[..., 1:rot:2]
        out = x.copy()
        out[..., 0:rot:2] = even * cos - odd * sin
        out[..., 1:rot:2] = odd * cos + even * sin
        return out

    def _hidden(self, ids: np.ndarray, cache: list[np.ndarray] | None, start: int) -> np.ndarray:
        """Final hidden states [b, s, H] for ``ids`` at positions start..; fills ``cache`` (k, v per layer)."""
        c = self.config
        b, s = ids.shape
        heads, hd = c.head_num, c.size_per_head
        x = self.wte[ids]
        total = start + s
        mask = np.tril(np.ones((s, total), dtype=bool), k=start)
        for i, layer in enumerate(self.layers):
            h = self._norm(x, layer.ln_w, layer.ln_b)
            qkv = (h @ layer.qkv).reshape(b, s, 3, heads, hd)
            q, k = self._rotate(qkv[:, :, 0], start), self._rotate(qkv[:, :, 1], start)
            v = qkv[:, :, 2]
            q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [b, heads, s, hd]
            if cache is not None:
                cache[2 * i][:, :, start:total] = k
                cache[2 * i + 1][:, :, start:total] = v
                k, v = cache[2 * i][:, :, :total], cache[2 * i + 1][:, :, :total]
            scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(hd))
            scores = np.where(mask, scores, np.float32(-np.inf))
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ v
            attn = attn.transpose(0, 2, 1, 3).reshape(b, s, c.hidden) @ layer.dense
            mid = h @ layer.fc_in + layer.fc_in_b
            mid = 0.5 * mid * (1.0 + np.tanh(_GELU_C * (mid + 0.044715 * mid**3)))
            x = x + attn + (mid @ layer.fc_out + layer.fc_out_b)
        return self._norm(x, self.ln_f_w, self.ln_f_b)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [batch, seq, vocab] (float32) for every position of ``input_ids`` [batch, seq]."""
        ids = self._check_ids(np.asarray(input_ids))
        return self._hidden(ids, None, 0) @ self.lm_head_t + self.lm_head_b

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, seq] with seq >= 1, got shape {ids.shape}")
        if ids.shape[1] > self.max_seq_len:
            raise ValueError(f"{ids.shape[1]} tokens is more than the model's context of {self.max_seq_len}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        return ids.astype(np.int64)

    # ------------------------------------------------------------------------------------------ generate

    def generate(
        self,
        input_ids: Sequence[int],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        end_id: int | None = None,
        stop_words: Sequence[Sequence[int]] = (),
        seed: int | None = None,
    ) -> Generation:
        """Complete one prompt with a KV cache. Greedy when ``temperature`` <= 0 or ``top_k`` == 1; otherwise
        samples from softmax(logits / temperature) cut to the ``top_k`` best and the ``top_p`` nucleus.
        ``repetition_penalty`` is FT's multiplicative one (1.0 = off). Ends at ``end_id`` (default: the
        model's; -1: never), after a stop word (a token-id sequence, kept in the output) or after
        ``max_new_tokens`` (cut to the context left)."""
        ids = self._check_ids(np.asarray([list(input_ids)]))
        max_new_tokens = min(max_new_tokens, self.max_seq_len - ids.shape[1])
        end = self.config.end_id if end_id is None else end_id
        rng = np.random.default_rng(seed)
        shape = (1, self.config.head_num, ids.shape[1] + max(max_new_tokens, 0), self.config.size_per_head)
        cache = [np.zeros(shape, dtype=np.float32) for _ in range(2 * len(self.layers))]
        seen = list(ids[0])
        out = Generation(tokens=[], finish_reason="length")
        step_ids, start = ids, 0
        for _ in range(max(max_new_tokens, 0)):
            logits = (self._hidden(step_ids, cache, start)[0, -1] @ self.lm_head_t + self.lm_head_b).astype(np.float64)
            start += step_ids.shape[1]
            if repetition_penalty != 1.0:
                prev = np.unique(seen)
                logits[prev] = np.where(
                    logits[prev] > 0, logits[prev] / repetition_penalty, logits[prev] * repetition_penalty
                )
            token, logprob = self._pick(logits, temperature, top_k, top_p, rng)
            if token == end:
                out.finish_reason = "stop"
                break
            out.tokens.append(token)
            out.logprobs.append(logprob)
            seen.append(token)
            if any(list(w) and out.tokens[-len(w) :] == list(w) for w in stop_words):
                out.finish_reason = "stop"
                break
            step_ids = np.asarray([[token]], dtype=np.int64)
        return out

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator):
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        if temperature <= 0 or top_k == 1:
            token = int(np.argmax(logits))
            return token, float(logprobs[token])
        scaled = logits / temperature
        order = np.argsort(-scaled, kind="stable")
        if top_k > 0:
            order = order[:top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if 0.0 < top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        token = int(order[rng.choice(len(order), p=probs)])
        return token, float(logprobs[token])
