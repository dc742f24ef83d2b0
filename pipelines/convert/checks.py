"""The numbers a conversion is judged by: sample inputs, logit comparisons, and the qkv layout probe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.convert import gptj
from pipelines.convert.source import CodeGenSource, Dims, TokenizerInfo

RTOL = 1e-4  # of the largest reference logit: float32 sums in another order stay far below it
TOP = 10
PROBE_TEXT = '''import json
import os


def load_settings(path):
    """Read the settings file and return it as a dictionary."""
    if not os.path.exists(path):
        return {}
    with open(path, "r") as handle:
        return json.load(handle)


def save_settings(path, settings):
    with open(path, "w") as handle:
        json.dump(settings, handle, indent=2)


class Counter:
    def __init__(self):
        self.count = 0

    def increment(self):
        self.count += 1
        return self.count
'''


def tolerance(reference: np.ndarray) -> float:
    return float(RTOL * max(1.0, float(np.abs(reference).max())))


def _np(x: Any) -> np.ndarray:
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


@dataclass
class SampleRecord:
    """Sample inputs and, once computed, the reference's top logits at their last position."""

    input_ids: np.ndarray
    top_ids: list[list[int]] | None = None
    top_logits: list[list[float]] | None = None
    tolerance: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids.tolist(),
            "top_ids": self.top_ids,
            "top_logits": self.top_logits,
            "tolerance": self.tolerance,
        }


def sample_inputs(dims: Dims, tok: TokenizerInfo) -> tuple[np.ndarray, bool]:
    """Two fixed rows of real token ids (below the tokenizer's size): a piece of code when a tokenizer is at
    hand (also used by the layout probe), then random ids. Returns (ids, whether row 0 is code)."""
    high = min(tok.size or dims.vocab_rows, dims.vocab_rows)
    length = min(32, dims.n_positions)
    ids = np.random.default_rng(0).integers(0, high, size=(2, length))
    code = [i for i in tok.encode(PROBE_TEXT) if i < high][:length] if tok.encode else []
    if len(code) == length:
        ids[0] = code
    return ids, len(code) == length


def sample_record(ids: np.ndarray, reference: Any) -> SampleRecord:
    """The reference's top-10 logits at the last position of each row, for ``verify --forward``."""
    last = _np(reference)[:, -1]
    order = np.argsort(-last, axis=-1)[:, :TOP]
    top = np.take_along_axis(last, order, -1).astype(float).tolist()
    return SampleRecord(ids, order.tolist(), top, tolerance(_np(reference)))


def compare_logits(reference: Any, got: Any) -> dict[str, Any]:
    """Compare logits over the reference's vocabulary; rows beyond it (padding) must never win."""
    ref, out = _np(reference), _np(got)
    rows = ref.shape[-1]
    diff = float(np.abs(out[..., :rows] - ref).max())
    tol = tolerance(ref)
    result: dict[str, Any] = {"max_abs_diff": diff, "tolerance": tol, "ok": diff <= tol}
    if out.shape[-1] > rows:
        pad_max = float(out[..., rows:].max())
        never = bool(pad_max < out[..., :rows].min(axis=-1).min())
        result.update(padded_rows=out.shape[-1] - rows, padded_max_logit=pad_max, padded_never_win=never)
        result["ok"] = result["ok"] and never
    return result


def probe_layout(source: CodeGenSource, sd: dict[str, Any], ids: np.ndarray, reference: Any) -> dict[str, Any]:
    """Loss on the code row of ``ids`` with the qkv_proj read in 4 and in 8 shards.

    A trained model predicts code far better with its real layout; a random one shows no preference, and
    then the name or --mp-num decides. ``reference`` holds the logits with ``source.mp_num``.
    """
    dims = source.dims
    candidates = sorted({m for m in (4, 8, source.mp_num) if dims.n_embd % m == 0})
    if len(candidates) < 2:
        return {"probe": "skipped: one possible layout"}
    code = ids[:1]
    losses = {source.mp_num: gptj.mean_loss(reference[:1], code)}
    for m in candidates:
        if m != source.mp_num:
            losses[m] = gptj.mean_loss(gptj.reference_codegen_logits(sd, dims, code, m), code)
    losses = {m: round(v, 3) for m, v in sorted(losses.items())}
    best = min(losses, key=losses.get)
    margin = min(v - losses[best] for m, v in losses.items() if m != best)
    # A random model's losses differ by hundredths; a model that learnt anything is far better in its own layout.
    conclusive = margin > max(0.5, 0.5 * losses[best]) and losses[best] < math.log(dims.vocab_rows) - 2.0
    return {"probe": "loss on a code sample per mp_num", "losses": losses, "best": best, "conclusive": conclusive}
