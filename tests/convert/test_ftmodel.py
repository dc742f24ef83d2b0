"""The reference forward pass over FT files: generation with a KV cache, stops, sampling; the qkv layout probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.convert.checks import PROBE_TEXT
from pipelines.convert.errors import ModelInputError
from pipelines.convert.ftmodel import FTModel
from pipelines.convert.run import ConvertOptions, convert
from tests.convert.conftest import Model, make_model, sample_ids


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> tuple[Model, FTModel]:
    tmp = tmp_path_factory.mktemp("ftmodel")
    model = make_model(tmp / "acme", tokenizer=tiny_tokenizer, seed=5)
    convert(ConvertOptions(model_dir=model.path, models_root=tmp / "models", gpus=2, export_hf=False))
    return model, FTModel.load(tmp / "models" / "acme-2gpu" / "fastertransformer" / "1" / "2-gpu")


def test_greedy_generation_with_kv_cache_matches_transformers(converted: tuple[Model, FTModel]) -> None:
    model, ft = converted
    prompt = sample_ids(320, rows=1, length=12)[0].tolist()
    want = model.truth.generate(
        torch.as_tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None
    )[0, len(prompt) :].tolist()
    got = ft.generate(prompt, 10, end_id=-1)
    assert got.tokens == want and got.finish_reason == "length"
    assert len(got.logprobs) == 10 and all(lp <= 0 for lp in got.logprobs)


def test_generation_stops_at_end_id_and_stop_words(converted: tuple[Model, FTModel]) -> None:
    _, ft = converted
    prompt = sample_ids(320, rows=1, length=12)[0].tolist()
    free = ft.generate(prompt, 8, end_id=-1).tokens
    at_end = ft.generate(prompt, 8, end_id=free[3])
    assert at_end.tokens == free[: free.index(free[3])] and at_end.finish_reason == "stop"
    stopped = ft.generate(prompt, 8, end_id=-1, stop_words=[[free[1], free[2]]])
    assert stopped.tokens == free[:3] and stopped.finish_reason == "stop"
    assert ft.generate(prompt, 0).tokens == []


def test_sampling_is_seeded_and_bounded(converted: tuple[Model, FTModel]) -> None:
    _, ft = converted
    prompt = sample_ids(320, rows=1, length=6)[0].tolist()
    a = ft.generate(prompt, 12, temperature=1.0, top_k=40, top_p=0.9, seed=7, end_id=-1)
    b = ft.generate(prompt, 12, temperature=1.0, top_k=40, top_p=0.9, seed=7, end_id=-1)
    assert a.tokens == b.tokens and all(0 <= t < ft.vocab_size for t in a.tokens)
    top1 = ft.generate(prompt, 12, temperature=1.0, top_k=1, seed=1, end_id=-1)
    assert top1.tokens == ft.generate(prompt, 12, end_id=-1).tokens
    with pytest.raises(ValueError, match="context"):
        ft.logits(np.zeros((1, ft.max_seq_len + 1), dtype=np.int64))


def test_layout_probe_recognises_a_trained_mp8_model(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """A model that knows code predicts it far better with its real layout: an unnamed mp8 model is detected,
    and --mp-num 4 on it is refused, where a random model could not tell (see test_convert)."""
    from transformers import AutoTokenizer

    ids = [i for i in AutoTokenizer.from_pretrained(tiny_tokenizer).encode(PROBE_TEXT) if i < 320][:32]
    first = make_model(tmp_path / "untrained", tokenizer=tiny_tokenizer, seed=2)
    truth = first.truth.train()
    batch = torch.as_tensor([ids])
    optimizer = torch.optim.Adam(truth.parameters(), lr=3e-3)
    for _ in range(60):
        loss = truth(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5
    trained = make_model(tmp_path / "trained", mp=8, tokenizer=tiny_tokenizer, truth=truth.eval())
    result = convert(ConvertOptions(model_dir=trained.path, models_root=tmp_path / "models", gpus=1, export_hf=False))
    layout = result["checks"]["qkv_layout"]
    assert result["mp_num"] == 8 and layout["conclusive"] and "far better" in layout["reason"]
    assert layout["losses"][8] + 0.5 < layout["losses"][4]
    with pytest.raises(ModelInputError, match="--mp-num 4 would garble this model"):
        convert(ConvertOptions(model_dir=trained.path, models_root=tmp_path / "m2", gpus=1, mp_num=4))
