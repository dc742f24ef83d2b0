"""``repopilot train DATASET --output RUN_DIR [options]`` (also ``python -m pipelines.finetune``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from pipelines.cli_util import standalone_main
from pipelines.errors import InputError
from pipelines.finetune.args import TrainArgs, field_help


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="fine-tune a CodeGen model on a dataset (DeepSpeed, LoRA)",
        description="Fine-tune a CodeGen model on a repopilot dataset. Every option is saved in RUN_DIR/config.json.",
    )
    helps = field_help()
    hints = typing.get_type_hints(TrainArgs)
    for f in dataclasses.fields(TrainArgs):
        help_text = helps.get(f.name, "")
        if f.name == "dataset":
            parser.add_argument("dataset", nargs="?", help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name == "output":
            parser.add_argument("--output", "-o", required=True, help=help_text)
        elif kind in (bool, bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            base = _scalar(kind)
            parser.add_argument(flag, type=base, default=default, help=f"{help_text} (default: {default})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _scalar(kind):
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def args_from_namespace(ns: argparse.Namespace) -> TrainArgs:
    values = {}
    for f in dataclasses.fields(TrainArgs):
        value = getattr(ns, f.name, None)
        if value is not None:
            values[f.name] = value
    if "dataset" not in values:
        if not ns.resume:
            raise InputError("Give the dataset folder (or --resume --output RUN_DIR to continue a run).")
        values["dataset"] = ""
    return TrainArgs(**values)


def run(ns: argparse.Namespace) -> int:
    from pipelines.finetune.run import train

    args = args_from_namespace(ns)
    if ns.resume and not args.dataset:
        config = Path(args.output) / "config.json"
        if not config.exists():
            raise InputError(f"{args.output} holds no run to resume (no config.json).")
    # Libraries (DeepSpeed's logger among them) print to stdout; keep stdout for the result.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(args)
    if ns.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key in ("status", "model", "steps", "train_loss", "eval_loss"):
            if key in result:
                print(f"{key}: {result[key]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main("finetune", "train", add_parser, run, argv)
