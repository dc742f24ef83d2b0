"""How every command-line entry point reports errors: ``title: message`` and exit 1, never a traceback."""

from __future__ import annotations

import argparse
import enum
import os
import sys
import traceback
from collections.abc import Callable

from pipelines.errors import RepopilotError
from pipelines.procutil import Terminated, terminate_unwinds


class Exit(enum.IntEnum):
    """Every command's exit codes, in one table."""

    OK = 0
    ERROR = 1  # ``title: what to do`` on stderr
    BUG = 2  # an unexpected error: a bug in repopilot
    CHECK_FAILED = 3  # the command ran and its answer is no: eval gate failed, server unhealthy, agent not running
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM


def run_main(body: Callable[[], int]) -> int:
    """Run a command: errors become ``title: message`` and an exit code; Ctrl-C and SIGTERM unwind it (pools,
    temporary files and child processes are cleaned up on the way out)."""
    terminate_unwinds()
    try:
        return body()
    except RepopilotError as exc:
        print(f"{exc.title}: {exc.message}", file=sys.stderr)
        return Exit.ERROR
    except KeyboardInterrupt:
        print("Interrupted: nothing was lost; run the same command again to continue.", file=sys.stderr)
        return Exit.INTERRUPTED
    except Terminated:
        print("Terminated: nothing was lost; run the same command again to continue.", file=sys.stderr)
        return Exit.TERMINATED
    except Exception as exc:  # a bug: say so briefly, with the details only on request
        if os.environ.get("REPOPILOT_DEBUG"):
            traceback.print_exc()
        print(
            f"Unexpected error: {type(exc).__name__}: {exc}. This is a bug in repopilot; "
            "run again with REPOPILOT_DEBUG=1 to see the details and report them.",
            file=sys.stderr,
        )
        return Exit.BUG


def standalone_main(
    package: str,
    command: str,
    add_parser: Callable[[argparse._SubParsersAction], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """``python -m pipelines.<package> ...``: the same parser and runner as ``repopilot <command> ...``."""
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{package}")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    return run_main(lambda: run(args))
