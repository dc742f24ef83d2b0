"""Repository context for a completion: what of the rest of the repository goes before the prompt.

The IDE sends only the text above the cursor in one file. From it the provider chooses, in this order:

1. **Definitions** of the internal identifiers the prompt uses but does not define itself, the nearest use to the
   cursor first: the definition's header (up to ``HEADER_LINES`` lines, until its brackets close) and, for a
   class (or struct, interface, ...), the headers of its members.
2. **Similar code**: the windows of the repository whose identifier tokens are most like those of the prompt's
   last ``query_lines`` lines (Jaccard, at least ``MIN_SIMILARITY``), with the ``SHOWN_AFTER`` lines that follow
   them (what came next there is what the cursor may need), from the first line the prompt does not hold. A
   window that defines a name the prompt defines is the prompt's own code (its saved version) and is skipped.

The items are interleaved (the two most urgent definitions, the best window, then the rest) and kept while they
fit the token budget: ``max_tokens``, at most ``max_share`` of the model's window, and never more than the room the
prompt and ``max_tokens`` of the answer leave. They are written as line comments of the prompt's language, each
under the path it comes from, and go before the prompt.

**Prefix reuse.** A block that changes at every keystroke would make the engine prefill the whole prompt again.
So the block is kept per file (per client and the file's first lines, which the IDE's window keeps) and only
rebuilt when it must change: a name used in the last ``near_lines`` lines needs a definition it lacks, it no
longer fits the budget, or the repository's index changed (a new dataset version).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.context.index import TOKEN, WINDOW, RepoIndex, tokens_of
from pipelines.dataset.languages import line_comment
from pipelines.evaluate.identifiers import definition_sites

HEADER_LINES = 4
MAX_MEMBERS = 8
MIN_SIMILARITY = 0.15
SHOWN_AFTER = 4  # lines shown after a matched window: what came next there is what the cursor may need
MIN_BLOCK_TOKENS = 24
MARGIN_TOKENS = 8  # the block and the prompt tokenized together may merge a token or two at the seam
MAX_COSTS = 100_000
MIN_PIECE_LINES = 2
KEY_LINES = 22  # the FauxPilot extension keeps a file's first 15% of maxLines=150 lines in every window
_CLASS_LIKE = re.compile(r"\b(?:class|interface|struct|trait|enum|object|record|protocol|impl)\b")
_PYTHON_HINT = re.compile(r"^(?:def |class \w+.*:|from [\w.]+ import |import \w+$)", re.M)


@dataclass(frozen=True)
class ContextSettings:
    """How much context and from where (``repopilot serve --context-tokens``, ``repopilot eval --context-tokens``)."""

    max_tokens: int = 256
    """Most tokens of context per prompt."""
    max_share: float = 0.25
    """... and at most this share of the model's window."""
    query_lines: int = 8
    """The prompt's last lines that similar code is looked up for."""
    near_lines: int = 3
    """A name used in these last lines needs its definition in the block (else the block is rebuilt)."""
    max_definitions: int = 6
    max_snippets: int = 2


@dataclass(frozen=True)
class Item:
    """One piece of context: lines of one file, and the names it defines."""

    key: tuple[int, int, int]
    path: str
    lines: tuple[str, ...]
    names: frozenset[str]


@dataclass(frozen=True)
class Block:
    """The context chosen for one file: its text, its size in tokens and the names it defines."""

    text: str
    tokens: int
    names: frozenset[str]
    version: str


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _header(lines: tuple[str, ...], at: int) -> int:
    """The last line of the definition header starting at ``at``: where its brackets close."""
    depth, end = 0, at
    for end in range(at, min(len(lines), at + HEADER_LINES)):
        depth += sum(lines[end].count(c) for c in "([{") - sum(lines[end].count(c) for c in ")]}")
        if depth <= 0 or lines[end].rstrip().endswith((":", "{")):
            break
    return end


def definition_item(index: RepoIndex, fid: int, line: int, name: str) -> Item:
    """The header of the definition at ``line`` of file ``fid``; for a class-like one, its members' headers too."""
    file = index.files[fid]
    end = _header(file.lines, line)
    shown = list(file.lines[line : end + 1])
    names = {name}
    if _CLASS_LIKE.search(file.lines[line]):
        indent, stop = _indent(file.lines[line]), len(file.lines)
        for j in range(end + 1, min(len(file.lines), end + 400)):
            if file.lines[j].strip() and _indent(file.lines[j]) <= indent:
                stop = j
                break
        members = [(n, at) for n, at in file.sites if end < at < stop and _indent(file.lines[at]) > indent]
        for member, at in members[:MAX_MEMBERS]:
            shown += file.lines[at : _header(file.lines, at) + 1]
            names.add(member)
    return Item((0, fid, line), file.path, tuple(shown), frozenset(names))


