"""FasterTransformer GPT-J files: names, shapes, tensor-parallel split, config.ini and Triton's config.pbtxt.

Every file is a raw little-endian float32 array (FT's GPT-J ignores the data-type key and reads float32).
FT reads exactly the bytes a shape needs and only warns when a file is short, so sizes are checked here
against the shapes below, which are the ones FT's ``GptJWeight``/``GptJDecoderLayerWeight`` load. NumPy only.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

SECTION = "gptj"
FLOAT = np.dtype("<f4")
TENSOR_PARALLEL = (1, 2, 4, 8)


@dataclass(frozen=True)
class FTConfig:
    """What FT (and the reference forward) need to know; written to ``config.ini`` under ``[gptj]``."""

    model_name: str
    head_num: int
    size_per_head: int
    inter_size: int
    num_layer: int
    vocab_size: int
    rotary_embedding: int
    start_id: int
    end_id: int
    tensor_para_size: int
    max_pos_seq_len: int
    layernorm_eps: float = 1e-5
    weight_data_type: str = "fp32"

    @property
    def hidden(self) -> int:
        return self.head_num * self.size_per_head

    def to_ini(self, extra: dict[str, dict[str, Any]] | None = None) -> str:
        parser = configparser.ConfigParser()
        parser[SECTION] = {k: str(v) for k, v in asdict(self).items()}
        parser[SECTION]["decoder_layers"] = str(self.num_layer)  # the name config.pbtxt and older FT use
        for section, values in (extra or {}).items():
            parser[section] = {k: str(v) for k, v in values.items()}
        lines: list[str] = []
        for section in parser.sections():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {v}" for k, v in parser[section].items())
            lines.append("")
        return "\n".join(lines)

    @classmethod
    def read(cls, path: Path) -> FTConfig:
        parser = configparser.ConfigParser()
        if not parser.read(path) or SECTION not in parser:
            raise ValueError(f"{path} is missing or has no [{SECTION}] section")
        section = parser[SECTION]
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in section:
                if f.name in ("layernorm_eps", "weight_data_type"):
                    continue
                raise ValueError(f"{path} lacks {f.name}")
            raw = section[f.name]
            values[f.name] = float(raw) if f.name == "layernorm_eps" else raw if f.type == "str" else int(raw)
        return cls(**values)


def expected_files(cfg: FTConfig) -> dict[str, tuple[int, ...]]:
    """Every file FT loads for ``cfg`` and the float32 shape it must hold, in writing order."""
    h, n, inter, vocab = cfg.hidden, cfg.tensor_para_size, cfg.inter_size, cfg.vocab_size
    files: dict[str, tuple[int, ...]] = {"model.wte.bin": (vocab, h)}
    for i in range(cfg.num_layer):
        p = f"model.layers.{i}."
        files[p + "input_layernorm.weight.bin"] = (h,)
        files[p + "input_layernorm.bias.bin"] = (h,)
        for r in range(n):
            files[p + f"attention.query_key_value.weight.{r}.bin"] = (h, 3, h // n)
            files[p + f"attention.dense.weight.{r}.bin"] = (h // n, h)
            files[p + f"mlp.dense_h_to_4h.weight.{r}.bin"] = (h, inter // n)
            files[p + f"mlp.dense_h_to_4h.bias.{r}.bin"] = (inter // n,)
            files[p + f"mlp.dense_4h_to_h.weight.{r}.bin"] = (inter // n, h)
        files[p + "mlp.dense_4h_to_h.bias.bin"] = (h,)
    files["model.final_layernorm.weight.bin"] = (h,)
    files["model.final_layernorm.bias.bin"] = (h,)
    files["model.lm_head.weight.bin"] = (vocab, h)
    files["model.lm_head.bias.bin"] = (vocab,)
    return files


def nbytes(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) * FLOAT.itemsize


def size_problems(ft_dir: Path, cfg: FTConfig) -> list[str]:
    """Files missing, of the wrong byte size, or unexpected (a .bin FT would not read) in ``ft_dir``."""
    problems = []
    expected = expected_files(cfg)
    for name, shape in expected.items():
        path = ft_dir / name
        if not path.exists():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != nbytes(shape):
            problems.append(f"{name} has {path.stat().st_size} bytes, expected {nbytes(shape)} (float32 {list(shape)})")
    extra = sorted(p.name for p in ft_dir.glob("*.bin") if p.name not in expected)
    if extra:
        problems.append(f"unexpected files {', '.join(extra[:5])}")
    return problems


def ft_arrays(gptj: dict[str, Any], cfg: FTConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, float32 array) for every FT file, from a GPT-J state dict of float32 arrays (HF names)."""
    n = cfg.tensor_para_size
    yield "model.wte.bin", gptj["transformer.wte.weight"]
    for i in range(cfg.num_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        yield q + "input_layernorm.weight.bin", gptj[p + "ln_1.weight"]
        yield q + "input_layernorm.bias.bin", gptj[p + "ln_1.bias"]
        # [H_in, 3, H_out]: q, k, v stacked, then each rank takes its heads (a slice of the last axis)
        qkv = np.stack([gptj[p + f"attn.{x}_proj.weight"].T for x in "qkv"], axis=1)
        for r, part in enumerate(np.split(qkv, n, axis=-1)):
            yield q + f"attention.query_key_value.weight.{r}.bin", part
        for r, part in enumerate(np.split(gptj[p + "attn.out_proj.weight"].T, n, axis=0)):
            yield q + f"attention.dense.weight.{r}.bin", part
        fc_in_w = gptj[p + "mlp.fc_in.weight"].T
        for r, (w, b) in enumerate(
            zip(np.split(fc_in_w, n, axis=-1), np.split(gptj[p + "mlp.fc_in.bias"], n), strict=True)
        ):
            yield q + f"mlp.dense_h_to_4h.weight.{r}.bin", w
            yield q + f"mlp.dense_h_to_4h.bias.{r}.bin", b
        for r, part in enumerate(np.split(gptj[p + "mlp.fc_out.weight"].T, n, axis=0)):
            yield q + f"mlp.dense_4h_to_h.weight.{r}.bin", part
        yield q + "mlp.dense_4h_to_h.bias.bin", gptj[p + "mlp.fc_out.bias"]
    yield "model.final_layernorm.weight.bin", gptj["transformer.ln_f.weight"]
    yield "model.final_layernorm.bias.bin", gptj["transformer.ln_f.bias"]
    yield "model.lm_head.weight.bin", gptj["lm_head.weight"]
    yield "model.lm_head.bias.bin", gptj["lm_head.bias"]


def write_array(path: Path, array: np.ndarray) -> int:
    """Write ``array`` as raw little-endian float32 (the caller fsyncs); returns the bytes written."""
    data = np.ascontiguousarray(array, dtype=FLOAT)
    with open(path, "wb") as handle:
        handle.write(memoryview(data).cast("B"))
    return data.nbytes


# ----------------------------------------------------------------------------------------------------------
# Triton config.pbtxt (FauxPilot's "fastertransformer" model)

_INPUTS = [
    ("input_ids", "TYPE_UINT32", "[ -1 ]", False, False),
    ("start_id", "TYPE_UINT32", "[ 1 ]", True, True),
    ("end_id", "TYPE_UINT32", "[ 1 ]", True, True),
    ("input_lengths", "TYPE_UINT32", "[ 1 ]", True, False),
    ("request_output_len", "TYPE_UINT32", "[ -1 ]", False, False),
    ("runtime_top_k", "TYPE_UINT32", "[ 1 ]", True, True),
    ("runtime_top_p", "TYPE_FP32", "[ 1 ]", True, True),
    ("beam_search_diversity_rate", "TYPE_FP32", "[ 1 ]", True, True),
    ("temperature", "TYPE_FP32", "[ 1 ]", True, True),
    ("len_penalty", "TYPE_FP32", "[ 1 ]", True, True),
    ("repetition_penalty", "TYPE_FP32", "[ 1 ]", True, True),
    ("random_seed", "TYPE_INT32", "[ 1 ]", True, True),
    ("is_return_log_probs", "TYPE_BOOL", "[ 1 ]", True, True),
    ("beam_width", "TYPE_UINT32", "[ 1 ]", True, True),
    ("bad_words_list", "TYPE_INT32", "[ 2, -1 ]", False, True),
    ("stop_words_list", "TYPE_INT32", "[ 2, -1 ]", False, True),
]
_OUTPUTS = [
    ("output_ids", "TYPE_UINT32", "[ -1, -1 ]"),
    ("sequence_length", "TYPE_UINT32", "[ -1 ]"),
    ("cum_log_probs", "TYPE_FP32", "[ -1 ]"),
    ("output_log_probs", "TYPE_FP32", "[ -1, -1 ]"),
]


def pbtxt_parameters(cfg: FTConfig, checkpoint_path: str, is_half: bool) -> dict[str, str]:
    return {
        "tensor_para_size": str(cfg.tensor_para_size),
        "pipeline_para_size": "1",
        "max_seq_len": str(cfg.max_pos_seq_len),
        "is_half": "1" if is_half else "0",
        "head_num": str(cfg.head_num),
        "size_per_head": str(cfg.size_per_head),
        "inter_size": str(cfg.inter_size),
        "vocab_size": str(cfg.vocab_size),
        "start_id": str(cfg.start_id),
        "end_id": str(cfg.end_id),
        "decoder_layers": str(cfg.num_layer),
        "model_name": cfg.model_name,
        "rotary_embedding": str(cfg.rotary_embedding),
        "model_type": "GPT-J",
        "model_checkpoint_path": checkpoint_path,
        "enable_custom_all_reduce": "0",
    }


def render_pbtxt(cfg: FTConfig, checkpoint_path: str, is_half: bool = True, max_batch_size: int = 1024) -> str:
    """The Triton model config of FauxPilot's ``fastertransformer`` model for these files."""
    out = [
        'name: "fastertransformer"',
        'backend: "fastertransformer"',
        f'default_model_filename: "{cfg.model_name}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
    ]
    items = []
    for name, dtype, dims, reshape, optional in _INPUTS:
        body = [f'    name: "{name}"', f"    data_type: {dtype}", f"    dims: {dims}"]
        body += ["    reshape: { shape: [ ] }"] if reshape else []
        body += ["    optional: true"] if optional else []
        items.append("  {\n" + "\n".join(body) + "\n  }")
    out += [",\n".join(items), "]", "output ["]
    items = [f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: {d}\n  }}' for n, t, d in _OUTPUTS]
    out += [",\n".join(items), "]", "instance_group [", "  {\n    count: 1\n    kind: KIND_CPU\n  }", "]"]
    for key, value in pbtxt_parameters(cfg, checkpoint_path, is_half).items():
        out.append(f'parameters {{\n  key: "{key}"\n  value: {{\n    string_value: "{value}"\n  }}\n}}')
    return "\n".join(out) + "\n"


_PARAM = re.compile(r'parameters\s*\{\s*key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}\s*\}')


def read_pbtxt_parameters(text: str) -> dict[str, str]:
    return dict(_PARAM.findall(text))
