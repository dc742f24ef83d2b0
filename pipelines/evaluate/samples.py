"""Held-out files to evaluate on, chosen the same way for every model.

Two splits:

- ``validation``: the dataset's own validation records (the builder decides the split by a hash of repo
  and path, and deduplicates globally, so none of them is (nearly) equal to a training record).
- ``time``: files added or modified in ``since..until`` of one repository (``git diff-tree``, renames
  followed), read at ``until``, passed through the dataset's own filters and secret redaction
  (``path_reason`` + ``analyze`` + ``redact_spans`` with the dataset's settings), then deduplicated
  against the training records: a file is dropped when its blob id or its redacted text equals a training
  record's (``duplicate_of_training``), or when its MinHash similarity to any training record reaches the
  dataset's ``near_dup_threshold`` (``near_duplicate_of_training``; like the builder, files with fewer
  than ``near_dup_min_tokens`` words are only checked for exact copies). Exact copies among the new files
  themselves are kept once (``duplicate``).

Sampling is deterministic: candidates are sorted by (repo, path) and shuffled by a generator seeded with
``seed``; the first ``max_files`` that survive are kept. The time split examines candidates in that order
and stops once it has enough, so its drop counts cover the files examined.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.dataset import dedup
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.dataset.filters import analyze, path_reason, redact_spans
from pipelines.dataset.folder import read_manifest, read_shard, shard_names
from pipelines.dataset.gitsource import GitSource
from pipelines.dataset.languages import language_of
from pipelines.errors import DatasetError, InputError, RepoError
from pipelines.evaluate.identifiers import DefinitionIndex
from pipelines.progress import Progress

VALIDATION = "validation"
TIME = "time"
PUBLIC = "public"
SPLITS = (VALIDATION, TIME)
NOT_SOURCE = frozenset(
    {"markdown", "restructuredtext", "tex", "html", "xml", "json", "yaml", "toml", "ini", "css", "protobuf"}
)  # prose, markup and data: what a completion of code is not measured on
_KEPT_STATUSES = "AMRCT"  # diff statuses whose new side is a file to look at (D: deleted)


@dataclass(frozen=True)
class Sample:
    """One held-out file: its provenance and its (redacted) text."""

    split: str
    repo: str
    path: str
    lang: str | None
    sha: str
    text: str


@dataclass
class SampleSet:
    """The files every model is evaluated on, where they came from, and the repos' own identifiers."""

    samples: list[Sample]
    splits: dict[str, dict[str, Any]]
    definitions: dict[str, DefinitionIndex] = field(default_factory=dict)


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class DatasetView:
    """Read access to a dataset folder through its manifest (the builder's state is never opened)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        if not self.out_dir.is_dir():
            raise DatasetError(
                f"{self.out_dir} does not exist. Give the folder `repopilot dataset build` wrote.",
                title="Dataset not found",
            )
        self.manifest = read_manifest(self.out_dir)
        self.config = DatasetConfig.from_json(self.manifest.get("config", {}))
        self.repos: dict[str, dict[str, Any]] = self.manifest.get("repos", {})

    def count(self, split: str) -> int:
        return sum(int(shard.get("records", 0)) for shard in self.manifest.get("shards", {}).get(split, []))

    def records(self, split: str) -> Iterator[dict[str, Any]]:
        for name in shard_names(self.manifest, (split,)):
            yield from read_shard(self.out_dir, name)

    def repo_name(self, name: str | None) -> str:
        """The repo ``--repo`` names, or the only one; an unknown name is an error listing the known ones."""
        known = sorted(self.repos)
        if name is None:
            if len(known) != 1:
                raise InputError(
                    f"{self.out_dir} holds {len(known)} repos ({', '.join(known) or 'none'}). "
                    "Pass --repo NAME to choose the one to take the time split from."
                )
            return known[0]
        if name not in self.repos:
            raise InputError(
                f"{self.out_dir} has no repo named {name!r}; it has {', '.join(known) or 'none'}. "
                "Pass one of them to --repo."
            )
        return name

    def spec(self, name: str) -> RepoSpec:
        info = self.repos[name]
        return RepoSpec(
            name=name,
            path=info["path"],
            ref=info.get("ref"),
            include=tuple(info.get("include", ())),
            exclude=tuple(info.get("exclude", ())),
        )


class TrainingIndex:
    """What the training records are, for deduplication and for the repos' own identifiers."""

    def __init__(self, view: DatasetView, *, signatures: bool, progress: Progress) -> None:
        self.shas: set[str] = set()
        self.texts: set[bytes] = set()
        self.definitions: dict[str, DefinitionIndex] = {}
        self.min_tokens = view.config.near_dup_min_tokens
        self.threshold = view.config.near_dup_threshold
        rows: list[np.ndarray] = []
        progress.start("reading training records", view.count("train"), unit="files")
        for record in view.records("train"):
            text = record["text"]
            self.shas.add(record["sha"])
            self.texts.add(_text_key(text))
            index = self.definitions.setdefault(record["repo"], DefinitionIndex())
            index.add(record["path"], text, record.get("lang"))
            if signatures:
                sig = dedup.signature(text, self.min_tokens)
                if sig is not None:
                    rows.append(sig)
            progress.advance(1, len(text))
        progress.finish()
        self.signatures = np.stack(rows) if rows else np.zeros((0, dedup.NUM_PERM), dtype=np.uint32)

    def duplicate_reason(self, sha: str, text: str) -> str | None:
        if sha in self.shas or _text_key(text) in self.texts:
            return "duplicate_of_training"
        sig = dedup.signature(text, self.min_tokens)
        if sig is not None and len(self.signatures):
            best = np.count_nonzero(self.signatures == sig[None, :], axis=1).max() / dedup.NUM_PERM
            if best >= self.threshold:
                return "near_duplicate_of_training"
        return None


