"""``convert``: CodeGen folder -> FauxPilot's FasterTransformer model + the embedded engine's copy, verified.

The outputs are written to hidden folders beside their final place in the models root, checked (logits,
byte sizes, checksums), and only then renamed into place; a run that fails or is killed leaves the
previous outputs untouched (the next run removes its leftovers).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.convert import gptj, hfexport
from pipelines.convert.checks import compare_logits, probe_layout, sample_inputs, sample_record
from pipelines.convert.errors import ModelInputError, VerificationError, problems_message
from pipelines.convert.ftformat import (
    TENSOR_PARALLEL,
    FTConfig,
    expected_files,
    ft_arrays,
    render_pbtxt,
    size_problems,
    write_array,
)
from pipelines.convert.layout import ft_folder, hf_folder, weights_path
from pipelines.convert.source import CodeGenSource, inspect_model
from pipelines.convert.staging import fsync_tree, locked, new_staging, place
from pipelines.convert.verify import VERIFICATION, sha256_file, verify_output, write_manifest
from pipelines.fsutil import write_json_atomic
from pipelines.progress import Progress

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MOUNTED = ("model-dir", "models-root")
FORMAT_VERSION = 1


@dataclass
class ConvertOptions:
    """What to convert and where; see ``repopilot convert --help``."""

    model_dir: Path
    models_root: Path
    gpus: int
    name: str | None = None
    mount: str = "/model"
    # What the Triton container mounts at ``mount``: this model's <name>-<N>gpu folder (FauxPilot's and the
    # stack's MODEL_DIR, the default) or the whole models root.
    mounted: str = "model-dir"
    tokenizer: Path | None = None
    mp_num: int | None = None
    half: bool = True  # FT computes in fp16 (is_half); the files are float32 either way
    export_hf: bool = True
    force: bool = False

    def resolved_name(self) -> str:
        if self.name:
            return self.name
        path = Path(self.model_dir).expanduser().resolve()
        base = path.parent.name if path.name == "model" and path.parent.name else path.name
        return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip(".-") or "model"

    def checkpoint_path(self) -> str:
        """model_checkpoint_path as the Triton container sees it."""
        name, n = self.resolved_name(), self.gpus
        inner = weights_path(n)
        base = self.mount.rstrip("/") or ""
        return f"{base}/{inner}" if self.mounted == "model-dir" else f"{base}/{ft_folder(Path(), name, n)}/{inner}"


def plan(opts: ConvertOptions) -> tuple[CodeGenSource, int, list[str]]:
    """Check the options and the model; returns (source, vocabulary rows to write, warnings)."""
    problems = []
    if opts.gpus not in TENSOR_PARALLEL:
        problems.append(f"--gpus {opts.gpus}: FasterTransformer tensor parallelism must be 1, 2, 4 or 8")
    if not NAME.match(opts.resolved_name()):
        problems.append(f"--name {opts.resolved_name()!r}: use letters, digits, '.', '_' and '-' only")
    if opts.mounted not in MOUNTED:
        problems.append(f"--mounted must be one of {', '.join(MOUNTED)}")
    if not opts.mount.startswith("/"):
        problems.append(f"--mount {opts.mount!r} must be an absolute path inside the container")
    if opts.tokenizer is not None and not Path(opts.tokenizer).expanduser().is_dir():
        problems.append(f"--tokenizer {opts.tokenizer}: no such folder")
    if opts.mp_num not in (None, 1, 2, 4, 8, 16):
        problems.append(f"--mp-num {opts.mp_num}: CodeGen checkpoints use 4 or 8 shards")
    if problems:
        raise ModelInputError(problems_message(problems))
    source = inspect_model(opts.model_dir, opts.tokenizer, opts.mp_num)
    d, n, tok = source.dims, opts.gpus, source.tokenizer
    rows_out, pad_warning = gptj.padded_vocab(d.vocab_rows, int(source.config.get("vocab_size") or 0))
    if d.n_head % n:
        problems.append(
            f"its {d.n_head} attention heads cannot be split over {n} GPUs; choose --gpus dividing {d.n_head}"
        )
    if d.inter % n:
        problems.append(f"its MLP width {d.inter} cannot be split over {n} GPUs")
    if tok.size is not None and tok.size > rows_out:
        problems.append(f"its tokenizer has {tok.size} entries but the embedding only {rows_out} rows")
    for what, value in (("start", tok.bos_id), ("end", tok.eos_id)):
        if value is None or not 0 <= value < min(rows_out, tok.size or rows_out):
            problems.append(f"no valid {what} id ({value}); pass --tokenizer DIR with the model's tokenizer")
    if problems:
        raise ModelInputError(f"{source.path}: " + problems_message(problems))
    warnings = list(source.warnings) + ([pad_warning] if pad_warning else [])
    return source, rows_out, warnings


def _reusable_export(path: Path, fingerprint: dict[str, str]) -> bool:
    try:
        record = json.loads((path / VERIFICATION).read_text())
        verify_output(path)
    except Exception:
        return False
    return record.get("source", {}).get("fingerprint") == fingerprint


def convert(opts: ConvertOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Convert, verify and put in place; returns what was done and verified (also in verification.json)."""
    started = time.monotonic()
    progress = progress or Progress("none")
    source, rows_out, warnings = plan(opts)
    name, n = opts.resolved_name(), opts.gpus
    root = Path(opts.models_root).expanduser().resolve()
    ft_final, hf_final = ft_folder(root, name, n), hf_folder(root, name)
    if ft_final.exists() and not opts.force:
        raise ModelInputError(f"{ft_final} already exists. Pass --force to replace it, or another --name.")
    fingerprint = {p.name: sha256_file(p) for p in [source.path / "config.json", *source.files]}
    reuse_hf = opts.export_hf and _reusable_export(hf_final, fingerprint)
    if opts.export_hf and not reuse_hf and hf_final.exists() and not opts.force:
        raise ModelInputError(f"{hf_final} holds another model. Pass --force to replace it, or another --name.")
    with locked(root, name):
        staging = new_staging(root, name)
        try:
            import torch

            with torch.no_grad():
                result = _convert_into(opts, source, rows_out, warnings, staging, fingerprint, reuse_hf, progress)
            if result["hf_export"]["staged"]:
                place(staging / "hf", hf_final, name)
            place(staging / "ft", ft_final, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    result["hf_export"].pop("staged")
    result.update(output=str(ft_final), seconds=round(time.monotonic() - started, 2))
    if opts.export_hf:
        result["hf_export"]["path"] = str(hf_final)
    return result


class _Float32(dict):
    """A state dict whose items are handed out as float32 NumPy arrays, one at a time (for the FT writer).

    The layers' matrices, which FT stores transposed, come in column-major order (transposed by torch,
    several times faster than NumPy), so that the writer's ``.T`` is already contiguous.
    """

    def __getitem__(self, name: str) -> Any:
        tensor = super().__getitem__(name).float()
        if tensor.dim() == 2 and name.startswith("transformer.h."):
            tensor = tensor.t().contiguous().t()
        return tensor.numpy()


def _reference_logits(source: CodeGenSource, sd: dict[str, Any], ids: Any) -> tuple[Any, str]:
    """The source model's float32 logits: transformers' CodeGen for 4 shards, the written-out forward otherwise."""
    if source.mp_num == 4:
        return gptj.fp32_logits(gptj.hf_model("codegen", sd, source.dims), ids), "transformers CodeGenForCausalLM"
    reference = gptj.reference_codegen_logits(sd, source.dims, ids, source.mp_num)
    return reference, f"reference CodeGen forward with mp_num={source.mp_num}"


def _choose_layout(source: CodeGenSource, sd: dict[str, Any], ids: Any, is_code: bool) -> tuple[Any, str, dict]:
    """Reference logits, after checking (when a code sample exists) that the qkv layout is the model's."""
    reference, ref_name = _reference_logits(source, sd, ids)
    layout = probe_layout(source, sd, ids, reference) if is_code else {"probe": "skipped: no tokenizer"}
    if layout.get("conclusive") and layout["best"] != source.mp_num:
        if source.mp_reason == "given with --mp-num":
            raise ModelInputError(
                f"--mp-num {source.mp_num} would garble this model: its weights predict code far better with "
                f"mp_num {layout['best']} (losses {layout['losses']}). Pass --mp-num {layout['best']} or leave it out."
            )
        source.mp_num, source.mp_reason = layout["best"], "the weights predict code far better with this layout"
        reference, ref_name = _reference_logits(source, sd, ids)
    return reference, ref_name, {"mp_num": source.mp_num, "reason": source.mp_reason, **layout}


class _Laps:
    """Seconds spent in each phase, for the result (and the bench)."""

    def __init__(self) -> None:
        self.last, self.seconds = time.monotonic(), {}

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self.last, 2)
        self.last = now


