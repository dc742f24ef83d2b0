"""The repository index the context provider reads: every file of a dataset, where its names are defined, and
its code cut into overlapping windows for similarity search.

- **Definitions**: per file, the candidate names it defines and the line of each (``evaluate.identifiers``: the
  same rules as the eval's internal identifiers). A name defined in more than ``COMMON_SHARE`` of a repository's
  files (``logger``, ``setup``) says nothing and is left out, as in the eval.
- **Windows**: ``WINDOW`` lines every ``STRIDE`` lines of each file (the first ``MAX_LINES`` lines), each with the
  set of identifier tokens in it; an inverted index maps a token to the windows that hold it (numpy arrays), so
  the Jaccard similarity of a query's tokens with every window costs one ``bincount`` over the postings of the
  query's tokens, not a pass over the repository.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipelines.evaluate.identifiers import COMMON_MIN_FILES, COMMON_SHARE, definition_sites

WINDOW = 12
STRIDE = 6
MAX_LINES = 4000
PROSE = frozenset({"markdown", "restructuredtext", "tex", "json", "yaml", "toml", "ini", "xml", "html", "css"})
MAX_DF_SHARE = 0.2  # a token in more than this share of the windows (``self``, ``return``) is not looked up
MIN_MAX_DF = 64  # ... unless there are few windows: in a small repository every token may be common
TOKEN = re.compile(r"[A-Za-z_$][\w$]*")


@dataclass(frozen=True)
class IndexedFile:
    """One file of the dataset: its repository, path, language, lines and definition sites (name, line)."""

    repo: str
    path: str
    lang: str | None
    lines: tuple[str, ...]
    sites: tuple[tuple[str, int], ...]

    @classmethod
    def from_record(cls, record: dict) -> IndexedFile:
        text, lang = record["text"], record.get("lang")
        sites = () if lang in PROSE else tuple(definition_sites(text, lang))  # code in docs defines nothing
        return cls(record["repo"], record["path"], lang, tuple(text.split("\n")), sites)


def tokens_of(lines: Iterable[str]) -> set[str]:
    """The identifier tokens of some lines (what similarity compares)."""
    found: set[str] = set()
    for line in lines:
        found.update(TOKEN.findall(line))
    return found


class RepoIndex:
    """Definitions and windows of every file of one dataset version; immutable once built (readers never lock)."""

    def __init__(self, files: list[IndexedFile], version: str = "") -> None:
        self.files = files
        self.version = version
        self.sites: dict[str, list[tuple[int, int]]] = {}
        self.by_path = {(file.repo, file.path): fid for fid, file in enumerate(files)}
        self._index_definitions()
        self._index_windows()

    def _index_definitions(self) -> None:
        per_repo: dict[str, dict[str, set[int]]] = {}
        files_in: dict[str, int] = {}
        for fid, file in enumerate(self.files):
            files_in[file.repo] = files_in.get(file.repo, 0) + 1
            where = per_repo.setdefault(file.repo, {})
            for name, line in file.sites:
                where.setdefault(name, set()).add(fid)
                self.sites.setdefault(name, []).append((fid, line))
        common = set()
        for repo, where in per_repo.items():
            limit = max(COMMON_MIN_FILES, COMMON_SHARE * files_in[repo])
            common.update(name for name, fids in where.items() if len(fids) > limit)
        for name in common:
            del self.sites[name]

    def _index_windows(self) -> None:
        postings: dict[str, list[int]] = {}
        starts: list[tuple[int, int]] = []
        sizes: list[int] = []
        for fid, file in enumerate(self.files):
            line_tokens = [set(TOKEN.findall(line)) for line in file.lines[:MAX_LINES]]
            for start in range(0, max(1, len(line_tokens) - WINDOW + STRIDE), STRIDE):
                window = set().union(*line_tokens[start : start + WINDOW])
                if not window:
                    continue
                wid = len(starts)
                starts.append((fid, start))
                sizes.append(len(window))
                for token in window:
                    postings.setdefault(token, []).append(wid)
        self.window_file = np.array([f for f, _ in starts], dtype=np.int32)
        self.window_line = np.array([s for _, s in starts], dtype=np.int32)
        self.window_size = np.array(sizes, dtype=np.float32)
        self.repo_ids = {repo: i for i, repo in enumerate(sorted({file.repo for file in self.files}))}
        self.window_repo = np.array([self.repo_ids[self.files[f].repo] for f, _ in starts], dtype=np.int32)
        max_df = max(MIN_MAX_DF, int(MAX_DF_SHARE * len(starts)))
        self.postings = {t: np.array(ids, dtype=np.int32) for t, ids in postings.items() if len(ids) <= max_df}

    @property
    def windows(self) -> int:
        return len(self.window_file)

    def similar(self, query: set[str], k: int, *, repo: str | None = None, skip: set[int] = frozenset()):
        """The ``k`` windows most similar to ``query`` (Jaccard of the token sets), best first, as
        ``(file, first line, score)``; windows of the files in ``skip`` (and of other repos than ``repo``) left out.
        Tokens in more than ``MAX_DF_SHARE`` of the windows count in the sizes but are not looked up."""
        lists = [self.postings[t] for t in query if t in self.postings]
        if not lists or not query:
            return []
        hits = np.bincount(np.concatenate(lists), minlength=self.windows).astype(np.float32)
        candidates = np.flatnonzero(hits)
        if repo is not None:
            candidates = candidates[self.window_repo[candidates] == self.repo_ids.get(repo, -1)]
        if skip:
            candidates = candidates[~np.isin(self.window_file[candidates], list(skip))]
        if not len(candidates):
            return []
        inter = hits[candidates]
        score = inter / (len(query) + self.window_size[candidates] - inter)
        if len(score) > k:  # the best k without sorting them all
            top = np.argpartition(-score, k - 1)[:k]
            order = top[np.argsort(-score[top], kind="stable")]
        else:
            order = np.argsort(-score, kind="stable")
        chosen = candidates[order]
        return [(int(f), int(line), float(x)) for f, line, x in zip(self.window_file[chosen], self.window_line[chosen],
                                                                      score[order], strict=True)]  # fmt: skip

    def stats(self) -> dict[str, int]:
        return {"files": len(self.files), "definitions": len(self.sites), "windows": self.windows}
