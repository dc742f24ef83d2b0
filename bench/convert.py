"""Conversion speed and memory: a model of CodeGen-350M-multi's shape (random weights) to FT for N GPUs.

    python bench/convert.py [--gpus 1 2] [--dtype float16|float32|bfloat16]

The model is saved as the real one is (float16 safetensors, 51200-row embedding) with the real CodeGen
tokenizer when ../shared/data/codegen-tokenizer exists. Each conversion runs as `repopilot convert` in its
own process; its wall time and peak resident memory are measured, then `--verify` (checksums) is timed.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = ROOT.parent / "shared" / "data" / "codegen-tokenizer"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def make_model(path: Path, dtype: str) -> dict:
    import torch
    from transformers import AutoTokenizer, CodeGenConfig, CodeGenForCausalLM

    config = CodeGenConfig(
        vocab_size=51200, n_positions=2048, n_ctx=2048, n_embd=1024, n_layer=20, n_head=16, rotary_dim=32,
        bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CodeGenForCausalLM(config).to(getattr(torch, dtype))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    if SHARED_TOKENIZER.exists():
        AutoTokenizer.from_pretrained(SHARED_TOKENIZER).save_pretrained(path)
    del model
    return {"params": params, "dtype": dtype, "size_mb": round((path / "model.safetensors").stat().st_size / 1e6, 1)}


def timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` from the repository root; returns (result, wall seconds)."""
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repopilot-bench-convert-") as tmp:
        work = Path(tmp)
        model = work / "codegen-350M-shape"
        facts = make_model(model, args.dtype)
        fp32_mb = facts["params"] * 4 / 1e6
        runs = {}
        for n in args.gpus:
            # A fresh interpreter per run, so its peak RSS is this conversion's alone.
            cmd = [sys.executable, "-c", _RUNNER, str(model), str(n), str(work / "models")]
            out, wall = timed(cmd)
            if out.returncode != 0:
                runs[f"gpus_{n}"] = {"error": out.stderr[-1500:]}
                continue
            report = json.loads(out.stdout)
            result, peak_mb = report["result"], report["peak_rss_mb"]
            checks = result["checks"]
            verify, verify_wall = timed(
                [sys.executable, "-m", "pipelines.convert", "--verify", result["output"], "--json"]
            )
            runs[f"gpus_{n}"] = {
                "seconds": round(wall, 1),
                "seconds_in_convert": result["seconds"],
                "phases_s": result["timings_s"],
                "peak_rss_mb": round(peak_mb),
                "peak_rss_over_model_size": round(peak_mb / facts["size_mb"], 2),
                "peak_rss_over_fp32_size": round(peak_mb / fp32_mb, 2),
                "ft_files": checks["byte_sizes"]["files"],
                "gptj_max_logit_diff": checks["gptj_vs_codegen"]["max_abs_diff"],
                "ft_max_logit_diff": checks["ft_files_vs_codegen"]["max_abs_diff"],
                "hf_export": result["hf_export"].get("how"),
                "verify_checksums_seconds": round(verify_wall, 1) if verify.returncode == 0 else verify.stderr[-300:],
            }
        print(json.dumps({"bench": "convert", "cpus": os.cpu_count(), "model": facts, "runs": runs}, indent=2))


# Runs one conversion in-process and reports its own peak RSS (ru_maxrss of this process only).
_RUNNER = """
import json, resource, sys
from pathlib import Path
from pipelines.convert.run import ConvertOptions, convert
model, n, root = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
result = convert(ConvertOptions(model_dir=Path(model), models_root=root, gpus=n, name="bench", force=True))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"result": result, "peak_rss_mb": peak}, default=str))
"""


if __name__ == "__main__":
    main()
