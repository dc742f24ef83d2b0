"""Does fine-tuning teach a model the team's code? The protocol of a new user, as one command, with timings.

    python bench/learning.py --repo PATH [--quick] [--work DIR] [--out FILE]

1. **Public base**: a CodeGen pretrained here on public code, the Python standard library this runs on (every
   machine has it), minus a held-out 5% of its files (by a hash of the path). Its byte-level BPE tokenizer is
   trained on the same files. Built once per settings and kept in ``WORK/base-<hash>``.
2. **History cut**: the repository's first-parent history is cut at 80% of its commits; the dataset is built
   there with ``repopilot dataset build`` (what the team had then).
3. **Fine-tune** with ``repopilot train`` and the product's defaults (``--recipe`` adds flags, to try others),
   except that the public code mixed in is the base's training files, not the whole standard library (the
   held-out files must stay unseen).
4. **Evaluate** with ``repopilot eval --split time --since CUT`` (files added or changed in the last 20% of
   the history, which the model never saw) and ``--public`` (the held-out standard library: forgetting).
5. Prints one JSON object: each step's seconds, and per split every metric with baseline, candidate, delta,
   95% CI, ratio and its CI; ``goal`` checks the issue's figures (identifier recall at least 2x with the CI of
   the gain above 0, identifier loss lower with its CI below 0, public loss up by less than 10%).

``--quick`` is a smoke run (a tiny base on a few hundred public files, a few steps: a minute or two).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.report import finish  # noqa: E402
from pipelines.finetune.data import public_files  # noqa: E402

HELD_OUT_PERCENT = 5
STAMP = "bench-stamp.json"  # what a WORK/run was trained from: reused when a later run asks for the same
REPORTED = (
    "internal_identifier_recall",
    "internal_identifier_loss",
    "other_token_loss",
    "loss",
    "bits_per_byte",
    "internal_exact_match",
    "exact_match",
)
FULL = dict(layers=4, width=256, heads=8, vocab=4096, context=384, steps=240, batch=16, files=None)  # ~12 min here
QUICK = dict(layers=2, width=64, heads=4, vocab=1024, context=256, steps=40, batch=8, files=300)


def split_public(root: Path, limit: int | None) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of the public corpus (the files fine-tuning would mix in from it),
    split by a hash of the path."""
    files = [p for p in public_files(root) if p.suffix == ".py"]
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    held = [p for p in files if zlib.crc32(str(p.relative_to(root)).encode()) % 100 < HELD_OUT_PERCENT]
    return [p for p in files if p not in set(held)], held


def read(paths: list[Path]) -> list[str]:
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return [t for t in texts if t.strip()]