def _release_memory() -> None:
    """Hand freed tensors back to the OS: glibc keeps freed heap memory, which would double the peak."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _ft_config(opts: ConvertOptions, source: CodeGenSource, rows_out: int) -> FTConfig:
    dims, tok = source.dims, source.tokenizer
    return FTConfig(
        model_name=opts.resolved_name(),
        head_num=dims.n_head,
        size_per_head=dims.head_dim,
        inter_size=dims.inter,
        num_layer=dims.n_layer,
        vocab_size=rows_out,
        rotary_embedding=dims.rotary_dim,
        start_id=int(tok.bos_id or 0),
        end_id=int(tok.eos_id or 0),
        tensor_para_size=opts.gpus,
        max_pos_seq_len=dims.n_positions,
        layernorm_eps=dims.eps,
    )


def _write_ft(
    opts: ConvertOptions, source: CodeGenSource, cfg: FTConfig, gptj_sd: dict[str, Any], out: Path, progress: Progress
) -> Path:
    """FauxPilot's layout under ``out``: fastertransformer/config.pbtxt and 1/<N>-gpu/{config.ini, *.bin}."""
    weights = out / weights_path(cfg.tensor_para_size)
    weights.mkdir(parents=True)
    progress.start("write FasterTransformer files", len(expected_files(cfg)), unit="files")
    for file_name, array in ft_arrays(_Float32(gptj_sd), cfg):
        progress.advance(1, write_array(weights / file_name, array))
    progress.finish()
    extra = {
        "repopilot": {
            "format_version": FORMAT_VERSION,
            "source": source.path,
            "source_vocab_rows": source.dims.vocab_rows,
            "tokenizer_size": source.tokenizer.size if source.tokenizer.size is not None else "unknown",
            "codegen_mp_num": source.mp_num,
            "pad_bias": gptj.PAD_BIAS,
        }
    }
    (weights / "config.ini").write_text(cfg.to_ini(extra))
    pbtxt = render_pbtxt(cfg, opts.checkpoint_path(), opts.half)
    (out / "fastertransformer" / "config.pbtxt").write_text(pbtxt)
    return weights


