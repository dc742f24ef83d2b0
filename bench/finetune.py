"""Fine-tuning speed: tokenize-and-pack throughput, and training throughput (tokens/s).

    python bench/finetune.py [--repo PATH] [--steps 40]

On CPU: the tiny model, one plain process and two DeepSpeed ranks. On a GPU (when one is present): a
model of CodeGen-350M's shape (random weights, bf16, block 2048) with ZeRO-2, with and without the
recipe's CPU optimizer offload, and its model FLOPs utilisation. Prints one JSON object.
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
sys.path.insert(0, str(ROOT))

from pipelines.dataset.builder import build  # noqa: E402
from pipelines.dataset.config import DatasetConfig, RepoSpec  # noqa: E402
from pipelines.finetune.data import iter_records, pack  # noqa: E402

SHARED_TOKENIZER = ROOT.parent / "shared" / "data" / "codegen-tokenizer"
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def pack_throughput(dataset: Path, work: Path) -> dict:
    from transformers import AutoTokenizer

    if SHARED_TOKENIZER.exists():
        tokenizer, which = AutoTokenizer.from_pretrained(SHARED_TOKENIZER), "codegen (real vocabulary)"
    else:
        from pipelines.finetune.tiny import train_tokenizer

        tokenizer = train_tokenizer((r["text"] for r in iter_records(dataset, "train")), 2048)
        which = "tiny (trained on the data)"
    started = time.perf_counter()
    _, facts = pack(dataset, "train", tokenizer, 2048, cache_dir=work / "tokens")
    seconds = time.perf_counter() - started
    return {
        "tokenizer": which,
        "mb": round(facts["bytes"] / 1e6, 2),
        "tokens": facts["tokens"],
        "seconds": round(seconds, 2),
        "mb_per_s": round(facts["bytes"] / 1e6 / seconds, 2),
        "tokens_per_s": round(facts["tokens"] / seconds),
    }


def train_run(dataset: Path, run: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "agent.cli", "train", str(dataset), "-o", str(run), "--json", *extra]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        return {"error": out.stderr[-800:]}
    logs = [json.loads(x) for x in (run / "progress.jsonl").read_text().splitlines()]
    steps = [e for e in logs if e["event"] == "log" and e.get("tokens_per_s")]
    return {
        "tokens_per_s": steps[-1]["tokens_per_s"],
        "peak_memory_mb": max(e.get("memory_mb") or 0 for e in steps),
        "steps": steps[-1]["step"],
        "wall_s_with_startup": round(wall, 1),
    }


def gpu_runs(dataset: Path, work: Path, steps: int) -> dict:
    import torch
    from transformers import AutoTokenizer, CodeGenConfig, CodeGenForCausalLM

    if not torch.cuda.is_available() or not SHARED_TOKENIZER.exists():
        return {"skipped": "no CUDA GPU (or no real tokenizer) on this machine"}
    config = CodeGenConfig(
        vocab_size=51200, n_positions=2048, n_ctx=2048, n_embd=1024, n_layer=20, n_head=16, rotary_dim=32,
        bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False,
    )  # fmt: skip
    base = work / "codegen-350m-shape"
    model = CodeGenForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base)
    AutoTokenizer.from_pretrained(SHARED_TOKENIZER).save_pretrained(base)
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    common = ["--base-model", str(base), "--precision", "bf16", "--block-size", "2048",
              "--micro-batch-size", "4", "--grad-accum", "1", "--max-steps", str(steps),
              "--logging-steps", "5", "--save-steps", "100000"]  # fmt: skip
    results = {"device": name, "params": params}
    for label, extra in (("zero2_offload_recipe", ["--offload-optimizer"]), ("zero2", ["--no-offload-optimizer"])):
        run = train_run(dataset, work / f"gpu-{label}", *common, *extra)
        if peak and "tokens_per_s" in run:
            run["mfu"] = round(6 * params * run["tokens_per_s"] / (peak * 1e12), 3)
        results[label] = run
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="git repository to build the dataset from")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repopilot-bench-ft-") as tmp:
        work = Path(tmp)
        dataset = work / "dataset"
        build(dataset, [RepoSpec("bench", str(args.repo))], DatasetConfig(val_fraction=0.05))
        tiny = ["--base-model", "tiny", "--block-size", "256", "--micro-batch-size", "8", "--grad-accum", "1",
                "--max-steps", str(args.steps), "--logging-steps", "5", "--save-steps", "100000"]  # fmt: skip
        result = {
            "bench": "finetune",
            "cpus": os.cpu_count(),
            "pack": pack_throughput(dataset, work),
            "tiny_cpu_plain": train_run(dataset, work / "plain", *tiny, "--launcher", "none"),
            "tiny_cpu_deepspeed_2_ranks": train_run(
                dataset, work / "ds2", *tiny, "--launcher", "deepspeed", "--num-gpus", "2"
            ),
            "gpu": gpu_runs(dataset, work, args.steps),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
