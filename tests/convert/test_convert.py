"""Converting tiny CodeGen folders: every layout and tensor-parallel size, real vocabulary shape, padding, dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.convert.errors import ModelInputError
from pipelines.convert.ftformat import FTConfig, expected_files, nbytes, read_pbtxt_parameters
from pipelines.convert.ftmodel import FTModel
from pipelines.convert.run import ConvertOptions, convert
from pipelines.convert.verify import verify_output
from tests.convert.conftest import HAS_REAL_TOKENIZER, Model, make_model, sample_ids

TOL = 1e-4


def run(model: Model, root: Path, gpus: int, **kwargs) -> dict:
    return convert(ConvertOptions(model_dir=model.path, models_root=root, gpus=gpus, **kwargs))


def ft_dir(root: Path, name: str, gpus: int) -> Path:
    return root / f"{name}-{gpus}gpu" / "fastertransformer" / "1" / f"{gpus}-gpu"


def assert_same_logits(model: Model, ft: FTModel, vocab: int) -> None:
    ids = sample_ids(vocab)
    want = model.logits(ids)
    got = ft.logits(ids)
    assert np.abs(got[..., : want.shape[-1]] - want).max() < TOL * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("mp", [4, 8])
@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_every_layout_and_tensor_parallel_size(tmp_path: Path, tiny_tokenizer: Path, mp: int, gpus: int) -> None:
    model = make_model(tmp_path / "acme-model", mp=mp, tokenizer=tiny_tokenizer)
    root = tmp_path / "models"
    result = run(model, root, gpus, mp_num=mp if mp == 8 else None, export_hf=gpus == 1)
    checks = result["checks"]
    assert result["mp_num"] == mp
    assert checks["gptj_vs_codegen"]["ok"] and checks["ft_files_vs_codegen"]["ok"]
    assert checks["byte_sizes"] == {"files": len(list(ft_dir(root, "acme-model", gpus).glob("*.bin"))), "problems": []}
    # An independent check: the files, read back through FT's shard rules, compute the original model.
    ft = FTModel.load(ft_dir(root, "acme-model", gpus))
    assert_same_logits(model, ft, 320)
    params = read_pbtxt_parameters((root / f"acme-model-{gpus}gpu/fastertransformer/config.pbtxt").read_text())
    assert params["tensor_para_size"] == str(gpus)
    assert (params["vocab_size"], params["inter_size"], params["head_num"], params["size_per_head"]) == (
        "320",
        "256",
        "4",
        "16",
    )
    assert (params["decoder_layers"], params["rotary_embedding"], params["model_type"]) == ("2", "8", "GPT-J")
    assert params["model_checkpoint_path"] == f"/model/fastertransformer/1/{gpus}-gpu"  # MODEL_DIR at /model
    assert params["end_id"] == "0"  # the tiny tokenizer's <|endoftext|>
    assert verify_output(root / f"acme-model-{gpus}gpu")["kind"] == "fastertransformer"
    if gpus == 1:  # the embedded engine's copy: transformers computes it (mp8 is re-laid out in 4 shards)
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(root / "acme-model-hf")
        ids = sample_ids(320)
        got = hf(input_ids=__import__("torch").as_tensor(ids)).logits.detach().numpy()
        assert np.abs(got - model.logits(ids)).max() < TOL * max(1.0, np.abs(got).max())
        assert verify_output(root / "acme-model-hf")["kind"] == "huggingface"
        assert ("copied unchanged" in result["hf_export"]["how"]) == (mp == 4)


def test_mp8_is_recognised_by_name_and_the_wrong_layout_would_differ(tmp_path: Path, tiny_tokenizer: Path) -> None:
    model = make_model(tmp_path / "cg2", mp=8, name_or_path="Salesforce/codegen2-1B", tokenizer=tiny_tokenizer)
    result = run(model, tmp_path / "models", 1, export_hf=False)
    assert result["mp_num"] == 8 and "CodeGen2" in result["checks"]["qkv_layout"]["reason"]
    assert_same_logits(model, FTModel.load(ft_dir(tmp_path / "models", "cg2", 1)), 320)
    wrong = run(model, tmp_path / "wrong", 1, mp_num=4, export_hf=False)  # a random model cannot tell them apart
    ids = sample_ids(320)
    got = FTModel.load(ft_dir(tmp_path / "wrong", "cg2", 1)).logits(ids)
    assert wrong["mp_num"] == 4 and np.abs(got - model.logits(ids)).max() > 0.1


def test_real_vocabulary_shape(tmp_path: Path, real_or_tiny_tokenizer: Path) -> None:
    model = make_model(tmp_path / "real", rows=51200, tokenizer=real_or_tiny_tokenizer)
    root = tmp_path / "models"
    result = run(model, root, 2)
    assert result["vocab_size"] == 51200 and result["warnings"] == []
    params = read_pbtxt_parameters((root / "real-2gpu/fastertransformer/config.pbtxt").read_text())
    assert params["vocab_size"] == "51200"
    assert (root / "real-2gpu/fastertransformer/1/2-gpu/model.wte.bin").stat().st_size == 51200 * 64 * 4
    if HAS_REAL_TOKENIZER:  # start/end ids and size from the real CodeGen tokenizer
        assert (result["start_id"], result["end_id"], result["tokenizer_size"]) == (50256, 50256, 50295)
        assert (params["start_id"], params["end_id"]) == ("50256", "50256")
    assert_same_logits(model, FTModel.load(ft_dir(root, "real", 2)), 51200)


@pytest.mark.parametrize(("config_vocab", "padded"), [(51200, 51200), (None, 50304)])
def test_shrunk_embedding_is_padded_and_the_padding_never_wins(
    tmp_path: Path, real_or_tiny_tokenizer: Path, config_vocab: int | None, padded: int
) -> None:
    # Every real logit is near -50: rows padded with a zero bias would score 0 and win every time.
    model = make_model(
        tmp_path / "shrunk", rows=50295, config_vocab=config_vocab, tokenizer=real_or_tiny_tokenizer, lm_bias=-50.0
    )
    root = tmp_path / "models"
    result = run(model, root, 2)
    assert result["vocab_size"] == padded and result["source_vocab_rows"] == 50295
    assert any("padded to" in w for w in result["warnings"])
    assert result["checks"]["ft_files_vs_codegen"]["padded_never_win"]
    ft = FTModel.load(ft_dir(root, "shrunk", 2))
    assert ft.vocab_size == padded
    assert (root / "shrunk-2gpu/fastertransformer/1/2-gpu/model.lm_head.weight.bin").stat().st_size == padded * 64 * 4
    ids = sample_ids(50295)
    logits = ft.logits(ids)
    assert_same_logits(model, ft, 50295)
    assert logits[..., 50295:].max() < logits[..., :50295].min()
    assert (logits.argmax(-1) < 50295).all()
    generated = ft.generate(list(ids[0]), 8, temperature=1.5, seed=3, end_id=-1)
    assert len(generated.tokens) == 8 and max(generated.tokens) < 50295
    hf_config = json.loads((root / "shrunk-hf/config.json").read_text())
    assert hf_config["vocab_size"] == padded  # the embedded copy loads with the padded rows too
    assert result["hf_export"]["check"]["ok"]


@pytest.mark.parametrize(
    ("dtype", "fmt"),
    [("float16", "safetensors"), ("bfloat16", "safetensors"), ("float32", "bin"), ("float16", "sharded")],
)
def test_stored_dtypes_and_formats(tmp_path: Path, tiny_tokenizer: Path, dtype: str, fmt: str) -> None:
    model = make_model(tmp_path / "m", dtype=dtype, fmt=fmt, tokenizer=tiny_tokenizer)
    root = tmp_path / "models"
    result = run(model, root, 1)
    assert result["checks"]["ft_files_vs_codegen"]["ok"]
    record = json.loads((root / "m-1gpu/verification.json").read_text())
    assert (record["source"]["dtype"], record["source"]["format"]) == (dtype, "bin" if fmt == "bin" else "safetensors")
    assert len(record["source"]["fingerprint"]) == (3 if fmt == "sharded" else 2)  # config.json + weight files
    cfg = FTConfig.read(ft_dir(root, "m", 1) / "config.ini")
    for name, shape in expected_files(cfg).items():  # float32 whatever the source stored
        assert (ft_dir(root, "m", 1) / name).stat().st_size == nbytes(shape)
    assert_same_logits(model, FTModel.load(ft_dir(root, "m", 1)), 320)


def test_refusals(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    with pytest.raises(ModelInputError, match=r"gpt2 model .* not CodeGen"):
        convert(ConvertOptions(model_dir=gpt2, models_root=tmp_path / "models", gpus=1))
    model = make_model(tmp_path / "m")
    with pytest.raises(ModelInputError, match="4 attention heads cannot be split over 8 GPUs"):
        run(model, tmp_path / "models", 8)
    with pytest.raises(ModelInputError, match="must be 1, 2, 4 or 8"):
        run(model, tmp_path / "models", 3)
    with pytest.raises(ModelInputError, match=r"no config\.json"):
        convert(ConvertOptions(model_dir=tmp_path, models_root=tmp_path / "models", gpus=1))
    with pytest.raises(ModelInputError, match=r"no valid end id .* pass --tokenizer DIR"):
        run(model, tmp_path / "models", 1)  # neither a tokenizer nor ids in config.json
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_unmerged_lora_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = make_model(tmp_path / "m")
    state = load_file(model.path / "model.safetensors")
    state["transformer.h.0.attn.qkv_proj.lora_A.weight"] = state["transformer.h.0.ln_1.weight"][None, :].clone()
    save_file(state, str(model.path / "model.safetensors"))
    with pytest.raises(ModelInputError, match="unmerged LoRA"):
        run(model, tmp_path / "models", 1)