def _source_facts(source: CodeGenSource, fingerprint: dict[str, str]) -> dict[str, Any]:
    return {
        "path": str(source.path),
        "format": source.fmt,
        "dtype": source.dtype,
        "fingerprint": fingerprint,
        "vocab_rows": source.dims.vocab_rows,
        "config_vocab_size": source.config.get("vocab_size"),
    }


def _settings(opts: ConvertOptions, cfg: FTConfig, tok: Any) -> dict[str, Any]:
    return {
        "name": cfg.model_name,
        "tensor_para_size": cfg.tensor_para_size,
        "vocab_size": cfg.vocab_size,
        "inter_size": cfg.inter_size,
        "start_id": cfg.start_id,
        "end_id": cfg.end_id,
        "tokenizer": tok.source,
        "tokenizer_size": tok.size,
        "model_checkpoint_path": opts.checkpoint_path(),
        "is_half": opts.half,
    }


def _export_hf(
    opts: ConvertOptions, source: CodeGenSource, padded: dict[str, Any], rows_out: int, out: Path, reuse: bool
) -> dict[str, Any]:
    """The Hugging Face export for the embedded engine, staged in ``out`` (unless one of the same weights stays)."""
    hf: dict[str, Any] = {"staged": False}
    if not opts.export_hf:
        return hf
    if reuse:
        return {**hf, "how": "kept: an export of the same weights is already in place and intact"}
    rewrite = rows_out != source.dims.vocab_rows or source.mp_num != 4
    sd_mp4 = gptj.to_codegen_mp4(padded, source.mp_num) if rewrite else None
    return {"how": hfexport.export_hf(source, sd_mp4, rows_out, out), "staged": True}


