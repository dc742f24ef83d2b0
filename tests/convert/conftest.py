"""Tiny CodeGen model folders for the conversion tests, and the models whose logits they must reproduce.

``make_model`` builds a randomly initialised transformers CodeGen (the *truth*), then writes it the way a
real checkpoint would be: safetensors or pytorch_model.bin, float32/float16/bfloat16, with its qkv_proj
re-laid out in 8 shards when asked (the CodeGen2 1B/3.7B layout, which transformers cannot compute: the
truth stays the 4-shard model it came from), and optionally with an embedding shrunk below config.json.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.convert import gptj

REAL_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "data" / "codegen-tokenizer"
HAS_REAL_TOKENIZER = (REAL_TOKENIZER / "tokenizer.json").exists()
# Tiny models: one thread is faster, and immune to the spinning of thread pools on a busy 2-core machine.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nprint(os.getcwd())\n",
]


@dataclass
class Model:
    path: Path
    truth: torch.nn.Module  # float32 transformers CodeGen computing what the folder holds

    def logits(self, ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.truth(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE tokenizer (eos id 0), standing in where the real one is not needed."""
    from pipelines.finetune.tiny import train_tokenizer

    path = tmp_path_factory.mktemp("tiny-tokenizer")
    train_tokenizer(TEXTS * 20, vocab_size=300).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def real_or_tiny_tokenizer(tiny_tokenizer: Path) -> Path:
    return REAL_TOKENIZER if HAS_REAL_TOKENIZER else tiny_tokenizer


def make_model(
    path: Path,
    *,
    rows: int = 320,
    config_vocab: int | None = None,
    width: int = 64,
    heads: int = 4,
    layers: int = 2,
    dtype: str = "float32",
    fmt: str = "safetensors",
    mp: int = 4,
    tokenizer: Path | None = None,
    lm_bias: float | None = None,
    name_or_path: str | None = None,
    seed: int = 0,
    truth: torch.nn.Module | None = None,
) -> Model:
    """Write a CodeGen folder at ``path``; returns it with the float32 model it computes."""
    from safetensors.torch import save_file
    from transformers import CodeGenConfig, CodeGenForCausalLM

    if truth is None:
        config = CodeGenConfig(
            vocab_size=rows, n_positions=128, n_ctx=128, n_embd=width, n_layer=layers, n_head=heads,
            rotary_dim=8, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
        torch.manual_seed(seed)
        truth = CodeGenForCausalLM(config).eval()
        with torch.no_grad():
            for p in truth.parameters():  # larger than the default init, so layouts differ clearly
                p.mul_(3.0)
            if lm_bias is not None:
                truth.lm_head.bias.fill_(lm_bias)
    stored = getattr(torch, dtype)
    with torch.no_grad():
        for p in truth.parameters():  # the truth computes with exactly the stored (rounded) weights
            p.copy_(p.to(stored).float())
    state = {k: v.detach().to(stored).contiguous() for k, v in truth.state_dict().items() if "embed_positions" not in k}
    if mp != 4:
        for name in [k for k in state if k.endswith("qkv_proj.weight")]:
            state[name] = gptj.join_qkv(*gptj.split_qkv(state[name], 4), mp).contiguous()
    path.mkdir(parents=True)
    if fmt == "safetensors":
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "sharded":  # two shards and an index, as save_pretrained writes big models
        names = sorted(state)
        weight_map = {}
        for i, part in enumerate((names[::2], names[1::2])):
            file = f"model-0000{i + 1}-of-00002.safetensors"
            save_file({k: state[k] for k in part}, str(path / file), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(part, file)
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        torch.save(state, path / "pytorch_model.bin")
    config = truth.config.to_dict()
    config.update(vocab_size=config_vocab or rows, dtype=dtype, architectures=["CodeGenForCausalLM"])
    if name_or_path:
        config["_name_or_path"] = name_or_path
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        for item in tokenizer.iterdir():
            if item.is_file() and not item.name.startswith("LICENSE") and item.suffix != ".md":
                shutil.copyfile(item, path / item.name)
    return Model(path, truth)


def sample_ids(vocab: int, rows: int = 2, length: int = 20, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(rows, length))
