"""Typing in VS Code with the FauxPilot extension, replayed against a completion server (used by bench/serve.py).

The extension (Venthe/vscode-fauxpilot) builds each prompt from the document and the cursor: a document of at
most ``maxLines`` (150) lines is sent from its start to the cursor; a longer one as its first
``floor(0.15 * maxLines)`` lines followed by the ``maxLines - leading`` lines above the cursor and the cursor's
line up to the cursor. So while the cursor stays on a line each prompt is the previous one plus what was typed,
and when it moves down a line the window's first line drops out: the prompt's start changes. The extension
sends one request at a time (a newer one waits for the pending one), with ``Authorization: Bearer <token>`` and
openai-node's headers.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 150
LEADING = int(0.15 * MAX_LINES)
HEADERS = {
    "Authorization": "Bearer dummy",
    "User-Agent": "OpenAI/NodeJS/3.2.1",
    "X-Stainless-Lang": "js",
    "X-Stainless-Package-Version": "3.2.1",
    "X-Stainless-Runtime": "node",
}


def extension_prompt(lines: list[str], line: int, col: int, max_lines: int = MAX_LINES) -> str:
    """What the extension sends with the cursor at ``(line, col)`` of a document made of ``lines``."""
    if len(lines) <= max_lines:
        return "".join(f"{text}\n" for text in lines[:line]) + lines[line][:col]
    leading = int(0.15 * max_lines)
    first = max(0, line - (max_lines - leading))
    head = "".join(f"{text}\n" for text in lines[:leading])
    return head + "".join(f"{text}\n" for text in lines[first:line]) + lines[line][:col]


@dataclass
class Keystroke:
    prompt: str
    line: int
    col: int
    slid: bool
    """The cursor moved to a new line in a long document: the prompt's start changed."""


def typing_trace(path: Path, requests: int, start_line: int = MAX_LINES, chars: int = 3) -> list[Keystroke]:
    """A developer retyping ``path`` from ``start_line``: a request every ``chars`` characters, moving to the
    next line at the end of one (blank lines are skipped, as the cursor would be)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    line, col, out = start_line, 0, []
    slid = False
    while len(out) < requests and line < len(lines):
        out.append(Keystroke(extension_prompt(lines, line, col), line, col, slid))
        slid = False
        col += chars
        if col > len(lines[line]):
            line, col = line + 1, 0
            while line < len(lines) and not lines[line].strip():
                line += 1
            slid = len(lines) > MAX_LINES
    return out


@dataclass
class Answer:
    seconds: float
    text: str
    prompt_tokens: int
    completion_tokens: int


def send(client, url: str, prompt: str, max_tokens: int, extra: dict) -> Answer:
    """One request as the extension sends it (its route, headers and body fields)."""
    body = {"model": "fastertransformer", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    started = time.perf_counter()
    r = client.post(url + "/v1/engines/codegen/completions", json=body, headers=HEADERS)
    seconds = time.perf_counter() - started
    r.raise_for_status()
    data = r.json()
    usage = data["usage"]
    return Answer(seconds, data["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"])


def replay(url: str, trace: list[Keystroke], max_tokens: int, think_s: float, extra: dict) -> list[Answer]:
    """The keystroke requests one after another, ``think_s`` of typing between an answer and the next request."""
    import httpx

    answers = []
    with httpx.Client(timeout=600) as client:
        for i, key in enumerate(trace):
            if i:
                time.sleep(think_s)
            answers.append(send(client, url, key.prompt, max_tokens, extra))
    return answers


def replay_together(url: str, traces: list[list[Keystroke]], max_tokens: int, think_s: float, extra: dict):
    """Several developers typing at once, each in a file of their own; their answers in trace order."""
    results: dict[int, list[Answer]] = {}
    barrier = threading.Barrier(len(traces))

    def typist(i: int) -> None:
        barrier.wait()
        results[i] = replay(url, traces[i], max_tokens, think_s, extra)

    threads = [threading.Thread(target=typist, args=(i,)) for i in range(len(traces))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(traces))]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_summary(seconds: list[float]) -> dict:
    return {
        "requests": len(seconds),
        "p50_s": round(statistics.median(seconds), 3),
        "p95_s": round(percentile(seconds, 0.95), 3),
        "max_s": round(max(seconds), 3),
    }
