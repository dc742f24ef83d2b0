"""What the IDE will send once the cursor moves down a line, so the engine can prefill it while it is idle.

The VS Code FauxPilot extension sends a long document as its first ``floor(0.15 * maxLines)`` lines plus the
``maxLines - leading`` lines above the cursor and the cursor's line. When the cursor moves to the next line,
the window's first line drops out and every token after the leading lines sits at a new position: nothing
of the previous prompt past its leading lines can be reused, and the next request would prefill about 1,300
tokens again. But the next prompt starts with text the server already has: the leading lines, then the
window without its first line, up to the line being typed. Prefilled in the background (``Worker``), that
prefix is in the prefix cache when the cursor moves, and the request only prefills the line just finished.
"""

from __future__ import annotations

LEADING_SHARE = 0.15  # the extension's LEADING_LINES_PROP


def next_line_prefix(prompt: str, window_lines: int) -> str | None:
    """The start of the prompt the extension (``maxLines = window_lines``) sends after the cursor moves down a line,
    or None when ``prompt`` is not a sliding-window prompt (a short document is sent whole: nothing slides)."""
    if window_lines <= 1:
        return None
    lines = prompt.split("\n")
    if len(lines) != window_lines + 1:  # leading lines + (window_lines - leading) above the cursor + its line
        return None
    leading = int(LEADING_SHARE * window_lines)
    complete = lines[:-1]  # the cursor's line is still being typed
    return "".join(line + "\n" for line in complete[:leading] + complete[leading + 1 :])