def _shuffled(items: list, seed: int) -> list:
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def validation_samples(view: DatasetView, repo: str | None, max_files: int, seed: int) -> tuple[list[Sample], dict]:
    records = [r for r in view.records(VALIDATION) if repo is None or r["repo"] == repo]
    source = [r for r in records if r.get("lang") not in NOT_SOURCE]
    source.sort(key=lambda r: (r["repo"], r["path"]))
    chosen = _shuffled(source, seed)[:max_files]
    samples = [Sample(VALIDATION, r["repo"], r["path"], r.get("lang"), r["sha"], r["text"]) for r in chosen]
    info = {"records": len(records), "not_source": len(records) - len(source), "files": len(samples), "repo": repo}
    return samples, info


def public_samples(folder: Path, max_files: int, seed: int) -> tuple[list[Sample], dict]:
    """Source files of a folder of public code (e.g. the Python standard library), for the forgetting check:
    sorted, shuffled with ``seed``, the first ``max_files`` readable ones of at most 1 MB."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"--public {folder} is not a folder. Give a folder of public source code.")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and language_of(p.name) not in (None, *NOT_SOURCE))
    samples: list[Sample] = []
    for path in _shuffled(paths, seed):
        if len(samples) >= max_files:
            break
        try:
            data = path.read_bytes()
            text = data.decode("utf-8") if len(data) <= 2**20 else ""
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            rel = path.relative_to(folder).as_posix()
            sha = hashlib.sha1(data).hexdigest()
            samples.append(Sample(PUBLIC, PUBLIC, rel, language_of(path.name), sha, text))
    if not samples:
        raise InputError(f"--public {folder} holds no source files to evaluate on.", title="Nothing to evaluate on")
    return samples, {"folder": str(folder), "candidates": len(paths), "files": len(samples)}


def _resolve(source: GitSource, ref: str | None, option: str) -> tuple[str, str]:
    try:
        return source.resolve(ref)
    except RepoError as exc:
        raise RepoError(f"{option}: {exc.message}", title="Unknown commit") from None


@dataclass(frozen=True)
class TimeRange:
    """The commits a time split runs between, resolved (and checked) before any expensive work."""

    repo: str
    spec: RepoSpec
    source: GitSource
    since: str
    since_commit: str
    until: str
    until_commit: str


def time_range(view: DatasetView, repo: str, since: str | None, until: str | None) -> TimeRange:
    """Resolve ``--since`` (default: the commit the dataset indexed) and ``--until`` (default: the repo's ref)."""
    spec = view.spec(repo)
    source = GitSource(spec.path)
    if since is None:
        since = view.repos[repo]["commit"]  # what the model was trained on
    since_name, since_sha = _resolve(source, since, "--since")
    until_name, until_sha = _resolve(source, until or spec.ref, "--until")
    if since_sha != until_sha and not source.is_ancestor(since_sha, until_sha):
        raise InputError(
            f"--since {since_name} is not an ancestor of {until_name} in {source.path}. "
            "Pass an older commit of the same history (e.g. the one the dataset indexed).",
            title="Unknown commit",
        )
    return TimeRange(repo, spec, source, since_name, since_sha, until_name, until_sha)


def time_samples(
    view: DatasetView, training: TrainingIndex, span: TimeRange, max_files: int, seed: int
) -> tuple[list[Sample], dict]:
    """Files changed in the range, filtered, redacted and deduplicated as the module docstring says."""
    changes = [c for c in span.source.diff(span.since_commit, span.until_commit) if c.status in _KEPT_STATUSES]
    dropped: Counter[str] = Counter()
    candidates = []
    for change in sorted(changes, key=lambda c: c.path):
        reason, lang = path_reason(change.path, change.mode, span.spec, view.config)
        if reason is None and lang in NOT_SOURCE:
            reason = "not_source"
        if reason is None:
            candidates.append((change, lang))
        else:
            dropped[reason] += 1
    samples: list[Sample] = []
    seen_texts: set[bytes] = set()
    examined = 0
    ordered = _shuffled(candidates, seed)
    blobs = span.source.read_blobs(change.sha for change, _ in ordered)
    try:
        for (change, lang), (_, data) in zip(ordered, blobs, strict=False):
            if len(samples) >= max_files:
                break
            examined += 1
            analysis = analyze(data, view.config)
            if analysis.reason is not None:
                dropped[analysis.reason] += 1
                continue
            assert data is not None
            text = redact_spans(data.decode("utf-8"), analysis.redactions)
            reason = training.duplicate_reason(change.sha, text)
            if reason is None and _text_key(text) in seen_texts:
                reason = "duplicate"
            if reason is not None:
                dropped[reason] += 1
                continue
            seen_texts.add(_text_key(text))
            samples.append(Sample(TIME, span.repo, change.path, lang, change.sha, text))
    finally:
        blobs.close()
    info = {
        "repo": span.repo,
        "since": span.since,
        "since_commit": span.since_commit,
        "until": span.until,
        "until_commit": span.until_commit,
        "changed_files": len(changes),
        "examined": examined,
        "dropped": dict(sorted(dropped.items())),
        "files": len(samples),
    }
    return samples, info


def choose_splits(requested: str | None, since: str | None, view: DatasetView) -> list[str]:
    """The splits to evaluate: ``--split`` if given, else ``time`` when ``--since`` is, else ``validation``."""
    if requested is None:
        requested = TIME if since is not None else VALIDATION
    splits = list(SPLITS) if requested == "both" else [requested]
    if since is not None and TIME not in splits:
        raise InputError(f"--since only applies to the time split; add --split time or --split both (not {requested}).")
    if VALIDATION in splits and view.count(VALIDATION) == 0:
        hint = (
            "Evaluate on a time split instead: pass --since COMMIT (files changed after COMMIT)"
            if TIME not in splits
            else "Use --split time"
        )
        raise InputError(
            f"{view.out_dir} has no validation records (it was built with --val-fraction 0 or is too small). "
            f"{hint}, or rebuild the dataset with --val-fraction above 0.",
            title="Nothing to evaluate on",
        )
    return splits


def load_samples(
    view: DatasetView,
    splits: list[str],
    *,
    repo: str | None,
    since: str | None,
    until: str | None,
    max_files: int,
    seed: int,
    progress: Progress,
) -> SampleSet:
    """The samples of every requested split, and the training data's identifier index."""
    time_repo = view.repo_name(repo) if TIME in splits or repo is not None else None
    span = time_range(view, time_repo, since, until) if TIME in splits and time_repo is not None else None
    training = TrainingIndex(view, signatures=span is not None, progress=progress)
    found: list[Sample] = []
    infos: dict[str, dict[str, Any]] = {}
    if VALIDATION in splits:
        samples, infos[VALIDATION] = validation_samples(view, time_repo, max_files, seed)
        found.extend(samples)
    if span is not None:
        samples, infos[TIME] = time_samples(view, training, span, max_files, seed)
        found.extend(samples)
    if not found:
        raise InputError(
            f"No held-out files to evaluate on ({_describe(infos)}). Pass an older --since commit, "
            "or --split validation / both.",
            title="Nothing to evaluate on",
        )
    return SampleSet(found, infos, training.definitions)


def _describe(infos: dict[str, dict[str, Any]]) -> str:
    parts = []
    if VALIDATION in infos:
        parts.append(f"validation: {infos[VALIDATION]['records']} records")
    if TIME in infos:
        info = infos[TIME]
        dropped = ", ".join(f"{k} {v}" for k, v in info["dropped"].items()) or "none"
        parts.append(
            f"time split {info['since_commit'][:12]}..{info['until_commit'][:12]} of {info['repo']}: "
            f"{info['changed_files']} files added or modified, dropped: {dropped}"
        )
    return "; ".join(parts)
