"""Checksum manifests and the re-check of a converted directory (run it before swapping a model in).

Every output directory holds ``SHA256SUMS`` (``sha256sum -c`` format, every file but itself) and
``verification.json`` (what was checked at conversion time; its presence marks the directory complete).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.convert.errors import DamagedOutputError, problems_message
from pipelines.convert.ftformat import FTConfig, read_pbtxt_parameters, size_problems
from pipelines.convert.layout import TRITON_MODEL, weights_name
from pipelines.fsutil import write_bytes_atomic

MANIFEST = "SHA256SUMS"
VERIFICATION = "verification.json"
_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> dict[str, str]:
    """Hash every file under ``root`` into ``root/SHA256SUMS``; returns {relative path: sha256}."""
    hashes = {rel: sha256_file(root / rel) for rel in _files(root)}
    write_bytes_atomic(root / MANIFEST, "".join(f"{h}  {rel}\n" for rel, h in hashes.items()).encode())
    for path in (root / MANIFEST, root / VERIFICATION):
        if path.exists():
            path.chmod(0o644)  # atomic writes create files readable by their owner only
    return hashes


def read_manifest(root: Path) -> dict[str, str]:
    entries = {}
    for line in (root / MANIFEST).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        if len(digest) != 64 or not rel:
            raise ValueError(f"bad line in {MANIFEST}: {line[:80]!r}")
        entries[rel] = digest
    return entries


def manifest_problems(root: Path, checksums: bool = True) -> list[str]:
    """Files missing from, added to or (with ``checksums``) changed since the manifest."""
    try:
        listed = read_manifest(root)
    except FileNotFoundError:
        return [f"{MANIFEST} is missing (the conversion did not finish)"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{MANIFEST} is damaged ({exc})"]
    problems = []
    present = set(_files(root))
    for rel, digest in listed.items():
        if rel not in present:
            problems.append(f"{rel} is missing")
        elif checksums and sha256_file(root / rel) != digest:
            problems.append(f"{rel} does not match its checksum")
    added = sorted(present - set(listed))
    if added:
        problems.append(f"files not in {MANIFEST}: {', '.join(added[:5])}")
    return problems


def ft_weights_dir(root: Path) -> Path | None:
    """``root/fastertransformer/1/<N>-gpu`` of a FauxPilot model directory, if there is exactly one."""
    found = sorted((root / "fastertransformer" / "1").glob("*-gpu"))
    return found[0] if len(found) == 1 else None


def _pbtxt_problems(root: Path, cfg: FTConfig, weights: Path) -> list[str]:
    path = root / "fastertransformer" / "config.pbtxt"
    if not path.exists():
        return ["fastertransformer/config.pbtxt is missing"]
    params = read_pbtxt_parameters(path.read_text())
    want = {
        "tensor_para_size": cfg.tensor_para_size,
        "head_num": cfg.head_num,
        "size_per_head": cfg.size_per_head,
        "inter_size": cfg.inter_size,
        "vocab_size": cfg.vocab_size,
        "decoder_layers": cfg.num_layer,
        "rotary_embedding": cfg.rotary_embedding,
        "start_id": cfg.start_id,
        "end_id": cfg.end_id,
        "model_type": "GPT-J",
    }
    problems = [
        f"config.pbtxt says {key} {params.get(key)!r}, the weights need {value}"
        for key, value in want.items()
        if params.get(key) != str(value)
    ]
    suffix = f"{TRITON_MODEL}/1/{weights.name}"
    if not params.get("model_checkpoint_path", "").endswith(suffix):
        problems.append(f"config.pbtxt's model_checkpoint_path does not end with {suffix}")
    if weights.name != weights_name(cfg.tensor_para_size):
        problems.append(f"{weights.name} holds weights for tensor_para_size {cfg.tensor_para_size}")
    return problems


def verify_output(root: Path, checksums: bool = True, forward: bool = False) -> dict[str, Any]:
    """Re-check a converted directory (FauxPilot ``<name>-<N>gpu`` or the HF export); raise if anything is off.

    Checks the manifest (and every checksum unless ``checksums`` is False), the conversion's own
    verification record, and for FT files every byte size and the Triton config. With ``forward`` the FT
    files are run through the reference forward pass and its logits compared with those recorded.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DamagedOutputError(f"{root} does not exist. Convert the model first.")
    problems = manifest_problems(root, checksums)
    try:
        record = json.loads((root / VERIFICATION).read_text())
    except (FileNotFoundError, ValueError):
        record = {}
        problems.append(f"{VERIFICATION} is missing or damaged")
    if record and not record.get("passed"):
        problems.append(f"{VERIFICATION} records a failed verification")
    summary: dict[str, Any] = {"path": str(root), "checksums": checksums, "forward": False}
    if (root / "fastertransformer").is_dir():
        summary["kind"] = "fastertransformer"
        weights = ft_weights_dir(root)
        if weights is None:
            problems.append("fastertransformer/1/ must hold exactly one <N>-gpu folder")
        else:
            try:
                cfg = FTConfig.read(weights / "config.ini")
            except (ValueError, KeyError) as exc:
                problems.append(str(exc))
            else:
                problems += [f"{weights.relative_to(root)}/{p}" for p in size_problems(weights, cfg)]
                problems += _pbtxt_problems(root, cfg, weights)
                summary.update(tensor_para_size=cfg.tensor_para_size, vocab_size=cfg.vocab_size)
                if forward and not problems:
                    problems += _forward_problems(weights, record)
                    summary["forward"] = True
    else:
        summary["kind"] = "huggingface"
        if not (root / "config.json").exists():
            problems.append("config.json is missing")
    if problems:
        raise DamagedOutputError(f"{root}: {problems_message(problems)}. Convert the model again.")
    summary["files"] = len(read_manifest(root))
    return summary


def _forward_problems(weights: Path, record: dict[str, Any]) -> list[str]:
    import numpy as np

    from pipelines.convert.ftmodel import FTModel

    sample = record.get("sample") or {}
    if not sample.get("input_ids"):
        return [f"{VERIFICATION} holds no sample to compare with"]
    logits = FTModel.load(weights).logits(np.asarray(sample["input_ids"]))[:, -1]
    problems = []
    for row, (ids, values) in enumerate(zip(sample["top_ids"], sample["top_logits"], strict=True)):
        got = logits[row, ids]
        tol = sample["tolerance"]
        if not np.allclose(got, values, rtol=0, atol=tol):
            problems.append(
                f"sample {row}: logits differ from those recorded by up to {np.abs(got - values).max():.3g}"
            )
    return problems