def pretrain(texts: list[str], out: Path, shape: dict, seed: int = 0) -> dict:
    """A CodeGen of ``shape`` trained from scratch on ``texts`` (AdamW, warmup then cosine decay)."""
    import numpy as np
    import torch

    from pipelines.finetune.tiny import tiny_codegen, train_tokenizer

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts, shape["vocab"])
    tokenizer.model_max_length = shape["context"]
    rows = -(-len(tokenizer) // 64) * 64 + 64
    model = tiny_codegen(
        rows, shape["context"], shape["width"], shape["layers"], shape["heads"], tokenizer.eos_token_id
    )
    ids = [t for text in texts for t in tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]]
    stream = torch.tensor(np.array(ids, dtype=np.int64))
    block = shape["context"]
    starts = torch.arange(0, len(stream) - block - 1, block // 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    steps, warmup = shape["steps"], max(1, shape["steps"] // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started, losses = time.perf_counter(), []
    for step in range(steps):
        picks = starts[torch.randint(len(starts), (shape["batch"],), generator=generator)]
        batch = torch.stack([stream[s : s + block] for s in picks])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss))
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1) * shape["batch"] * block / (time.perf_counter() - started)
            print(json.dumps({"pretrain_step": step, "loss": round(losses[-1], 3), "tokens_per_s": round(rate)}),
                  file=sys.stderr, flush=True)  # fmt: skip
    model.eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return {"tokens": len(ids), "steps": steps, "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 3)}


def public_training_folder(work: Path, key: str, root: Path, files: list[Path]) -> Path:
    """The public training files in a folder of their own: what fine-tuning mixes in (``--public-mix``), so
    the held-out files the forgetting check scores stay unseen."""
    folder = work / f"public-train-{key}"
    if not folder.exists():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for path in files:
            target = tmp / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        tmp.rename(folder)
    return folder


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def cut_commit(repo: Path, share: float) -> tuple[str, str, int]:
    """(the commit at ``share`` of the first-parent history, the head, number of commits)."""
    commits = git(repo, "rev-list", "--first-parent", "--reverse", "HEAD").split()
    return commits[min(len(commits) - 1, int(share * len(commits)))], commits[-1], len(commits)


def repo_name(path: Path) -> str:
    """A dataset name for the repository: its folder's (its parent's for a bare ``repo`` or ``.git``)."""
    path = path.resolve()
    name = path.parent.name if path.name in ("repo", ".git") else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "repo"


def cli(*args: str, timeout: float = 7200) -> dict:
    """A repopilot pipeline as a new user runs it (``python -m pipelines.<stage> ... --json``)."""
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode not in (0, 3):  # eval's gate may exit 3: that is a result, not a failure
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def metrics_of(report: dict) -> dict:
    out = {}
    for split, summary in report["splits"].items():
        out[split] = {"files": summary["files"], "identifier_uses": summary["identifier_uses"]}
        for name in REPORTED:
            entry = summary["metrics"][name]
            out[split][name] = {
                k: _round(entry.get(k)) for k in ("baseline", "candidate", "delta", "ci", "ratio", "ratio_ci")
            }
    return out


def _round(value):
    if isinstance(value, list):
        return [_round(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


def _trained_as(run: Path, stamp: dict) -> bool:
    """Whether ``run`` holds a finished fine-tune of the same base, dataset version and recipe."""
    try:
        done = json.loads((run / "result.json").read_text()).get("status") == "done"
        return done and json.loads((run / STAMP).read_text()) == stamp and (run / "model" / "config.json").exists()
    except (OSError, ValueError):
        return False


def four_way(context: dict) -> dict:
    """Identifier recall of base, base + context, fine-tuned, fine-tuned + context, and the gains with their CIs."""
    recall = "internal_identifier_recall"
    base, tuned, served = (context[k]["metrics"][recall] for k in ("baseline", "candidate", "served"))
    table = _arms(context, recall)
    gains = {
        "context_on_base": base,
        "context_on_fine_tuned": tuned,
        "fine_tuned_vs_base_both_with_context": served,
    }
    return {
        "internal_identifier_recall": {k: _round(v) for k, v in table.items()},
        "gains": {k: {f: _round(v.get(f)) for f in ("delta", "ci", "verdict")} for k, v in gains.items()},
        "exact_match_internal": {k: _round(v) for k, v in _arms(context, "internal_exact_match").items()},
    }


def _arms(context: dict, metric: str) -> dict:
    base, tuned = context["baseline"]["metrics"][metric], context["candidate"]["metrics"][metric]
    return {"base": base["baseline"], "base+context": base["candidate"], "fine-tuned": tuned["baseline"],
            "fine-tuned+context": tuned["candidate"]}  # fmt: skip


def goal(metrics: dict, context: dict | None = None) -> dict:
    time_split, public = metrics.get("time", {}), metrics.get("public", {})
    recall = time_split.get("internal_identifier_recall", {})
    ident = time_split.get("internal_identifier_loss", {})
    public_loss = public.get("loss", {})
    rise = public_loss["candidate"] / public_loss["baseline"] - 1 if public_loss.get("baseline") else None
    ratio = recall.get("ratio")
    if not recall.get("baseline") and recall.get("candidate"):
        ratio = "inf"  # the base recalled none of them
    return {
        "recall_ratio": ratio,
        "recall_at_least_2x_and_gain_ci_above_0": bool(
            ratio and (ratio == "inf" or ratio >= 2) and recall.get("ci") and recall["ci"][0] > 0
        ),
        "identifier_loss_lower_with_ci_below_0": bool(ident.get("ci") and ident["ci"][1] < 0),
        "public_loss_rise": None if rise is None else round(rise, 4),
        "public_loss_rise_below_10_percent": rise is not None and rise < 0.10,
        **(_context_goal(context) if context else {}),
    }


def _context_goal(context: dict) -> dict:
    """#14: context helps both models (CI of the gain above 0), and fine-tuned + context is the best of the four."""
    gains, table = context["gains"], context["internal_identifier_recall"]
    best = max(table, key=lambda k: table[k] if table[k] is not None else -1)
    return {
        "context_gain_on_base_ci_above_0": bool(
            gains["context_on_base"]["ci"] and gains["context_on_base"]["ci"][0] > 0
        ),
        "context_gain_on_fine_tuned_ci_above_0": bool(
            gains["context_on_fine_tuned"]["ci"] and gains["context_on_fine_tuned"]["ci"][0] > 0
        ),
        "fine_tuned_with_context_is_best": best == "fine-tuned+context"
        and bool(gains["fine_tuned_vs_base_both_with_context"]["ci"])
        and gains["fine_tuned_vs_base_both_with_context"]["ci"][0] > 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a git repository with history (working or bare)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-out" / "learning", help="where to work")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute or two")
    parser.add_argument("--cut", type=float, default=0.8, help="share of the history the model learns from")
    parser.add_argument("--cut-commit", help="learn from this commit instead (the time split starts there)")
    parser.add_argument("--public", type=Path, default=Path(sysconfig.get_paths()["stdlib"]), help="public code")
    parser.add_argument("--base-steps", type=int, help="pretraining steps of the public base")
    parser.add_argument("--recipe", nargs=argparse.REMAINDER, default=[], help="more `repopilot train` flags")
    parser.add_argument("--max-files", type=int, default=200, help="held-out files per split (default 200)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--context",
        choices=("repo", "none"),
        default="repo",
        help="also evaluate with repository context (default repo: the four-way table)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="fine-tune again even when WORK/run was trained from the same base, data and recipe",
    )
    args = parser.parse_args()

    shape = dict(QUICK if args.quick else FULL)
    if args.base_steps:
        shape["steps"] = args.base_steps
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    result: dict = {"repo": str(args.repo), "quick": args.quick, "base_shape": shape, "recipe": args.recipe}

    started = time.perf_counter()
    train_files, held_files = split_public(args.public, shape["files"])
    key = hashlib.sha256(json.dumps([shape, str(args.public), len(train_files)]).encode()).hexdigest()[:12]
    base, held_dir = work / f"base-{key}", work / f"public-heldout-{key}"
    if not held_dir.exists():
        for path in held_files:
            target = held_dir / path.relative_to(args.public)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    result["public"] = {"folder": str(args.public), "training_files": len(train_files), "held_out": len(held_files)}
    if not (base / "config.json").exists():
        result["base"] = pretrain(read(train_files), base, shape)
    else:
        result["base"] = {"reused": str(base)}
    recipe = ["--public-mix", str(public_training_folder(work, key, args.public, train_files)), *args.recipe]
    result["recipe"] = recipe
    seconds["public_base"] = time.perf_counter() - started

    started = time.perf_counter()
    cut, head, commits = cut_commit(args.repo, args.cut)
    cut = git(args.repo, "rev-parse", args.cut_commit).strip() if args.cut_commit else cut
    result["history"] = {"commits": commits, "cut": cut, "head": head}
    data = work / "data"
    built = cli("pipelines.dataset", "build", str(data), f"{repo_name(args.repo)}={args.repo}#{cut}", "--force",
                "--progress", "none", "--json")  # fmt: skip
    result["dataset"] = {k: built.get(k) for k in ("files_kept", "bytes_kept", "records") if k in built}
    seconds["dataset"] = time.perf_counter() - started

    started = time.perf_counter()
    run = work / "run"
    stamp = {"base": str(base), "dataset_version": built.get("dataset_version"), "recipe": recipe}
    if args.retrain or not _trained_as(run, stamp):
        shutil.rmtree(run, ignore_errors=True)
        trained = cli("pipelines.finetune", str(data), "-o", str(run), "--base-model", str(base), "--json",
                      *recipe)  # fmt: skip
        (run / STAMP).write_text(json.dumps(stamp))
    else:
        trained = {**json.loads((run / "result.json").read_text()), "reused": str(run)}
    keys = ("train_loss", "steps", "tokens", "train_seconds", "reused")
    result["finetune"] = {k: trained.get(k) for k in keys if k in trained}
    seconds["finetune"] = time.perf_counter() - started

    started = time.perf_counter()
    report = cli(
        "pipelines.evaluate", str(data), "--baseline", str(base), "--candidate", str(run / "model"),
        "--split", "time", "--since", cut, "--until", head, "--public", str(held_dir),
        "--max-files", str(args.max_files), "--public-files", str(args.max_files),
        "--out", str(work / "eval"), "--progress", "none", "--json", "--context", args.context,
    )  # fmt: skip
    seconds["evaluate"] = time.perf_counter() - started
    result["metrics"] = metrics_of(report)
    if args.context == "repo":
        result["context"] = four_way(report["splits"]["time"]["context"])
    result["gate"] = {k: report.get("gate", {}).get(k) for k in ("worse", "reasons")}
    result["goal"] = goal(result["metrics"], result.get("context"))
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    finish(result, args.out)


if __name__ == "__main__":
    main()
