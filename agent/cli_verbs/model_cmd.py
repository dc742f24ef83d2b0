"""``repopilot model list | show VERSION | deploy VERSION | rollback``: the trained models."""

from __future__ import annotations

import argparse
import json

from agent.api.models import JobInfo, ModelInfo
from agent.cli_verbs.common import client, config_option, json_option, print_json, print_table, when


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="trained models: list, inspect, deploy, roll back")
    verbs = parser.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    config, as_json = config_option(), json_option()
    verbs.add_parser("list", parents=[config, as_json], help="models, newest first (* serves now)")
    show = verbs.add_parser("show", parents=[config, as_json], help="one model: training and evaluation results")
    show.add_argument("version")
    deploy = verbs.add_parser("deploy", parents=[config, as_json], help="serve this model (queues a deploy job)")
    deploy.add_argument("version")
    verbs.add_parser("rollback", parents=[config, as_json], help="serve the model that served before")


def run(args: argparse.Namespace) -> int:
    agent = client(args)
    command = args.model_command
    if command == "list":
        models = agent.list_models()
        if args.json:
            print_json(models)
            return 0
        rows = [
            ("*" if m.serving else "", m.version, m.status, when(m.created_at), m.dataset_version or "-", gate(m))
            for m in models
        ]
        print_table(("", "VERSION", "STATUS", "CREATED", "DATASET", "EVALUATION"), rows, "No model trained yet.")
        return 0
    if command == "show":
        model = agent.get_model(args.version)
        print_json(model) if args.json else print_model(model)
        return 0
    job = agent.deploy_model(args.version) if command == "deploy" else agent.rollback()
    print_json(job) if args.json else print_queued(job)
    return 0


def gate(model: ModelInfo) -> str:
    if not model.eval:
        return "-"
    verdict = model.eval.get("gate")
    if isinstance(verdict, dict):  # report.json of `repopilot eval`: {"worse", "reasons", "applied", ...}
        if not verdict.get("applied", True):
            return "evaluated (no gate)"
        reasons = "; ".join(verdict.get("reasons") or [])
        return ("rejected" + (f": {reasons}" if reasons else "")) if verdict.get("worse") else "passed"
    return str(verdict)


def print_model(model: ModelInfo) -> None:
    print(f"Model {model.version}: {model.status}" + (" (serving)" if model.serving else ""))
    print(f"  created:   {when(model.created_at)}   from: {model.parent or 'the base model'}")
    print(f"  dataset:   {model.dataset_version or '-'}")
    print(f"  files:     {model.model_dir}")
    for name, folder in sorted(model.converted_dirs.items()):
        print(f"  converted: {name}: {folder}")
    if model.train:
        print(f"  training:  {json.dumps(model.train, sort_keys=True)}")
    print(f"  eval gate: {gate(model)}")


def print_queued(job: JobInfo) -> None:
    print(
        f"Queued job {job.id} ({job.kind} {job.params.get('model', '')}). "
        f"Follow it with `repopilot job logs {job.id} --follow`."
    )
