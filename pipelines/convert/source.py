"""Read a Hugging Face CodeGen model directory: config, weights (safetensors or .bin, any float dtype), tokenizer.

``inspect_model`` checks everything it can without loading the weights and reports every problem at once;
``CodeGenSource.load`` then reads the tensors one at a time as float32 (no memory map is held open, so a
model never costs more than its float32 size in memory).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.convert.errors import ModelInputError, problems_message

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
PREFIXES = ("base_model.model.", "module.", "_orig_mod.")
IGNORED = re.compile(r"(\.attn\.(causal_mask|masked_bias|bias)|rotary_emb\.embed_positions)$")
LAYER_KEYS = {
    "ln_1.weight": ("H",),
    "ln_1.bias": ("H",),
    "attn.qkv_proj.weight": ("3H", "H"),
    "attn.out_proj.weight": ("H", "H"),
    "mlp.fc_in.weight": ("I", "H"),
    "mlp.fc_in.bias": ("I",),
    "mlp.fc_out.weight": ("H", "I"),
    "mlp.fc_out.bias": ("H",),
}
TANH_GELU = {"gelu_new", "gelu_fast", "gelu_pytorch_tanh"}
# CodeGen2 1B and 3.7B were trained with 8 model-parallel shards; every other CodeGen with 4.
MP8_NAMES = re.compile(r"codegen2-(1B|3_7B)", re.IGNORECASE)


@dataclass(frozen=True)
class Dims:
    """The shape of a CodeGen model, as its config and weights say."""

    n_layer: int
    n_head: int
    n_embd: int
    inter: int
    rotary_dim: int
    n_positions: int
    eps: float
    vocab_rows: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TokenizerInfo:
    size: int | None
    bos_id: int | None
    eos_id: int | None
    source: str
    encode: Callable[[str], list[int]] | None = field(default=None, compare=False, repr=False)


@dataclass
class CodeGenSource:
    """A checked CodeGen directory, ready to load."""

    path: Path
    config: dict[str, Any]
    dims: Dims
    fmt: str
    dtype: str
    files: list[Path]
    names: dict[str, tuple[Path, str]]  # canonical name -> (file, name inside the file)
    tokenizer: TokenizerInfo
    tokenizer_dir: Path | None
    mp_num: int
    mp_reason: str
    tied: bool
    warnings: list[str] = field(default_factory=list)

    def load(self) -> dict[str, Any]:
        """Every tensor by canonical name as torch tensors in their stored dtype (the checks compute in float32).

        ``lm_head.weight`` is filled in when tied to the embedding, ``lm_head.bias`` with zeros when absent.
        """
        import torch

        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for canon, (path, raw) in self.names.items():
            by_file.setdefault(path, []).append((canon, raw))
        for path, items in by_file.items():
            if self.fmt == "safetensors":
                out.update(_read_safetensors(path, {raw: canon for canon, raw in items}))
            else:
                state = torch_load(path)
                for canon, raw in items:
                    out[canon] = state[raw].clone()
                del state
        if self.tied:
            out["lm_head.weight"] = out["transformer.wte.weight"]
        if "lm_head.bias" not in out:
            out["lm_head.bias"] = torch.zeros(self.dims.vocab_rows, dtype=out["transformer.wte.weight"].dtype)
        return out


def torch_load(path: Path) -> dict[str, Any]:
    """A pytorch_model.bin's tensors (weights only), memory-mapped unless saved in the legacy format."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files from torch < 1.6 cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelInputError(f"{path} is not a safetensors file (too short). Save the model again.")
        (size,) = struct.unpack("<Q", head)
        try:
            header = json.loads(handle.read(size))
        except (ValueError, UnicodeDecodeError):
            raise ModelInputError(f"{path} has a damaged safetensors header. Save the model again.") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def _read_safetensors(path: Path, wanted: dict[str, str]):
    """Yield (canonical name, tensor) for the wanted raw names, reading each tensor's bytes (no mmap)."""
    import torch

    header, base = _read_header(path)
    with open(path, "rb") as handle:
        for raw, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if raw not in wanted:
                continue
            start, end = info["data_offsets"]
            buf = torch.empty(end - start, dtype=torch.uint8)
            handle.seek(base + start)
            if handle.readinto(memoryview(buf.numpy())) != end - start:
                raise ModelInputError(f"{path} is truncated (tensor {raw}). Save the model again.")
            dtype = getattr(torch, SAFETENSORS_DTYPES[info["dtype"]])
            yield wanted[raw], buf.view(dtype).reshape(info["shape"])


