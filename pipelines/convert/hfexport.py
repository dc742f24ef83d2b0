"""The embedded engine's copy of the model: a Hugging Face CodeGen folder that transformers computes correctly.

It is the source folder, with its weights copied byte for byte when they can be; a model that needed its
vocabulary padded, or whose qkv_proj is laid out in 8 shards (CodeGen2 1B/3.7B, which transformers'
CodeGen would compute as 4 and so garble), gets a rewritten ``model.safetensors`` instead (same dtype).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from pipelines.convert.gptj import fp32_logits
from pipelines.convert.source import SAFETENSORS_DTYPES, CodeGenSource

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHTS = re.compile(r"^(model.*\.safetensors|pytorch_model.*\.bin)(\.index\.json)?$")  # all shards and indexes
_ST_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def write_safetensors(path: Path, tensors: dict[str, Any], dtype: str) -> None:
    """Stream ``tensors`` (any float dtype) to a safetensors file as ``dtype``, one tensor in memory at a time."""
    import torch

    target = getattr(torch, dtype)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = sorted(tensors)
    for name in names:
        size = tensors[name].numel() * target.itemsize
        header[name] = {
            "dtype": _ST_CODES[dtype],
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for name in names:
            data = tensors[name].detach().to(target).contiguous()
            handle.write(memoryview(data.view(torch.uint8).numpy()).cast("B"))


def export_hf(source: CodeGenSource, sd_mp4: dict[str, Any] | None, rows_out: int, out: Path) -> str:
    """Write the export into ``out``; ``sd_mp4`` is the padded, 4-shard state dict (None: copy the weights)."""
    out.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.path.iterdir()):
        if item.is_file() and not WEIGHTS.match(item.name) and not item.name.startswith("."):
            shutil.copyfile(item, out / item.name)
    if source.tokenizer_dir is not None and source.tokenizer_dir != source.path:
        for item in sorted(source.tokenizer_dir.iterdir()):
            if item.is_file() and (
                item.name.startswith(("tokenizer", "vocab", "merges", "special_tokens", "added_tokens"))
            ):
                shutil.copyfile(item, out / item.name)
    config = dict(source.config)
    if sd_mp4 is None:
        for path in source.files:
            shutil.copyfile(path, out / path.name)
        for index in (source.path / f"{w}.index.json" for w in WEIGHT_FILES):
            if index.exists():
                shutil.copyfile(index, out / index.name)
        how = "weights copied unchanged"
    else:
        write_safetensors(out / "model.safetensors", sd_mp4, source.dtype)
        config.update(vocab_size=rows_out, tie_word_embeddings=False)
        config.pop("mp_num", None)
        how = f"weights rewritten ({source.dtype}, {rows_out} vocabulary rows, qkv_proj in 4 shards)"
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return how


def export_logits(path: Path, input_ids: Any) -> Any:
    """Load the export the way the embedded engine will (``from_pretrained``) and return its float32 logits."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto").eval()
    return fp32_logits(model, input_ids)
