"""``repopilot eval`` (also ``python -m pipelines.evaluate``): held-out metrics and the deploy gate.

    python -m pipelines.evaluate DATASET --model PATH --out DIR [options]
    python -m pipelines.evaluate DATASET --baseline PATH --candidate PATH --out DIR [--gate] [options]

Exit codes: 0 done (and, with ``--gate``, the candidate is not worse), 3 the gate found the candidate
worse (see ``pipelines.evaluate.compare``), 1 a problem with the input (one line, ``title: message``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli_util import Exit, standalone_main
from pipelines.errors import InputError
from pipelines.progress import MODES, Progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a model, or a candidate against a baseline, on held-out code (the deploy gate)",
        description="Score models on held-out files of the dataset's repos: loss, next-line completion, and "
        "exact match on lines that use the repository's own identifiers. With two models, a paired "
        "bootstrap gives 95% intervals of the differences; --gate exits 3 when the candidate is worse.",
    )
    parser.add_argument("dataset", type=Path, help="dataset folder (from `repopilot dataset build`)")
    parser.add_argument("--model", type=Path, metavar="PATH", help="evaluate this one model folder")
    parser.add_argument("--baseline", type=Path, metavar="PATH", help="the serving model folder")
    parser.add_argument("--candidate", type=Path, metavar="PATH", help="the new model folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for report.json/report.md")
    parser.add_argument(
        "--split",
        choices=("validation", "time", "both"),
        help="held-out files: validation records, files changed since --since, or both "
        "(default: time when --since is given, else validation)",
    )
    parser.add_argument("--since", metavar="COMMIT", help="time split: files added or modified after COMMIT "
                        "(default with --split time: the commit the dataset indexed)")  # fmt: skip
    parser.add_argument(
        "--until", metavar="REF", help="time split: up to REF (default: the branch the dataset follows, as it is now)"
    )
    parser.add_argument("--repo", metavar="NAME", help="repo of the dataset to use (default: the only one)")
    parser.add_argument(
        "--max-files", type=int, metavar="N", default=200, help="files per split (seeded sample; default 200)"
    )
    parser.add_argument(
        "--max-lines-per-file", type=int, metavar="N", default=8, help="completion lines per file (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, metavar="N", default=48, help="generation limit per line (default 48)"
    )
    parser.add_argument(
        "--max-loss-tokens", type=int, metavar="N", default=8192, help="tokens scored per file (default 8192)"
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="N", default=16, help="prompts generated together (default 16)"
    )
    parser.add_argument("--bootstrap", type=int, metavar="N", default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, metavar="N", default=0, help="seed of every sampling step (default 0)")
    parser.add_argument(
        "--loss-tolerance",
        type=float,
        metavar="X",
        default=0.01,
        help="relative rise of the loss the gate tolerates (default 0.01: 1%% of the baseline's loss)",
    )
    parser.add_argument(
        "--public",
        type=Path,
        metavar="DIR",
        help="a folder of public code (e.g. the Python standard library): its loss is the forgetting check",
    )
    parser.add_argument("--public-files", type=int, metavar="N", default=100, help="files of --public (default 100)")
    parser.add_argument(
        "--public-tolerance",
        type=float,
        metavar="X",
        default=0.1,
        help="relative rise of the loss on --public the gate tolerates (default 0.1: 10%%)",
    )
    add_context_options(parser)
    parser.add_argument("--gate", action="store_true", help="exit 3 when the candidate is worse than the baseline")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the models")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        default=None,
        help="CPU threads for torch (default: 1 for a model under 20M parameters, else the CPUs available)",
    )
    parser.add_argument("--progress", choices=MODES, default="auto", help="progress on stderr (json for machines)")
    parser.add_argument("--json", action="store_true", help="print report.json instead of the table")


def add_context_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--context",
        choices=("none", "repo"),
        default="none",
        help="repo: also score the completions with repository context before each prompt, as `repopilot serve "
        "--context-dataset` adds it (definitions and similar code from the dataset, never the held-out file "
        "itself), and compare each model with and without it (default none)",
    )
    parser.add_argument(
        "--context-tokens",
        type=int,
        metavar="N",
        default=256,
        help="most tokens of repository context per prompt (default 256, at most a quarter of the model's window)",
    )


def _models(args: argparse.Namespace) -> dict[str, Path]:
    problems = []
    if args.model is not None and (args.baseline is not None or args.candidate is not None):
        problems.append("pass either --model, or --baseline and --candidate, not both")
    elif args.model is None and (args.baseline is None) != (args.candidate is None):
        problems.append("--baseline and --candidate go together")
    elif args.model is None and args.baseline is None:
        problems.append("pass --model PATH, or --baseline PATH --candidate PATH")
    if args.gate and args.model is not None:
        problems.append("--gate compares two models: pass --baseline and --candidate")
    for option in ("max_files", "max_lines_per_file", "max_new_tokens", "max_loss_tokens", "batch_size"):
        if getattr(args, option) < 1:
            problems.append(f"--{option.replace('_', '-')} must be at least 1")
    if args.bootstrap < 100:
        problems.append("--bootstrap must be at least 100")
    if args.loss_tolerance < 0 or args.public_tolerance < 0:
        problems.append("--loss-tolerance and --public-tolerance must not be negative")
    if args.public_files < 1:
        problems.append("--public-files must be at least 1")
    if args.threads is not None and args.threads < 1:
        problems.append("--threads must be at least 1")
    if args.context_tokens < 1:
        problems.append("--context-tokens must be at least 1")
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"--out {args.out} is a file; give a folder")
    if problems:
        raise InputError("; ".join(problems) + ".", title="Invalid evaluation settings")
    from pipelines.evaluate.metrics import check_model_dir

    if args.model is not None:
        return {"model": check_model_dir(args.model, "model")}
    return {
        "baseline": check_model_dir(args.baseline, "baseline"),
        "candidate": check_model_dir(args.candidate, "candidate"),
    }


def evaluate(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Everything but printing: samples, metrics per model, comparison; returns the report."""
    from pipelines.evaluate import compare, metrics, report, samples

    started = time.monotonic()
    models = _models(args)
    view = samples.DatasetView(args.dataset)
    splits = samples.choose_splits(args.split, args.since, view)
    if args.until is not None and samples.TIME not in splits:
        raise InputError("--until only applies to the time split; pass --since or --split time.")
    work, infos, splits = _workload(args, view, splits, progress)
    found, line_tasks, identifiers = work.samples, work.tasks, work.identifiers
    settings = metrics.Settings(
        max_new_tokens=args.max_new_tokens,
        max_loss_tokens=args.max_loss_tokens,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
    )
    results = {role: metrics.evaluate_model(path, work, settings, progress) for role, path in models.items()}
    tables = {role: compare.file_table(result, line_tasks, identifiers, len(found)) for role, result in results.items()}
    split_of = np.array([s.split for s in found])
    summaries = {
        split: compare.summarize_split(tables, split_of == split, args.bootstrap, args.seed, args.loss_tolerance)
        for split in splits
        if (split_of == split).any()
    }
    if work.context is not None:
        _add_context(summaries, results, work, split_of, args)
    built: dict[str, Any] = {
        "format": report.FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"path": str(view.out_dir.resolve()), "dataset_version": view.manifest.get("dataset_version")},
        "models": {role: {**result.info, "seconds": round(result.seconds, 2)} for role, result in results.items()},
        "settings": {
            "splits": splits,
            "seed": args.seed,
            "bootstrap": args.bootstrap,
            "confidence": compare.CONFIDENCE,
            "max_files": args.max_files,
            "max_lines_per_file": args.max_lines_per_file,
            "max_new_tokens": args.max_new_tokens,
            "max_loss_tokens": args.max_loss_tokens,
            "batch_size": args.batch_size,
            "loss_tolerance": args.loss_tolerance,
            "public": None if args.public is None else str(args.public),
            "public_tolerance": args.public_tolerance,
            "decoding": "greedy",
            "context": args.context,
            "context_tokens": args.context_tokens if args.context == "repo" else None,
        },
        "samples": infos,
        "splits": summaries,
        "examples": report.examples(found, line_tasks, results),
        "files": report.per_file(found, line_tasks, results),
    }
    if "candidate" in results:
        same = results["baseline"].info["tokenizer"] == results["candidate"].info["tokenizer"]
        outcome = compare.gate(summaries, same, args.loss_tolerance, args.public_tolerance)
        built["gate"] = {**outcome, "applied": bool(args.gate)}
    built["wall_seconds"] = round(time.monotonic() - started, 2)
    report.write_report(args.out, built)
    return built