def _weight_files(path: Path) -> tuple[str, list[Path]]:
    for fmt, single, index in (
        ("safetensors", "model.safetensors", "model.safetensors.index.json"),
        ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (path / index).exists():
            weight_map = json.loads((path / index).read_text())["weight_map"]
            return fmt, [path / name for name in sorted(set(weight_map.values()))]
        if (path / single).exists():
            return fmt, [path / single]
    raise ModelInputError(
        f"{path} holds no model weights (model.safetensors or pytorch_model.bin). "
        "Give the model/ folder of a `repopilot train` run or a Hugging Face CodeGen folder."
    )


def _tensor_shapes(fmt: str, files: list[Path]) -> tuple[dict[str, tuple[Path, str, tuple[int, ...]]], dict[str, int]]:
    """Canonical name -> (file, raw name, shape), and the number of elements stored in each dtype."""
    shapes: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    dtypes: dict[str, int] = {}
    for path in files:
        if fmt == "safetensors":
            header, _ = _read_header(path)
            items = [
                (raw, tuple(i["shape"]), SAFETENSORS_DTYPES.get(i["dtype"], i["dtype"])) for raw, i in header.items()
            ]
        else:
            try:
                state = torch_load(path)
            except Exception as exc:
                raise ModelInputError(f"{path} cannot be read ({exc}). Save the model again.") from None
            items = [(raw, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for raw, t in state.items()]
            del state
        for raw, shape, dtype in items:
            canon = raw
            for prefix in PREFIXES:
                canon = canon.removeprefix(prefix)
            if IGNORED.search(canon):
                continue
            shapes[canon] = (path, raw, shape)
            dtypes[dtype] = dtypes.get(dtype, 0) + math.prod(shape)
    return shapes, dtypes


def read_tokenizer(path: Path | None, config: dict[str, Any]) -> tuple[TokenizerInfo, list[str]]:
    """Size and start/end ids of the tokenizer in ``path``, or the config's ids (with a warning) without one."""
    warnings: list[str] = []
    if path is not None and any((path / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path))
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            info = TokenizerInfo(len(tok), bos, tok.eos_token_id, f"tokenizer in {path}", lambda text: tok.encode(text))
            return info, warnings
        except Exception as exc:  # a broken tokenizer is reported, then the config's ids are used
            warnings.append(f"the tokenizer in {path} could not be loaded ({type(exc).__name__}: {exc})")
    eos = config.get("eos_token_id")
    bos = config.get("bos_token_id", eos)
    warnings.append(
        "no tokenizer found beside the model: start/end ids come from config.json; "
        "pass --tokenizer DIR to take them from the tokenizer the server will use"
    )
    return TokenizerInfo(
        None, bos if isinstance(bos, int) else None, eos if isinstance(eos, int) else None, "config.json"
    ), warnings


def choose_mp_num(config: dict[str, Any], path: Path, requested: int | None) -> tuple[int, str]:
    """The qkv_proj shard count: asked for, written in the config, or known from the model's name."""
    if requested is not None:
        return requested, "given with --mp-num"
    if isinstance(config.get("mp_num"), int):
        return config["mp_num"], "mp_num in config.json"
    name = f"{config.get('_name_or_path', '')} {path.name}"
    if MP8_NAMES.search(name):
        return 8, "CodeGen2 1B/3.7B by name (trained with 8 shards)"
    return 4, "CodeGen default (4 shards, as in CodeGen-1 and transformers)"


def _codegen_config(path: Path) -> dict[str, Any]:
    """config.json of a CodeGen model folder, or a clear error for anything else."""
    if not path.is_dir():
        raise ModelInputError(f"{path} is not a directory. Give a Hugging Face CodeGen model folder.")
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ModelInputError(f"{path} has no config.json: it is not a Hugging Face model folder.") from None
    except ValueError:
        raise ModelInputError(f"{path}/config.json is not valid JSON. Save the model again.") from None
    model_type = config.get("model_type")
    if model_type != "codegen":
        raise ModelInputError(
            f"{path} holds a {model_type or 'model of unknown type'} model "
            f"({', '.join(config.get('architectures') or []) or 'no architecture'}), not CodeGen. "
            "Only CodeGen models (Salesforce codegen-*, CodeGen2, or a `repopilot train` result) can be "
            "converted for FauxPilot."
        )
    return config


def _expected_shapes(n_layer: int, tied: bool, lm_bias: bool) -> dict[str, tuple[str, ...]]:
    """Every weight a CodeGen checkpoint must hold, with its shape in symbols (H, 3H, I, V)."""
    expected = {
        "transformer.wte.weight": ("V", "H"),
        "transformer.ln_f.weight": ("H",),
        "transformer.ln_f.bias": ("H",),
    }
    expected.update({f"transformer.h.{i}.{k}": v for i in range(n_layer) for k, v in LAYER_KEYS.items()})
    if not tied:
        expected["lm_head.weight"] = ("V", "H")
    if lm_bias:
        expected["lm_head.bias"] = ("V",)
    return expected


def inspect_model(path: Path, tokenizer_dir: Path | None = None, mp_num: int | None = None) -> CodeGenSource:
    """Check that ``path`` is a complete CodeGen model this converter can handle; raise with every problem."""
    path = Path(path).expanduser().resolve()
    config = _codegen_config(path)
    fmt, files = _weight_files(path)
    shapes, dtypes = _tensor_shapes(fmt, files)
    problems: list[str] = []
    lora = sorted(k for k in shapes if "lora_" in k)
    if lora:
        raise ModelInputError(
            f"{path} holds an unmerged LoRA adapter ({lora[0]}, ...). Merge it into the base model first "
            "(`repopilot train --lora` saves a merged model)."
        )
    n_embd, n_head, n_layer = (int(config.get(k, 0) or 0) for k in ("n_embd", "n_head", "n_layer"))
    wte = shapes.get("transformer.wte.weight")
    fc_in = shapes.get("transformer.h.0.mlp.fc_in.weight")
    if not (n_embd and n_head and n_layer) or wte is None or fc_in is None:
        raise ModelInputError(f"{path} is missing n_embd/n_head/n_layer in config.json or its embedding weights.")
    rows, inter = wte[2][0], fc_in[2][0]
    tied = "lm_head.weight" not in shapes
    expected = _expected_shapes(n_layer, tied, "lm_head.bias" in shapes)
    sizes = {"H": n_embd, "3H": 3 * n_embd, "I": inter, "V": rows}
    for name, dims in expected.items():
        want = tuple(sizes[d] for d in dims)
        if name not in shapes:
            problems.append(f"weight {name} is missing")
        elif shapes[name][2] != want:
            problems.append(f"weight {name} has shape {list(shapes[name][2])}, expected {list(want)}")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        problems.append(f"unexpected weights {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    if n_embd % n_head:
        problems.append(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    activation = config.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        problems.append(f"activation {activation!r}: FasterTransformer's GPT-J computes the tanh GeLU (gelu_new) only")
    mp, reason = choose_mp_num(config, path, mp_num)
    if mp <= 0 or n_embd % mp:
        problems.append(f"mp_num {mp} does not divide n_embd {n_embd}")
    unknown = set(dtypes) - set(SAFETENSORS_DTYPES.values())
    if unknown:
        problems.append(f"weights of type {', '.join(sorted(unknown))} (expected float32, float16 or bfloat16)")
    head_dim = n_embd // n_head if n_head else 0
    rotary = int(config.get("rotary_dim") or head_dim)
    if rotary % 2 or rotary > head_dim:
        problems.append(f"rotary_dim {rotary} must be even and at most the head size {head_dim}")
    if problems:
        raise ModelInputError(f"{path}: " + problems_message(problems))
    dims = Dims(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        inter=inter,
        rotary_dim=rotary,
        n_positions=int(config.get("n_positions") or config.get("n_ctx") or 2048),
        eps=float(config.get("layer_norm_epsilon", 1e-5)),
        vocab_rows=rows,
    )
    tok_dir = Path(tokenizer_dir).expanduser().resolve() if tokenizer_dir else path
    tokenizer, warnings = read_tokenizer(tok_dir, config)
    return CodeGenSource(
        path=path,
        config=config,
        dims=dims,
        fmt=fmt,
        dtype=max(dtypes, key=lambda d: dtypes[d]) if dtypes else "float32",
        files=files,
        names={k: (v[0], v[1]) for k, v in shapes.items()},
        tokenizer=tokenizer,
        tokenizer_dir=tok_dir if tokenizer.size is not None else None,
        mp_num=mp,
        mp_reason=reason,
        tied=tied,
        warnings=warnings,
    )
