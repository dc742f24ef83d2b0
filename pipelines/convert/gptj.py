"""CodeGen -> GPT-J: the qkv regrouping, vocabulary padding, and the forward passes that check them (torch).

CodeGen's fused ``qkv_proj`` has its rows in ``mp_num`` shards (the TPU cores it was trained on), each
holding a q, a v and a k block of ``n_embd / mp_num`` rows, in that order. GPT-J has separate q, k and v.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.convert.source import Dims

PAD_BIAS = -1.0e4  # lm_head bias of padded rows: they can never win (fits in fp16, as FT runs in half)
PAD_MULTIPLE = 64


def split_qkv(qkv: Any, mp_num: int) -> tuple[Any, Any, Any]:
    """CodeGen ``qkv_proj.weight`` [3H, H] in ``mp_num`` shards -> GPT-J (q, k, v), each [H, H]."""
    rows, width = qkv.shape
    local = rows // 3 // mp_num
    grouped = qkv.reshape(mp_num, 3, local, width)  # shard, (q, v, k), rows of the shard, input
    q, v, k = (grouped[:, j].reshape(rows // 3, width) for j in range(3))
    return q, k, v


def join_qkv(q: Any, k: Any, v: Any, mp_num: int) -> Any:
    """The inverse of ``split_qkv``: (q, k, v) -> a CodeGen ``qkv_proj.weight`` laid out in ``mp_num`` shards."""
    import torch

    hidden, width = q.shape
    local = hidden // mp_num
    parts = [t.reshape(mp_num, 1, local, width) for t in (q, v, k)]
    return torch.cat(parts, dim=1).reshape(3 * hidden, width)


def padded_vocab(rows: int, config_vocab: int) -> tuple[int, str | None]:
    """The embedding rows to write, and a warning when they differ from the model's rows."""
    target = max(rows, config_vocab)
    target = -(-target // PAD_MULTIPLE) * PAD_MULTIPLE
    if target == rows:
        return rows, None
    if rows < config_vocab:
        why = (
            f"the embedding has {rows} rows but config.json says vocab_size {config_vocab} (shrunk to the "
            "tokenizer by an old run_clm)"
        )
    else:
        why = f"the embedding has {rows} rows, not a multiple of {PAD_MULTIPLE}"
    return target, (
        f"{why}: padded to {target} rows so FasterTransformer loads it; the {target - rows} new rows have zero "
        f"weights and an lm_head bias of {PAD_BIAS:g}, so they are never generated"
    )


def pad_vocab(sd: dict[str, Any], rows_out: int) -> dict[str, Any]:
    """Copy of ``sd`` (CodeGen names) with wte/lm_head padded to ``rows_out`` rows; other tensors shared."""
    import torch

    out = dict(sd)
    extra = rows_out - sd["transformer.wte.weight"].shape[0]
    if extra <= 0:
        return out
    for name in ("transformer.wte.weight", "lm_head.weight"):
        tensor = sd[name]
        out[name] = torch.cat([tensor, tensor.new_zeros(extra, tensor.shape[1])])
    bias = sd["lm_head.bias"]
    out["lm_head.bias"] = torch.cat([bias, bias.new_full((extra,), PAD_BIAS)])
    return out


def to_gptj(sd: dict[str, Any], dims: Dims, mp_num: int) -> dict[str, Any]:
    """CodeGen state dict (float32, canonical names) -> GPT-J state dict: every weight by name, qkv split."""
    out: dict[str, Any] = {}
    for name, tensor in sd.items():
        if name.endswith("attn.qkv_proj.weight"):
            q, k, v = split_qkv(tensor, mp_num)
            for part, value in (("q", q), ("k", k), ("v", v)):
                out[name.replace("qkv_proj", f"{part}_proj")] = value
        else:
            out[name] = tensor
    return out


def to_codegen_mp4(sd: dict[str, Any], mp_num: int) -> dict[str, Any]:
    """CodeGen state dict in ``mp_num`` shards -> the 4-shard layout that transformers' CodeGen computes."""
    if mp_num == 4:
        return dict(sd)
    out = dict(sd)
    for name, tensor in sd.items():
        if name.endswith("attn.qkv_proj.weight"):
            out[name] = join_qkv(*split_qkv(tensor, mp_num), 4)
    return out


def _rotary(x: Any, positions: Any, rot: int) -> Any:
    """GPT-J/CodeGen rotary embedding on the first ``rot`` dims of each head (pairs of adjacent dims)."""
    import torch

    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    angles = positions.double()[:, None] * inv_freq[None, :]
    sin, cos = angles.sin().float()[None, :, None, :], angles.cos().float()[None, :, None, :]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    even, odd = x_rot[..., 0::2], x_rot[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat([rotated, x_pass], dim=-1)


def reference_codegen_logits(sd: dict[str, Any], dims: Dims, input_ids: Any, mp_num: int) -> Any:
    """CodeGen's forward pass written out, for any ``mp_num`` (transformers hardcodes 4): [b, s] -> [b, s, V]."""
    import torch
    import torch.nn.functional as F

    ids = torch.as_tensor(input_ids, dtype=torch.long)
    b, s = ids.shape
    heads, hd, local = dims.n_head, dims.head_dim, dims.n_embd // mp_num
    positions = torch.arange(s)
    mask = torch.ones(s, s, dtype=torch.bool).tril()

    def w(name: str) -> torch.Tensor:  # float32 compute, whatever the stored dtype
        return sd[name].float()

    x = w("transformer.wte.weight")[ids]
    with torch.no_grad():
        for i in range(dims.n_layer):
            p = f"transformer.h.{i}."
            h = F.layer_norm(x, (dims.n_embd,), w(p + "ln_1.weight"), w(p + "ln_1.bias"), dims.eps)
            qkv = (h @ w(p + "attn.qkv_proj.weight").T).reshape(b, s, mp_num, 3, local)
            q, v, k = (qkv[:, :, :, j].reshape(b, s, heads, hd) for j in range(3))
            q, k = _rotary(q, positions, dims.rotary_dim), _rotary(k, positions, dims.rotary_dim)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            attn = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
            attn = attn.transpose(1, 2).reshape(b, s, dims.n_embd) @ w(p + "attn.out_proj.weight").T
            mlp = F.gelu(h @ w(p + "mlp.fc_in.weight").T + w(p + "mlp.fc_in.bias"), approximate="tanh")
            mlp = mlp @ w(p + "mlp.fc_out.weight").T + w(p + "mlp.fc_out.bias")
            x = x + attn + mlp
        x = F.layer_norm(x, (dims.n_embd,), w("transformer.ln_f.weight"), w("transformer.ln_f.bias"), dims.eps)
        return x @ w("lm_head.weight").T + w("lm_head.bias")


def _hf_config(kind: str, dims: Dims, vocab: int) -> Any:
    from transformers import CodeGenConfig, GPTJConfig

    cls = CodeGenConfig if kind == "codegen" else GPTJConfig
    config = cls(
        vocab_size=vocab,
        n_positions=dims.n_positions,
        n_embd=dims.n_embd,
        n_layer=dims.n_layer,
        n_head=dims.n_head,
        n_inner=dims.inter,
        rotary_dim=dims.rotary_dim,
        layer_norm_epsilon=dims.eps,
        activation_function="gelu_new",
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if kind == "codegen":
        config.n_ctx = dims.n_positions
    config._attn_implementation = "eager"
    return config


def hf_model(kind: str, sd: dict[str, Any], dims: Dims) -> Any:
    """transformers' CodeGenForCausalLM (``kind='codegen'``, 4-shard qkv) or GPTJForCausalLM over ``sd``, no copy."""
    import importlib

    import torch
    from transformers import CodeGenForCausalLM, GPTJForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    vocab = sd["transformer.wte.weight"].shape[0]
    cls = CodeGenForCausalLM if kind == "codegen" else GPTJForCausalLM
    with torch.device("meta"):
        model = cls(_hf_config(kind, dims, vocab))
    model.load_state_dict(sd, strict=True, assign=True)
    module = importlib.import_module(cls.__module__)
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if not name.endswith("embed_positions"):
            raise RuntimeError(f"transformers {cls.__name__} has an unexpected buffer {name}")
        owner.embed_positions = module.create_sinusoidal_positions(owner.max_positions, owner.pos_embd_dim)
    return model.eval()


def fp32_logits(model: Any, input_ids: Any) -> Any:
    """Logits computed in float32 whatever the model's dtype: each module's weights are upcast only while it runs.

    Keeps a float16/bfloat16 model at its own size in memory while its float32 logits are compared exactly.
    """
    import torch

    def upcast(module: Any, _args: Any) -> None:
        saved = {n: p for n, p in module._parameters.items() if p is not None and p.dtype != torch.float32}
        module.__dict__["_fp16_saved"] = saved
        for n, p in saved.items():
            module._parameters[n] = torch.nn.Parameter(p.float(), requires_grad=False)

    def restore(module: Any, _args: Any, _out: Any) -> None:
        module._parameters.update(module.__dict__.pop("_fp16_saved", {}))

    hooks = []
    for module in model.modules():
        if module._parameters:
            hooks += [module.register_forward_pre_hook(upcast), module.register_forward_hook(restore)]
    try:
        with torch.no_grad():
            return model(input_ids=torch.as_tensor(input_ids, dtype=torch.long)).logits.float()
    finally:
        for hook in hooks:
            hook.remove()


def mean_loss(logits: Any, input_ids: Any) -> float:
    """Mean next-token cross-entropy (nats): how well a layout predicts real text."""
    import torch
    import torch.nn.functional as F

    ids = torch.as_tensor(input_ids, dtype=torch.long)
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))
