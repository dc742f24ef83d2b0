"""The CodeGen -> GPT-J regrouping, the reference CodeGen forward, the FT split and the vocabulary padding rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.convert import gptj
from pipelines.convert.ftformat import FTConfig, expected_files, ft_arrays
from pipelines.convert.source import Dims
from tests.convert.conftest import make_model, sample_ids

H = 64


def mp_layout_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mp: int) -> torch.Tensor:
    """qkv_proj as CodeGen stores it: for each of the ``mp`` shards, its rows of q, then of v, then of k."""
    local = q.shape[0] // mp
    rows = []
    for shard in range(mp):
        part = slice(shard * local, (shard + 1) * local)
        rows += [q[part], v[part], k[part]]
    return torch.cat(rows)


@pytest.mark.parametrize("mp", [4, 8])
def test_split_qkv_recovers_q_k_v(mp: int) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(H, H) for _ in range(3))
    qkv = mp_layout_by_hand(q, k, v, mp)
    got = gptj.split_qkv(qkv, mp)
    for want, have in zip((q, k, v), got, strict=True):
        assert torch.equal(want, have)
    wrong = gptj.split_qkv(qkv, 8 if mp == 4 else 4)  # the other layout mixes rows of q, v and k
    assert not torch.equal(wrong[0], q)
    assert torch.equal(gptj.join_qkv(*got, mp), qkv)


def test_reference_forward_matches_transformers_and_needs_the_right_mp_num(tmp_path) -> None:
    model = make_model(tmp_path / "m")
    sd = {k: v for k, v in model.truth.state_dict().items() if "embed_positions" not in k}
    dims = Dims(n_layer=2, n_head=4, n_embd=H, inter=4 * H, rotary_dim=8, n_positions=128, eps=1e-5, vocab_rows=320)
    ids = sample_ids(320)
    truth = model.logits(ids)
    assert np.abs(gptj.reference_codegen_logits(sd, dims, ids, 4).numpy() - truth).max() < 1e-4
    sd8 = {k: gptj.join_qkv(*gptj.split_qkv(v, 4), 8) if "qkv_proj" in k else v for k, v in sd.items()}
    assert np.abs(gptj.reference_codegen_logits(sd8, dims, ids, 8).numpy() - truth).max() < 1e-4
    assert np.abs(gptj.reference_codegen_logits(sd8, dims, ids, 4).numpy() - truth).max() > 0.1
    gptj_model = gptj.hf_model("gptj", gptj.to_gptj(sd8, dims, 8), dims)
    assert np.abs(gptj.fp32_logits(gptj_model, ids).numpy() - truth).max() < 1e-4


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_ft_files_have_the_shapes_ft_loads(n: int) -> None:
    cfg = FTConfig("m", 8, 8, 256, 2, 128, 8, 0, 0, n, 64)
    rng = np.random.default_rng(0)
    sd = {"transformer.wte.weight": rng.random((128, H)), "lm_head.weight": rng.random((128, H))}
    sd |= {
        "lm_head.bias": rng.random(128),
        "transformer.ln_f.weight": rng.random(H),
        "transformer.ln_f.bias": rng.random(H),
    }
    for i in range(2):
        p = f"transformer.h.{i}."
        sd |= {p + "ln_1.weight": rng.random(H), p + "ln_1.bias": rng.random(H), p + "mlp.fc_out.bias": rng.random(H)}
        sd |= {p + f"attn.{x}_proj.weight": rng.random((H, H)) for x in "qkv"}
        sd |= {p + "attn.out_proj.weight": rng.random((H, H)), p + "mlp.fc_in.weight": rng.random((256, H))}
        sd |= {p + "mlp.fc_in.bias": rng.random(256), p + "mlp.fc_out.weight": rng.random((H, 256))}
    written = {name: array.shape for name, array in ft_arrays(sd, cfg)}
    assert written == expected_files(cfg)
    assert written[f"model.layers.0.attention.query_key_value.weight.{n - 1}.bin"] == (H, 3, H // n)
    assert written[f"model.layers.1.mlp.dense_4h_to_h.weight.{n - 1}.bin"] == (256 // n, H)
    # rank r holds q, k and v of its own heads: columns r*H/n.. of each
    qkv = dict(ft_arrays(sd, cfg))[f"model.layers.0.attention.query_key_value.weight.{n - 1}.bin"]
    cols = slice((n - 1) * H // n, H)
    assert np.array_equal(qkv[:, 1], sd["transformer.h.0.attn.k_proj.weight"].T[:, cols])


@pytest.mark.parametrize(
    ("rows", "config_vocab", "want", "warns"),
    [(51200, 51200, 51200, False), (50295, 51200, 51200, True), (50295, 50295, 50304, True), (320, 320, 320, False)],
)
def test_vocabulary_padding_rule(rows: int, config_vocab: int, want: int, warns: bool) -> None:
    got, warning = gptj.padded_vocab(rows, config_vocab)
    assert got == want
    assert (warning is not None) == warns
