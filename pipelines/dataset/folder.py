"""Reading a dataset folder: the one place that knows its layout (the builder in ``output`` writes it).

``manifest.json`` is the commit point: a folder holds a dataset once it exists, and it lists every shard and
index chunk of that version. ``stats.json`` holds the counts behind ``repopilot dataset stats``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.errors import DatasetError

FORMAT = "repopilot-dataset/1"
MANIFEST = "manifest.json"
STATS = "stats.json"
SPLITS = ("train", "validation")


def is_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds a complete dataset (its manifest is written last)."""
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{out_dir} holds no dataset (no {MANIFEST}). Build one first.") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is damaged ({exc}). Run `repopilot dataset update` to rewrite it.") from None


def read_stats(out_dir: Path) -> dict[str, Any]:
    """``stats.json`` (empty when it is missing or unreadable)."""
    try:
        return json.loads((Path(out_dir) / STATS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def indexed_commits(manifest: dict[str, Any]) -> dict[str, str | None]:
    """repo name -> the commit the dataset indexed."""
    return {name: info.get("commit") for name, info in manifest.get("repos", {}).items()}


def shard_names(manifest: dict[str, Any], splits: Iterable[str] = SPLITS) -> list[str]:
    """The shard files (``train/<hash>.jsonl``, ...) a manifest lists, in manifest order. A shard's name is the hash of
    its content: an unchanged name is an unchanged shard."""
    return [shard["file"] for split in splits for shard in manifest.get("shards", {}).get(split, [])]


def data_files(manifest: dict[str, Any]) -> list[str]:
    """Every file of the version besides the manifest and stats: its shards, then its index chunks."""
    return [*shard_names(manifest), *(chunk["file"] for chunk in manifest.get("index", []))]


def read_shard(out_dir: Path, name: str) -> list[dict[str, Any]]:
    """The records of one shard the manifest lists."""
    path = Path(out_dir) / name
    try:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        raise DatasetError(f"{path} is listed in the manifest but missing. Run `repopilot dataset update`.") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is damaged ({exc}). Rebuild the dataset with --force.") from None


def file_index(out_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """repo -> path -> {sha, status, commit[, shard, line, split, lang | dup_of]} for every file seen."""
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for chunk in read_manifest(out_dir)["index"]:
        for repo, entries in json.loads((Path(out_dir) / chunk["file"]).read_text(encoding="utf-8")).items():
            files.setdefault(repo, {}).update(entries)
    return files
