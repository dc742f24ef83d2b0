"""``repopilot job list | show ID | cancel ID | retry ID | logs ID [--follow]``: the agent's job queue."""

from __future__ import annotations

import argparse
import json
import time

from agent.api.client import AgentClient
from agent.api.models import ACTIVE, JobInfo, JobState
from agent.cli_verbs.common import client, config_option, elapsed, json_option, print_json, print_table, when


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("job", help="the agent's jobs: dataset updates, training, evaluation, deployment")
    verbs = parser.add_subparsers(dest="job_command", required=True, metavar="COMMAND")
    config, as_json = config_option(), json_option()
    listing = verbs.add_parser("list", parents=[config, as_json], help="jobs, newest first")
    listing.add_argument("--state", choices=[state.value for state in JobState])
    listing.add_argument("-n", "--limit", type=int, default=30)
    for name, what in (
        ("show", "one job in detail"),
        ("cancel", "cancel a queued or running job"),
        ("retry", "run a failed, cancelled or interrupted job again"),
    ):
        verb = verbs.add_parser(name, parents=[config, as_json], help=what)
        verb.add_argument("id", type=int)
    logs = verbs.add_parser("logs", parents=[config], help="a job's log")
    logs.add_argument("id", type=int)
    logs.add_argument("-n", "--lines", type=int, default=200)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")


def run(args: argparse.Namespace) -> int:
    agent = client(args)
    command = args.job_command
    if command == "list":
        jobs = agent.list_jobs(state=args.state, limit=args.limit)
        if args.json:
            print_json(jobs)
        else:
            rows = [
                (j.id, j.kind, j.state, when(j.created_at), elapsed(j.started_at, j.finished_at), summary(j))
                for j in jobs
            ]
            print_table(("ID", "KIND", "STATE", "CREATED", "TOOK", "DETAIL"), rows, "No jobs.")
        return 0
    if command == "logs":
        return follow_log(agent, args.id, args.lines) if args.follow else _print_log(agent.job_log(args.id, args.lines))
    job = {"show": agent.get_job, "cancel": agent.cancel_job, "retry": agent.retry_job}[command](args.id)
    if args.json:
        print_json(job)
    elif command == "show":
        print_job(job)
    else:
        print(f"Job {job.id} ({job.kind}) is {job.state}.")
    return 0


def summary(job: JobInfo) -> str:
    """One line: the error of a job that ended badly, the progress of a running one, or why it was queued."""
    if job.error and job.state not in ACTIVE:
        return f"{job.error.title}: {job.error.message}".splitlines()[0]
    progress = job.progress or {}
    if job.state == JobState.RUNNING and progress:
        fraction = f"{progress['fraction']:.0%} " if progress.get("fraction") is not None else ""
        return f"{fraction}{progress.get('message') or ''}".strip()
    return str(job.params.get("reason") or job.params.get("model") or "")


def print_job(job: JobInfo) -> None:
    print(f"Job {job.id}: {job.kind}, {job.state} (attempt {job.attempts})")
    print(f"  created:  {when(job.created_at)}   started: {when(job.started_at)}   finished: {when(job.finished_at)}")
    if job.depends_on:
        print(f"  after:    jobs {', '.join(map(str, job.depends_on))}")
    if job.params:
        print(f"  params:   {json.dumps(job.params, sort_keys=True)}")
    if job.progress:
        print(f"  progress: {json.dumps(job.progress, sort_keys=True)}")
    if job.error:
        print(f"  error:    {job.error.title}: {job.error.message}")
    if job.result:
        print(f"  result:   {json.dumps(job.result, sort_keys=True)}")
    if job.losses:
        step, loss = job.losses[-1]
        print(f"  loss:     {loss:.4f} at step {step:g} ({len(job.losses)} points)")


def _print_log(text: str) -> int:
    if text:
        print(text)
    return 0


def follow_log(agent: AgentClient, job_id: int, lines: int, poll_s: float = 1.0) -> int:
    """Print the log's end, then what is added, until the job is no longer queued or running."""
    shown: list[str] = []
    while True:
        state = agent.get_job(job_id).state
        tail = agent.job_log(job_id, max(lines, 1000)).splitlines()
        new = _after(shown, tail) if shown else tail[-lines:]
        for line in new:
            print(line, flush=True)
        shown = (shown + new)[-1000:]
        if state not in ACTIVE:
            print(f"(job {job_id} is {state})")
            return 0
        time.sleep(poll_s)


def _after(shown: list[str], tail: list[str]) -> list[str]:
    """The lines of ``tail`` after its longest beginning that ends ``shown`` (all of it when they do not meet)."""
    for k in range(min(len(shown), len(tail)), 0, -1):
        if tail[k - 1] == shown[-1] and tail[:k] == shown[-k:]:
            return tail[k:]
    return tail
