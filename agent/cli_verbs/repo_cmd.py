"""``repopilot repo add PATH | remove NAME | list``: the repositories the agent watches."""

from __future__ import annotations

import argparse

from agent.cli_verbs.common import client, config_option, json_option, print_json, print_table, short


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("repo", help="watch git repositories (the agent trains on them)")
    verbs = parser.add_subparsers(dest="repo_command", required=True, metavar="COMMAND")
    config = config_option()
    add = verbs.add_parser("add", parents=[config, json_option()], help="watch a git repository and index it")
    add.add_argument("path", help="the repository's folder (working tree or bare)")
    add.add_argument("--name", help="short name (default: the folder's name)")
    add.add_argument("--ref", help="branch or ref to follow (default: the current branch)")
    add.add_argument("--include", action="append", default=None, metavar="GLOB", help="only files matching (repeat)")
    add.add_argument("--exclude", action="append", default=None, metavar="GLOB", help="skip files matching (repeat)")
    remove = verbs.add_parser("remove", parents=[config], help="stop watching a repository")
    remove.add_argument("name")
    verbs.add_parser("list", parents=[config, json_option()], help="the watched repositories")


def run(args: argparse.Namespace) -> int:
    agent = client(args)
    if args.repo_command == "add":
        repo = agent.add_repo(args.path, name=args.name, ref=args.ref, include=args.include, exclude=args.exclude)
        if args.json:
            print_json(repo)
        else:
            print(f"Watching {repo.name} ({repo.path}, {repo.ref}); the dataset update is queued.")
    elif args.repo_command == "remove":
        agent.remove_repo(args.name)
        print(f"Stopped watching {args.name}.")
    elif args.repo_command == "list":
        repos = agent.list_repos()
        if args.json:
            print_json(repos)
            return 0
        rows = [
            (
                r.name,
                r.ref,
                short(r.head_commit),
                short(r.last_indexed_commit),
                _files(r.files_kept),
                r.problem or r.path,
            )
            for r in repos
        ]
        print_table(
            ("NAME", "REF", "HEAD", "INDEXED", "FILES", "PATH"),
            rows,
            "No repository is watched yet: `repopilot repo add PATH`.",
        )
    return 0


def _files(count: int | None) -> str:
    return "-" if count is None else str(count)
