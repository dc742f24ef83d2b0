"""Next-line completion tasks: which lines are asked for, with what prompt, and how answers are scored.

- A line is *eligible* when it is not blank, not a comment-only line (``#`` for hash-comment languages,
  ``//``, ``/*``, ``*`` for C-like ones, ``--`` for SQL/Lua/Haskell) and has a non-blank line before it.
- Per file, two seeded samples of at most ``max_lines`` lines are drawn (the generator is seeded with the
  seed and the file's path, so one file's choice does not depend on the others): one uniform over the
  eligible lines (it estimates ``exact_match``/``edit_similarity``) and one uniform over the eligible
  lines that use internal identifiers (``internal_*``). Both are unbiased for their population; a line
  in both is generated once.
- The prompt is the text before the line with trailing whitespace removed: it ends on the last character
  of the previous non-blank line. Ending exactly there (rather than after the newline) avoids a token
  boundary no training text has: byte-level BPE merges a newline with the following indentation into
  one token, so a prompt ending in a bare newline would ask the model to continue from a token it never
  saw before indentation.
- The answer is the first non-blank line of the generation after the prompt's own (unfinished) line.
  Both answer and reference are compared after ``str.strip()``: leading indentation is removed (the
  prompt fixes the block the line belongs to; indentation style is not what is measured) and so is
  trailing whitespace. Inner whitespace counts.
- ``exact_match`` is 1 when the two are equal; ``edit_similarity`` is ``1 - levenshtein / max(len)``
  with a Levenshtein distance (insert, delete, substitute, each cost 1) computed here by dynamic
  programming over characters after removing the common prefix and suffix (1.0 when both are empty).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.dataset.languages import DASH_COMMENT_LANGS, HASH_COMMENT_LANGS
from pipelines.evaluate.identifiers import DefinitionIndex
from pipelines.evaluate.samples import Sample

C_COMMENTS = ("//", "/*", "*")


@dataclass(frozen=True)
class Task:
    """One line to complete: which file and line, the prompt, the reference, and which samples it is in."""

    file: int
    line: int
    prompt: str
    target: str
    uniform: bool
    internal: bool
    names: tuple[str, ...] = ()


def is_comment_only(line: str, lang: str | None) -> bool:
    stripped = line.strip()
    if lang in HASH_COMMENT_LANGS and stripped.startswith("#"):
        return True
    if lang in DASH_COMMENT_LANGS and stripped.startswith("--"):
        return True
    if lang == "ini" and stripped.startswith(";"):
        return True
    if lang in ("html", "xml", "markdown", "vue", "svelte") and stripped.startswith("<!--"):
        return True
    return lang not in HASH_COMMENT_LANGS and stripped.startswith(C_COMMENTS)


def eligible_lines(text: str, lang: str | None) -> list[int]:
    """0-based numbers of the lines that may be asked for (see the module docstring)."""
    found = []
    seen_code = False
    for number, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        if seen_code and not is_comment_only(line, lang):
            found.append(number)
        seen_code = True
    return found


def _choose(rng: np.random.Generator, items: list[int], k: int) -> set[int]:
    if len(items) <= k:
        return set(items)
    return {items[i] for i in rng.choice(len(items), size=k, replace=False)}


def make_tasks(
    samples: Sequence[Sample], definitions: dict[str, DefinitionIndex], max_lines: int, seed: int
) -> list[Task]:
    """The completion tasks of every sample file, in (file, line) order."""
    tasks: list[Task] = []
    empty = DefinitionIndex()
    for file_number, sample in enumerate(samples):
        lines = sample.text.split("\n")
        index = definitions.get(sample.repo, empty)
        eligible = eligible_lines(sample.text, sample.lang)
        names = {n: tuple(index.internal_names(lines[n], sample.path)) for n in eligible}
        rng = np.random.default_rng([seed, zlib.crc32(f"{sample.repo}/{sample.path}".encode())])
        uniform = _choose(rng, eligible, max_lines)
        internal = _choose(rng, [n for n in eligible if names[n]], max_lines)
        offsets = np.cumsum([0] + [len(line) + 1 for line in lines])
        for number in sorted(uniform | internal):
            tasks.append(
                Task(
                    file=file_number,
                    line=number,
                    prompt=sample.text[: offsets[number]].rstrip(),
                    target=normalise(lines[number]),
                    uniform=number in uniform,
                    internal=number in internal,
                    names=names[number],
                )
            )
    return tasks


@dataclass(frozen=True)
class IdentifierTask:
    """One use of an internal identifier to produce: the file, its line, the name, and the text before it."""

    file: int
    line: int
    name: str
    prompt: str


def identifier_tasks(samples: Sequence[Sample], definitions: dict[str, DefinitionIndex], tasks: Sequence[Task]):
    """For every sampled line that uses internal identifiers, each name's first use in it: the prompt is the
    file up to the name, without the spaces before it (and without the line break when the name opens its
    line), so the prompt ends where training text has a token boundary; ``recalled`` scores the answer."""
    empty = DefinitionIndex()
    found: list[IdentifierTask] = []
    lines_of: dict[int, tuple[list[str], np.ndarray]] = {}
    for task in tasks:
        if not task.internal:
            continue
        sample = samples[task.file]
        if task.file not in lines_of:
            lines = sample.text.split("\n")
            lines_of[task.file] = (lines, np.cumsum([0] + [len(line) + 1 for line in lines]))
        lines, offsets = lines_of[task.file]
        line, start = lines[task.line], int(offsets[task.line])
        seen: set[str] = set()
        for name, col in definitions.get(sample.repo, empty).occurrences(line, sample.path):
            if name in seen:
                continue
            seen.add(name)
            before = sample.text[: start + col].rstrip(" \t")
            if not line[:col].strip() and before.endswith("\n"):
                before = before[:-1]
            found.append(IdentifierTask(task.file, task.line, name, before))
    return found


def recalled(completion: str, name: str) -> bool:
    """Whether a greedy completion of the text before a use of ``name`` produces it: after any whitespace, the
    name itself, not followed by more identifier characters (``load_all`` does not recall ``load``)."""
    text = completion.lstrip()
    return text.startswith(name) and not (
        len(text) > len(name) and (text[len(name)].isalnum() or text[len(name)] in "_$")
    )


def normalise(line: str) -> str:
    return line.strip()


def first_line(completion: str) -> str:
    """The first non-blank line after the prompt's unfinished line, normalised ('' when there is none)."""
    for line in completion.split("\n")[1:]:
        if line.strip():
            return normalise(line)
    return ""


def has_answer(completion: str) -> bool:
    """Whether a completion already holds a finished answer line (generation can stop)."""
    parts = completion.split("\n")
    return any(part.strip() for part in parts[1:-1])


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute: cost 1 each) by dynamic programming over two rows."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def edit_similarity(answer: str, reference: str) -> float:
    longest = max(len(answer), len(reference))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(answer, reference) / longest