def window_item(index: RepoIndex, fid: int, start: int, lines: int, seen: set[str]) -> Item:
    """Lines of file ``fid`` from ``start`` on: a matched window and what follows it, without the leading lines the
    prompt holds already (or blank) and trailing blank lines."""
    file = index.files[fid]
    end = min(len(file.lines), start + lines)
    while start < end and (not file.lines[start].strip() or file.lines[start].strip() in seen):
        start += 1
    while end > start and not file.lines[end - 1].strip():
        end -= 1
    names = frozenset(name for name, at in file.sites if start <= at < end)
    return Item((1, fid, start), file.path, tuple(file.lines[start:end]), names)


def prompt_names(prompt: str, index: RepoIndex, defined: set[str]) -> list[tuple[str, int]]:
    """Internal identifiers the prompt uses and does not define (``defined``), with where it last uses them,
    nearest the cursor first."""
    last: dict[str, int] = {}
    for match in TOKEN.finditer(prompt):
        if match.group() in index.sites:
            last[match.group()] = match.start()
    return sorted(((n, at) for n, at in last.items() if n not in defined), key=lambda item: -item[1])


def defined_in(prompt: str) -> set[str]:
    return {name for name, _ in definition_sites(prompt, None)}


def _site(index: RepoIndex, name: str, repo: str | None, skip: set[int]) -> tuple[int, int] | None:
    sites = [(f, line) for f, line in index.sites[name] if f not in skip]
    same = [s for s in sites if repo is None or index.files[s[0]].repo == repo]
    return (same or sites or [None])[0]


def choose(index: RepoIndex, prompt: str, settings: ContextSettings, *, repo: str | None = None,
           skip_path: str | None = None) -> tuple[list[Item], str | None]:  # fmt: skip
    """The items for ``prompt``, most useful first, and the language the prompt seems to be in (or None).
    ``repo``: prefer (definitions) or keep to (similar code) this repository; ``skip_path``: leave out that file
    of it (the eval's held-out file)."""
    own = index.by_path.get((repo, skip_path)) if skip_path else None
    skip = {own} if own is not None else set()
    defined = defined_in(prompt)
    definitions: list[Item] = []
    for name, _ in prompt_names(prompt, index, defined):
        if len(definitions) == settings.max_definitions:
            break
        site = _site(index, name, repo, skip)
        if site is not None and all(site[0] != d.key[1] or site[1] != d.key[2] for d in definitions):
            definitions.append(definition_item(index, site[0], site[1], name))
    snippets, lang = _similar(index, prompt, settings, repo, skip, defined)
    items = definitions[:2] + snippets[:1] + definitions[2:] + snippets[1:]
    return items, lang or _guess_lang(prompt, definitions, index)


def _similar(index: RepoIndex, prompt: str, settings: ContextSettings, repo: str | None, skip: set[int],
             defined: set[str]) -> tuple[list[Item], str | None]:  # fmt: skip
    """The windows most like the prompt's last lines that add something (see the module docstring), and the
    language of the best match."""
    lines = prompt.split("\n")
    query = tokens_of(lines[-settings.query_lines :])
    seen = {line.strip() for line in lines if line.strip()}
    snippets: list[Item] = []
    lang = None
    for fid, start, score in index.similar(query, 4 * settings.max_snippets + 4, repo=repo, skip=skip):
        lang = lang or index.files[fid].lang
        item = window_item(index, fid, start, WINDOW + SHOWN_AFTER, seen)
        if score < MIN_SIMILARITY or not item.lines or item.names & defined:
            continue  # too unlike, nothing new, or the prompt's own code (it defines the same names)
        if any(s.key[1] == fid and abs(s.key[2] - item.key[2]) < WINDOW for s in snippets):
            continue
        snippets.append(item)
        if len(snippets) == settings.max_snippets:
            break
    return snippets, lang


def _guess_lang(prompt: str, definitions: list[Item], index: RepoIndex) -> str | None:
    if definitions:
        return index.files[definitions[0].key[1]].lang
    return "python" if _PYTHON_HINT.search(prompt) else None


