"""Settings of a dataset build, validated up front with every problem reported at once."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipelines.dataset.languages import KNOWN_LANGUAGES
from pipelines.errors import InputError

#: Bump when the way a blob is analysed changes, so cached analyses are not reused.
ANALYSIS_VERSION = 2

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class RepoSpec:
    """One repository to index."""

    name: str
    """Short unique name; prefixes nothing in records but groups them in the manifest."""
    path: str
    """Local path of a git working copy or bare repository."""
    ref: str | None = None
    """Branch, tag or sha to index; None means the checked-out branch."""
    include: tuple[str, ...] = ()
    """Globs a path must match to be kept (none given: every path may be kept)."""
    exclude: tuple[str, ...] = ()
    """Globs whose matching paths are dropped (reason ``excluded``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ref": self.ref,
            "include": list(self.include),
            "exclude": list(self.exclude),
        }


@dataclass(frozen=True)
class DatasetConfig:
    """How files are filtered, deduplicated, split and sharded."""

    max_file_bytes: int = 1_000_000
    """Files larger than this are dropped (``too_large``)."""
    max_line_length: int = 1000
    """A file with a longer line is dropped as minified (``long_lines``)."""
    max_mean_line_length: float = 200.0
    """A file whose mean line length exceeds this is dropped as minified (``long_lines``)."""
    languages: tuple[str, ...] = ()
    """Languages to keep (see ``repopilot dataset languages``); empty keeps every known one."""
    near_dup: bool = True
    """Drop near-duplicate files (MinHash estimate of Jaccard similarity over word 5-grams)."""
    near_dup_threshold: float = 0.85
    """Similarity at or above which a file is a near duplicate of an earlier one."""
    near_dup_min_tokens: int = 50
    """Files with fewer words are only exact-deduplicated (MinHash is noisy on tiny files)."""
    val_fraction: float = 0.05
    """Share of paths that go to the validation split (decided by a hash of repo and path)."""
    shard_records: int = 256
    """Mean number of records per JSONL shard (boundaries are chosen by content, so they are stable)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Extra extension -> language mappings, e.g. {".tpl": "html"}."""
    file_commits: bool = False
    """Give each record and index entry a ``commit``: the newest first-parent commit that changed the file.
    A full build then walks the whole first-parent history (2.6-3.9 s of git's time for spring-framework's
    28,500 commits, growing with the history, not the tree); the blob id (``sha``) and the indexed commit in the
    manifest identify a record's content without it."""

    def validate(self) -> None:
        problems: list[str] = []
        if self.max_file_bytes <= 0:
            problems.append("max_file_bytes must be positive")
        if self.max_line_length <= 0:
            problems.append("max_line_length must be positive")
        if self.max_mean_line_length <= 0:
            problems.append("max_mean_line_length must be positive")
        unknown = sorted(set(self.languages) - KNOWN_LANGUAGES - set(self.extra.values()))
        if unknown:
            problems.append(f"unknown languages {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_LANGUAGES))})")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            problems.append("near_dup_threshold must be in (0, 1]")
        if self.near_dup_min_tokens < 5:
            problems.append("near_dup_min_tokens must be at least 5")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append("val_fraction must be in [0, 1)")
        if self.shard_records < 1:
            problems.append("shard_records must be at least 1")
        for ext in self.extra:
            if not ext.startswith("."):
                problems.append(f"extra extension {ext!r} must start with a dot")
        if problems:
            raise InputError("; ".join(problems) + ".", title="Invalid dataset settings")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["languages"] = list(self.languages)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("file_commits", True)  # settings stored before it existed: every record had a commit
        if "languages" in values:
            values["languages"] = tuple(values["languages"])
        return cls(**values)

    def analysis_key(self) -> str:
        """Fingerprint of the settings that decide how one blob is analysed (the cache key)."""
        blob_settings = {
            "v": ANALYSIS_VERSION,
            "max_file_bytes": self.max_file_bytes,
            "max_line_length": self.max_line_length,
            "max_mean_line_length": self.max_mean_line_length,
        }
        return hashlib.sha256(json.dumps(blob_settings, sort_keys=True).encode()).hexdigest()[:16]


def validate_repos(repos: list[RepoSpec]) -> None:
    problems: list[str] = []
    seen: set[str] = set()
    for spec in repos:
        if not _NAME_RE.match(spec.name):
            problems.append(
                f"repo name {spec.name!r} must be letters, digits, '.', '_' or '-' (give another with NAME=PATH)"
            )
        if spec.name in seen:
            problems.append(f"two repos are named {spec.name!r}; name one with NAME=PATH")
        seen.add(spec.name)
    if not repos:
        problems.append("no repository given")
    if problems:
        raise InputError("; ".join(problems) + ".", title="Invalid repositories")