def _add_context(summaries: dict, results: dict, work: Any, split_of: np.ndarray, args: argparse.Namespace) -> None:
    """Per split of the repository, each model without vs with repository context (and the pair as served)."""
    from pipelines.evaluate import compare

    def table(result: Any) -> dict:
        return compare.file_table(result, work.tasks, work.identifiers, len(work.samples))

    plain = {role: table(result) for role, result in results.items()}
    served = {role: table(result.with_context) for role, result in results.items()}
    for split, summary in summaries.items():
        if split == "public":
            continue
        mask = split_of == split
        summary["context"] = {
            name: compare.summarize_split(
                pair, mask, args.bootstrap, args.seed, args.loss_tolerance, compare.CONTEXT_METRICS
            )
            for name, pair in compare.context_pairs(plain, served).items()
        }


def _context_work(args: argparse.Namespace, view: Any, found: list, line_tasks: list, identifiers: list, progress):
    """What repository context each prompt gets (``--context repo``): from every file of the dataset, never the
    prompt's own file, and only its own repository."""
    from pipelines.context.provider import ContextSettings, choose
    from pipelines.context.source import load_index
    from pipelines.evaluate.metrics import ContextWork

    index = load_index(view.out_dir)
    progress.event("context_index", **index.stats())
    settings = ContextSettings(max_tokens=args.context_tokens)

    def chosen(task: Any) -> tuple[list, str | None]:
        sample = found[task.file]
        items, lang = choose(index, task.prompt, settings, repo=sample.repo, skip_path=sample.path)
        return items, sample.lang or lang

    return ContextWork([chosen(t) for t in line_tasks], [chosen(t) for t in identifiers], settings)


