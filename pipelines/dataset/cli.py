"""``repopilot dataset build|update|stats|languages`` (also ``python -m pipelines.dataset``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pipelines.cli_util import standalone_main
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.dataset.folder import STATS, read_manifest
from pipelines.dataset.languages import FILENAMES, LANGUAGES
from pipelines.dataset.treeahead import trees_read_ahead
from pipelines.errors import DatasetError, InputError
from pipelines.progress import MODES, Progress

if TYPE_CHECKING:
    from pipelines.dataset.builder import SyncResult


def parse_repo(text: str) -> RepoSpec:
    """``[NAME=]PATH[#REF]`` -> RepoSpec (NAME defaults to the folder name, REF to the checked-out branch)."""
    name = None
    if "=" in text and "/" not in text.split("=", 1)[0]:
        name, text = text.split("=", 1)
    path, _, ref = text.partition("#")
    if not path:
        raise InputError(f"{text!r} names no path. Write PATH, NAME=PATH or PATH#REF.")
    resolved = Path(path).expanduser().resolve()
    if name is None:
        name = resolved.name.removesuffix(".git") or "repo"
    return RepoSpec(name=name, path=str(resolved), ref=ref or None)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dataset", help="build and update the training dataset from git repos")
    commands = parser.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")

    p = commands.add_parser("build", help="index repositories from scratch into a dataset folder")
    p.add_argument("out", type=Path, help="dataset folder to create")
    p.add_argument("repos", nargs="*", metavar="REPO", help="[NAME=]PATH[#REF] of a git repo (working or bare)")
    p.add_argument(
        "--repos-json", type=Path, metavar="FILE",
        help='repos with their own filters: [{"name", "path", "ref", "include": [...], "exclude": [...]}]',
    )  # fmt: skip
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="keep only matching paths")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="drop matching paths")
    p.add_argument("--languages", default="", help="comma-separated allow-list (default: every known language)")
    p.add_argument("--max-file-bytes", type=int, default=DatasetConfig.max_file_bytes)
    p.add_argument("--max-line-length", type=int, default=DatasetConfig.max_line_length)
    p.add_argument("--val-fraction", type=float, default=DatasetConfig.val_fraction)
    p.add_argument("--near-dup-threshold", type=float, default=DatasetConfig.near_dup_threshold)
    p.add_argument("--no-near-dup", action="store_true", help="only drop exact duplicates")
    p.add_argument("--shard-records", type=int, default=DatasetConfig.shard_records)
    p.add_argument(
        "--file-commits", action="store_true",
        help="record each file's newest commit (walks the whole history: slower on long histories)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="rebuild a folder that already holds a dataset")
    _common(p)

    p = commands.add_parser("update", help="bring a dataset up to date with new commits (incremental)")
    p.add_argument("out", type=Path, help="dataset folder")
    p.add_argument("--ref", action="append", default=[], metavar="NAME=REF", help="index another ref of a repo")
    _common(p)

    p = commands.add_parser("stats", help="show what a dataset holds and what was dropped")
    p.add_argument("out", type=Path, help="dataset folder")
    p.add_argument("--json", action="store_true", help="print stats.json as is")

    commands.add_parser("languages", help="list the language allow-list")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=MODES, default="auto", help="progress on stderr (json for machines)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    command = args.dataset_command
    if command == "languages":
        for ext, lang in sorted(LANGUAGES.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{lang:16} {ext}")
        for name, lang in sorted(FILENAMES.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{lang:16} {name}")
        return 0
    if command == "stats":
        return _print_stats(args.out, as_json=args.json)
    progress = Progress(args.progress)
    if command == "build":
        config = DatasetConfig(
            max_file_bytes=args.max_file_bytes,
            max_line_length=args.max_line_length,
            languages=tuple(x.strip() for x in args.languages.split(",") if x.strip()),
            near_dup=not args.no_near_dup,
            near_dup_threshold=args.near_dup_threshold,
            val_fraction=args.val_fraction,
            shard_records=args.shard_records,
            file_commits=args.file_commits,
        )
        specs = _repos_from_json(args.repos_json) if args.repos_json else []
        if not specs and not args.repos:
            raise InputError("Give at least one repository (PATH, NAME=PATH#REF) or --repos-json FILE.")
        for text in args.repos:
            spec = parse_repo(text)
            specs.append(RepoSpec(spec.name, spec.path, spec.ref, tuple(args.include), tuple(args.exclude)))
        with trees_read_ahead((spec.path, spec.ref) for spec in specs):  # git reads while the builder loads
            build = _builder().build
            result = build(args.out, specs, config, force=args.force, progress=progress)
    else:
        refs = {}
        for item in args.ref:
            name, sep, ref = item.partition("=")
            if not sep or not name or not ref:
                raise InputError(f"--ref {item!r} must look like NAME=REF.")
            refs[name] = ref
        result = _builder().update(args.out, refs, progress=progress)
    _print_result(args.out, result, as_json=args.json)
    return 0


def _builder() -> ModuleType:
    """The builder, loaded when a command needs it (numpy and the rest: ~0.1 s), once what can run meanwhile has
    started (see :mod:`treeahead`). The dataset commands do no linear algebra (their numpy work is element-wise), and
    OpenBLAS starts a thread per core when numpy loads, which spin ~0.1 s of CPU while a build starts: this process
    starts none (other commands, and the agent, keep theirs)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from pipelines.dataset import builder  # here, not above: see the docstring

    return builder


def _repos_from_json(path: Path) -> list[RepoSpec]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
        return [
            RepoSpec(
                str(item["name"]),
                str(item["path"]),
                item.get("ref"),
                tuple(item.get("include", ())),
                tuple(item.get("exclude", ())),
            )
            for item in items
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        shape = "a list of {name, path[, ref, include, exclude]}"
        raise InputError(f"--repos-json {path}: {exc}. It must hold {shape}.") from None


def _print_result(out: Path, result: SyncResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.__dict__, sort_keys=True, indent=2))
        return
    for name, info in result.repos.items():
        detail = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("mode", "commit"))
        print(f"{name}: {info['mode']} at {info['commit'][:12]} ({detail})")
    print(
        f"dataset {result.dataset_version}: {result.records_changed} records changed, "
        f"{result.shards_written} shards written in {result.seconds:.2f}s"
    )
    _print_stats(out, as_json=False)


def _print_stats(out: Path, as_json: bool) -> int:
    manifest = read_manifest(out)
    try:
        stats = json.loads((Path(out) / STATS).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        raise DatasetError(f"{out}/{STATS} is missing or damaged. Run `repopilot dataset update {out}`.") from None
    if as_json:
        print(json.dumps(stats, sort_keys=True, indent=2))
        return 0
    mb = stats["bytes_kept"] / 1e6
    print(
        f"files seen {stats['files_seen']}, kept {stats['files_kept']} ({mb:.2f} MB), dropped {stats['files_dropped']}"
    )
    for split, info in stats["splits"].items():
        shards = len(manifest["shards"].get(split, []))
        print(f"  {split:<11} {info['files']:>7} files {info['bytes'] / 1e6:>9.2f} MB in {shards} shards")
    if stats["dropped"]:
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["dropped"].items())))
    if stats["languages"]:
        top = sorted(stats["languages"].items(), key=lambda kv: -kv[1]["files"])[:8]
        print("languages: " + ", ".join(f"{k} {v['files']}" for k, v in top))
    redactions = stats["redactions"]
    print("secrets redacted: " + (", ".join(f"{k} {v}" for k, v in redactions.items()) if redactions else "none"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main("dataset", "dataset", add_parser, run, argv)