def _raise_if_failed(checks: dict[str, Any], hf: dict[str, Any]) -> None:
    failed = [k for k in ("gptj_vs_codegen", "ft_files_vs_codegen") if not checks[k]["ok"]]
    failed += ["byte_sizes"] if checks["byte_sizes"]["problems"] else []
    failed += ["hf_export"] if hf.get("check") and not hf["check"]["ok"] else []
    if failed:
        details = {k: checks.get(k, hf.get("check")) for k in failed}
        raise VerificationError(
            f"{', '.join(failed)} failed ({json.dumps(details, default=str)}); nothing was put in place. "
            "This is a bug in repopilot's converter: please report it with this message."
        )


def _seal(staging: Path, summary: dict[str, Any], hf: dict[str, Any]) -> int:
    """Write the verification summaries and checksums of the staged outputs, re-verify them, make them durable;
    the number of files checksummed in the FT folder."""
    write_json_atomic(staging / "ft" / VERIFICATION, summary)
    files = len(write_manifest(staging / "ft"))
    if hf["staged"]:
        write_json_atomic(staging / "hf" / VERIFICATION, {**summary, "checks": {"logits": hf["check"]}, "sample": None})
        write_manifest(staging / "hf")
        verify_output(staging / "hf", checksums=False)
    verify_output(staging / "ft", checksums=False)
    fsync_tree(staging)
    return files


def _convert_into(
    opts: ConvertOptions,
    source: CodeGenSource,
    rows_out: int,
    warnings: list[str],
    staging: Path,
    fingerprint: dict[str, str],
    reuse_hf: bool,
    progress: Progress,
) -> dict[str, Any]:
    dims, tok = source.dims, source.tokenizer
    progress.event("reading", model=str(source.path), dtype=source.dtype, format=source.fmt)
    laps = _Laps()
    sd = source.load()
    laps("read")
    checks: dict[str, Any] = {}

    ids, is_code = sample_inputs(dims, tok)
    reference, ref_name, checks["qkv_layout"] = _choose_layout(source, sd, ids, is_code)
    progress.event("reference logits", source=ref_name, mp_num=source.mp_num)
    laps("reference")

    padded = gptj.pad_vocab(sd, rows_out)
    gptj_sd = gptj.to_gptj(padded, dims, source.mp_num)
    checks["gptj_vs_codegen"] = compare_logits(reference, gptj.fp32_logits(gptj.hf_model("gptj", gptj_sd, dims), ids))
    progress.event("GPT-J logits", **checks["gptj_vs_codegen"])
    laps("gptj_check")

    cfg = _ft_config(opts, source, rows_out)
    weights = _write_ft(opts, source, cfg, gptj_sd, staging / "ft", progress)
    checks["byte_sizes"] = {"files": len(list(weights.glob("*.bin"))), "problems": size_problems(weights, cfg)}
    laps("write_ft")

    hf = _export_hf(opts, source, padded, rows_out, staging / "hf", reuse_hf)
    del sd, padded, gptj_sd  # before the read-back, so that only one copy of the model is ever in memory
    _release_memory()
    laps("hf_export")

    from pipelines.convert.ftmodel import FTModel

    checks["ft_files_vs_codegen"] = compare_logits(reference, FTModel.load(weights).logits(ids))
    progress.event("FT files logits", **checks["ft_files_vs_codegen"])
    _release_memory()
    laps("ft_read_back")
    if hf["staged"]:
        hf["check"] = compare_logits(reference, hfexport.export_logits(staging / "hf", ids))
        progress.event("embedded export logits", **hf["check"])
        laps("hf_export_check")

    _raise_if_failed(checks, hf)
    summary = {
        "passed": True,
        "format_version": FORMAT_VERSION,
        "source": _source_facts(source, fingerprint),
        "settings": _settings(opts, cfg, tok),
        "reference": ref_name,
        "checks": checks,
        "sample": sample_record(ids, reference).to_json(),
        "warnings": warnings,
    }
    checks["checksums"] = {"files": _seal(staging, summary, hf)}
    laps("checksums_and_fsync")
    return {
        "status": "converted",
        "name": cfg.model_name,
        "gpus": cfg.tensor_para_size,
        "mp_num": source.mp_num,
        "vocab_size": rows_out,
        "source_vocab_rows": dims.vocab_rows,
        "tokenizer_size": tok.size,
        "start_id": cfg.start_id,
        "end_id": cfg.end_id,
        "model_checkpoint_path": opts.checkpoint_path(),
        "checks": checks,
        "hf_export": hf,
        "warnings": warnings,
        "timings_s": laps.seconds,
    }
