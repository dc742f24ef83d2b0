"""How every command-line entry point reports errors: ``title: message`` and exit 1, never a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from pipelines.errors import RepopilotError


def run_main(body: Callable[[], int]) -> int:
    try:
        return body()
    except RepopilotError as exc:
        print(f"{exc.title}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: nothing was lost; run the same command again to continue.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so briefly, with the details only on request
        if os.environ.get("REPOPILOT_DEBUG"):
            traceback.print_exc()
        print(
            f"Unexpected error: {type(exc).__name__}: {exc}. This is a bug in repopilot; "
            "run again with REPOPILOT_DEBUG=1 to see the details and report them.",
            file=sys.stderr,
        )
        return 2
