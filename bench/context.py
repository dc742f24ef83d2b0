"""Repository context at the speed of typing: index a large real repository, then time the block for typing.

    python bench/context.py --repo PATH [--work DIR] [--files 60] [--keystrokes 12] [--out FILE]

1. ``repopilot dataset build`` of the repository (kept in ``WORK/dataset`` for later runs);
2. the index the completion server builds from it (``pipelines/context``): seconds, files, windows, memory;
3. typing in VS Code (``typing_trace``: the FauxPilot extension's 150-line window, a request every 3 characters)
   at a seeded random line of ``--files`` random code files, ``--keystrokes`` requests each; for every request
   the provider's block is built as the server builds it (the real CodeGen tokenizer counts tokens, budget 256
   of a 2,048-token window, 64 new tokens): its time (the goal: p95 < 20 ms), whether it was kept from the
   previous keystroke (prefix reuse) and its size;
4. a one-file commit and ``repopilot dataset update``: the seconds until the server's index has it.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import finish  # noqa: E402
from typing_trace import extension_prompt  # noqa: E402

from pipelines.context.provider import ContextProvider, ContextSettings  # noqa: E402
from pipelines.context.source import DatasetIndex  # noqa: E402

TOKENIZER = ROOT.parent / "shared" / "data" / "codegen-tokenizer"
CODE = {"java", "kotlin", "python", "javascript", "typescript", "go", "rust", "c", "cpp", "csharp", "scala", "groovy"}


def dataset_cli(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "pipelines.dataset", *args, "--progress", "none", "--json"],
                          cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout)


def counter():
    """The real CodeGen tokenizer's count where its files are here, else ~4 characters a token."""
    if not TOKENIZER.is_dir():
        return (lambda text: max(1, len(text) // 4)), "4 characters per token (no tokenizer files)"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])), "CodeGen tokenizer"


def ms(values: list[float]) -> dict:
    values = sorted(values)
    return {
        "p50_ms": round(1000 * statistics.median(values), 2),
        "p95_ms": round(1000 * values[min(len(values) - 1, int(0.95 * len(values)))], 2),
        "max_ms": round(1000 * values[-1], 2),
        "n": len(values),
    }


def typing(index, count, args) -> dict:
    """Every keystroke's block, as the server builds it, for typing at random places of random code files."""
    rng = random.Random(args.seed)
    files = [f for f in index.files if f.lang in CODE and len(f.lines) >= 40]
    chosen = rng.sample(files, min(args.files, len(files)))
    provider = ContextProvider(lambda: index, count, 2048, ContextSettings())
    built, kept, sizes = [], [], []
    for number, file in enumerate(chosen):
        line = rng.randrange(20, len(file.lines))
        while line < len(file.lines) - 1 and not file.lines[line].strip():
            line += 1
        lines = list(file.lines)
        for key in range(args.keystrokes):
            prompt = extension_prompt(lines, line, min(len(lines[line]), 3 * key))
            before = provider.stats()["kept"]
            started = time.perf_counter()
            block = provider.block(prompt, 64, client=f"dev-{number}")
            seconds = time.perf_counter() - started
            (kept if provider.stats()["kept"] > before else built).append(seconds)
            sizes.append(count(block) if block else 0)
    return {
        "files": len(chosen),
        "requests": len(built) + len(kept),
        "block": ms(built + kept),
        "block_built": ms(built) if built else None,
        "block_kept": ms(kept) if kept else None,
        "kept_share": round(len(kept) / (len(built) + len(kept)), 3),
        "block_tokens_mean": round(statistics.mean(sizes), 1),
        "requests_with_context": round(sum(s > 0 for s in sizes) / len(sizes), 3),
    }


def update_pickup(repo: Path, data: Path, live: DatasetIndex) -> dict:
    """A one-file commit in the bench's own clone, ``dataset update``, and the index rebuilt with it."""
    name = "repopilot_context_bench_probe"
    git = ["git", "-C", str(repo)]
    (repo / f"{name}.py").write_text(f"def {name}():\n    return 1\n")
    subprocess.run([*git, "add", f"{name}.py"], check=True)
    subprocess.run([*git, "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qm", "probe"], check=True)
    try:
        started = time.perf_counter()
        dataset_cli("update", str(data))
        updated = time.perf_counter() - started
        live.wait(600)
        return {"dataset_update_s": round(updated, 2), "index_rebuild_s": round(live.build_seconds, 2),
                "found": name in live().sites}  # fmt: skip
    finally:
        subprocess.run([*git, "reset", "-q", "--hard", "HEAD~1"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a git repository (a large one: 10k+ files)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-out" / "context", help="where to work")
    parser.add_argument("--files", type=int, default=60, help="files typed in (default 60)")
    parser.add_argument("--keystrokes", type=int, default=12, help="requests per file (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update", action="store_true", help="also commit one file and time the pick-up")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    data, clone = args.work.resolve() / "dataset", args.work.resolve() / "clone"
    result: dict = {"repo": str(args.repo)}
    if not (data / "manifest.json").exists():
        if not clone.exists():  # a clone of its own: the update probe commits there, never in --repo
            subprocess.run(["git", "clone", "-q", "--local", str(args.repo.resolve()), str(clone)], check=True)
        started = time.perf_counter()
        built = dataset_cli("build", str(data), f"repo={clone}", "--force")
        result["dataset"] = {"build_s": round(time.perf_counter() - started, 1), "files_kept": built.get("files_kept")}
    count, result["token_count"] = counter()
    process = psutil.Process()
    rss = process.memory_info().rss
    live = DatasetIndex(data, poll_s=0.0)
    started = time.perf_counter()
    index = live.wait(600)
    result["index"] = {**index.stats(), "build_s": round(time.perf_counter() - started, 2),
                       "rss_mb": round((process.memory_info().rss - rss) / 2**20, 1)}  # fmt: skip
    result["typing"] = typing(index, count, args)
    if args.update:
        result["update"] = update_pickup(clone, data, live)
    result["goal"] = {"block_p95_ms": result["typing"]["block"]["p95_ms"],
                      "block_p95_under_20_ms": result["typing"]["block"]["p95_ms"] < 20}  # fmt: skip
    finish(result, args.out)


if __name__ == "__main__":
    main()
