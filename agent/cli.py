"""The ``repopilot`` command: one entry point for every action."""

from __future__ import annotations

import argparse
import sys

from agent.stack import cli as stack_cli
from pipelines.cli_util import run_main
from pipelines.convert import cli as convert_cli
from pipelines.dataset import cli as dataset_cli
from pipelines.evaluate import cli as evaluate_cli
from pipelines.finetune import cli as finetune_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repopilot", description="Fine-tune a code model on your internal repositories and serve it."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dataset_cli.add_parser(sub)
    finetune_cli.add_parser(sub)
    evaluate_cli.add_parser(sub)
    convert_cli.add_parser(sub)
    stack_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    commands = {
        "dataset": dataset_cli.run,
        "train": finetune_cli.run,
        "eval": evaluate_cli.run,
        "convert": convert_cli.run,
        "stack": stack_cli.run,
    }
    return run_main(lambda: commands[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
