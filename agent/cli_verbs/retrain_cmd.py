"""``repopilot retrain``: update the dataset, then train, evaluate, convert and deploy now."""

from __future__ import annotations

import argparse

from agent.cli_verbs.common import client, config_option, json_option, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("retrain", parents=[config_option(), json_option()], help="retrain now, whatever the policy says")


def run(args: argparse.Namespace) -> int:
    jobs = client(args).retrain_now()
    if args.json:
        print_json(jobs)
        return 0
    chain = " -> ".join(f"{j.kind} (job {j.id})" for j in jobs)
    print(f"Queued: {chain}. Follow it with `repopilot job list` or `repopilot job logs {jobs[0].id} --follow`.")
    return 0