def render(items: list[Item], comment: str) -> str:
    out = []
    for item in items:
        out.append(f"{comment} {item.path}\n")
        out += [f"{comment} {line}\n".replace(" \n", "\n") if line.strip() else f"{comment}\n" for line in item.lines]
    return "".join(out)


def fit(items: list[Item], lang: str | None, budget: int, count: Callable[[str], int],
        costs: dict | None = None) -> tuple[str, int, frozenset]:  # fmt: skip
    """The block of ``items`` (in order) within ``budget`` tokens: text, tokens and the names its items hold. An
    item that does not fit whole goes in with as many of its first lines as fit (at least ``MIN_PIECE_LINES``).
    Every piece ends with a line break, where byte-level BPE never merges tokens, so the block costs the sum of its
    pieces; ``costs`` caches them."""
    comment = line_comment(lang) or "#"
    costs = {} if costs is None else costs

    def cost(item: Item) -> int:
        key = (item.key, len(item.lines), comment)
        if key not in costs:
            costs[key] = count(render([item], comment))
        return costs[key]

    kept: list[Item] = []
    tokens = 0
    for item in items:
        while item.lines and tokens + cost(item) > budget and len(item.lines) > MIN_PIECE_LINES:
            item = dataclasses.replace(item, lines=item.lines[: max(MIN_PIECE_LINES, len(item.lines) * 2 // 3)])
        if tokens + cost(item) <= budget:
            kept.append(item)
            tokens += cost(item)
    if not kept:
        return "", 0, frozenset()
    return render(kept, comment), tokens, frozenset().union(*(item.names for item in kept))


class ContextProvider:
    """Repository context for the completion server: one sticky block per file (see the module docstring).

    ``index``: returns the current :class:`RepoIndex` or None (not built yet, or none configured);
    ``count``: the engine's token count of a text; ``context_length``: the model's window."""

    def __init__(self, index: Callable[[], RepoIndex | None], count: Callable[[str], int], context_length: int,
                 settings: ContextSettings | None = None, files: int = 256) -> None:  # fmt: skip
        self.index = index
        self.count = count
        self.context_length = context_length
        self.settings = settings or ContextSettings()
        self._blocks: collections.OrderedDict[tuple, Block] = collections.OrderedDict()
        self._files = files
        self._lock = threading.Lock()
        self.counters = collections.Counter({"built": 0, "kept": 0, "no_room": 0})
        self._costs: dict = {}  # tokens of each rendered item (per index version)
        self._costs_version = ""

    def budget(self, prompt_tokens: int, max_tokens: int) -> int:
        s = self.settings
        room = self.context_length - prompt_tokens - max_tokens - MARGIN_TOKENS
        return min(s.max_tokens, int(s.max_share * self.context_length), room)

    def block(self, prompt: str, max_tokens: int, client: str | None = None) -> str:
        """The context to put before ``prompt`` ("" when none helps or fits)."""
        index = self.index()
        if index is None or not prompt.strip():
            return ""
        budget = self.budget(self.count(prompt), max_tokens)
        if budget < MIN_BLOCK_TOKENS:
            self.counters["no_room"] += 1
            return ""
        lines = prompt.split("\n")
        head = "\n".join(lines[: min(KEY_LINES, len(lines) - 1)])
        key = (client, hashlib.blake2b(head.encode(), digest_size=12).digest())
        tail = len(prompt) - len("\n".join(lines[-self.settings.near_lines :]))
        near = {name for name, at in prompt_names(prompt, index, defined_in(prompt)) if at >= tail}
        with self._lock:
            kept = self._blocks.get(key)
            if kept and kept.version == index.version and kept.tokens <= budget and near <= kept.names:
                self._blocks.move_to_end(key)
                self.counters["kept"] += 1
                return kept.text
        items, lang = choose(index, prompt, self.settings)
        if self._costs_version != index.version:
            self._costs, self._costs_version = {}, index.version
        elif len(self._costs) > MAX_COSTS:
            self._costs.clear()
        text, tokens, names = fit(items, lang, budget, self.count, self._costs)
        with self._lock:
            self._blocks[key] = Block(text, tokens, names | near, index.version)  # never rebuilt for what none holds
            self._blocks.move_to_end(key)
            while len(self._blocks) > self._files:
                self._blocks.popitem(last=False)
            self.counters["built"] += 1
        return text

    def stats(self) -> dict[str, int]:
        return dict(self.counters)