def _workload(args: argparse.Namespace, view: Any, splits: list[str], progress: Progress) -> tuple[Any, dict, list]:
    """The held-out files of every split (public code last), their tasks and their identifiers' spans."""
    from pipelines.evaluate import metrics, samples, tasks
    from pipelines.evaluate.identifiers import DefinitionIndex

    sample_set = samples.load_samples(
        view,
        splits,
        repo=args.repo,
        since=args.since,
        until=args.until,
        max_files=args.max_files,
        seed=args.seed,
        progress=progress,
    )
    found, definitions = sample_set.samples, sample_set.definitions
    line_tasks = tasks.make_tasks(found, definitions, args.max_lines_per_file, args.seed)
    identifiers = tasks.identifier_tasks(found, definitions, line_tasks)
    spans = [(definitions.get(s.repo) or DefinitionIndex()).spans(s.text, s.path) for s in found]
    context = _context_work(args, view, found, line_tasks, identifiers, progress) if args.context == "repo" else None
    if args.public is not None:  # after the repository's files: the tasks' file numbers stay valid
        public, sample_set.splits[samples.PUBLIC] = samples.public_samples(args.public, args.public_files, args.seed)
        found, spans, splits = found + public, spans + [[] for _ in public], [*splits, samples.PUBLIC]
    progress.event(
        "samples",
        files=len(found),
        lines=sum(t.uniform for t in line_tasks),
        internal_lines=sum(t.internal for t in line_tasks),
        identifier_uses=len(identifiers),
    )
    return metrics.Workload(found, spans, line_tasks, identifiers, context), sample_set.splits, splits


def run(args: argparse.Namespace) -> int:
    progress = Progress(args.progress)
    built = evaluate(args, progress)
    from pipelines.evaluate.report import REPORT_MD, render_markdown

    if args.json:
        print(json.dumps(built, sort_keys=True, indent=2))
    else:
        print(render_markdown(built), end="")
    outcome = built.get("gate")
    if args.gate and outcome and outcome["worse"]:
        print(
            f"Gate failed: the candidate is worse than the baseline ({'; '.join(outcome['reasons'])}). "
            f"Keep serving the baseline; details in {args.out / REPORT_MD}.",
            file=sys.stderr,
        )
        return Exit.CHECK_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main("evaluate", "eval", add_parser, run, argv)
