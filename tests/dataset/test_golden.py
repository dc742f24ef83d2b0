"""The dataset a fixed input gives, byte for byte, against a stored expectation.

The expectation (``golden/expected.json``) was written by the builder before it was made fast; any speed work
must leave every output file identical. A deliberate change of output is made by regenerating it with
``REPOPILOT_UPDATE_GOLDEN=1`` and saying why in the commit and the README.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.dataset import builder, output
from pipelines.dataset.builder import build, update
from pipelines.dataset.config import DatasetConfig, RepoSpec
from tests.dataset.conftest import ENV, Repo, python_file, read_dataset
from tests.dataset.test_build import make_mixed_repo, near_copy
from tests.dataset.test_secrets import SAMPLES

EXPECTED = Path(__file__).parent / "golden" / "expected.json"
CONFIG = DatasetConfig(shard_records=4, val_fraction=0.2, max_file_bytes=20_000, file_commits=True)

UNICODE = (
    "# -*- coding: utf-8 -*-\n"
    '"""Ünïcödé: 日本語, emoji 🚀, a tab\there, a form feed \x0c, bell \x07 and a DEL \x7f."""\n'
    "GREETING = 'grüß dich'  # non-ASCII identifiers below\n"
    "π = 3.14159\n"
    "def größe(wert):\n    return wert * π\n"
)
CRLF = "public class Crlf {\r\n    int value = 1;\r\n    int next() { return value + 1; }\r\n}\r\n"


def first_history(root: Path) -> dict[str, Repo]:
    """Two repos: every filter, secrets of every kind, exact copies (also across repos)."""
    main = Repo(root / "main")
    make_mixed_repo(main)
    main.commit({f"secrets/{s.name}.py": s.text for s in SAMPLES}, message="planted secrets")
    main.commit({"text/unicode.py": UNICODE, "text/Crlf.java": CRLF}, message="unicode")
    other = Repo(root / "other")
    other.commit({"lib/own.py": python_file("own", body_lines=15, seed=3)}, message="other")
    return {"main": main, "other": other}


def second_history(repos: dict[str, Repo]) -> None:
    """More commits: new modules, a near pair, a rename, an edit, a deletion, a copy into the other repo."""
    main, other = repos["main"], repos["other"]
    for i in range(12):
        main.commit({f"pkg/mod_{i}.py": python_file(f"mod{i}", body_lines=10 + i, seed=i)}, message=f"module {i}")
    base = python_file("shared", body_lines=30, seed=7)
    main.commit({"pkg/shared.py": base, "pkg/shared_near.py": near_copy(base)}, message="near pair")
    main.git("mv", "pkg/mod_3.py", "pkg/renamed_3.py")
    main.commit({"pkg/mod_4.py": python_file("mod4", body_lines=20, seed=40), "src/app.py": None}, message="edits")
    other.commit({"lib/shared.py": base}, message="copy")


def snapshot(out: Path, repos: dict[str, Repo]) -> dict[str, str]:
    """Every output file as text, with the repos' temporary paths replaced by their names."""
    found = {}
    for rel, data in read_dataset(out).items():
        text = data.decode("utf-8")
        for name, repo in repos.items():
            text = text.replace(json.dumps(str(repo.path))[1:-1], f"<{name}>")
        found[rel] = text
    return found


def build_both_ways(root: Path, config: DatasetConfig = CONFIG) -> tuple[dict[str, str], dict[str, str]]:
    """(a fresh build after both histories, an update from a build of the first) as snapshots."""
    repos = first_history(root / "repos")
    specs = [RepoSpec(name, str(repo.path), exclude=("docs/**",)) for name, repo in repos.items()]
    incremental = root / "ds-incremental"
    build(incremental, specs, config)
    second_history(repos)
    update(incremental)
    build(root / "ds", specs, config)
    return snapshot(root / "ds", repos), snapshot(incremental, repos)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):  # commits made outside Repo.commit's clock
        monkeypatch.setitem(ENV, variable, "1700000000 +0000")


def test_build_and_update_give_the_stored_dataset(tmp_path: Path, fixed_clock: None) -> None:
    got, incremental = build_both_ways(tmp_path)
    if os.environ.get("REPOPILOT_UPDATE_GOLDEN") == "1":
        EXPECTED.parent.mkdir(exist_ok=True)
        EXPECTED.write_text(json.dumps(got, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    assert sorted(got) == sorted(expected)
    for rel in expected:
        assert got[rel] == expected[rel], f"{rel} differs from the stored dataset"
    assert incremental == expected  # the same content reached through an update is identical too


def test_the_bulk_paths_give_the_same_dataset(
    tmp_path: Path, fixed_clock: None, monkeypatch: pytest.MonkeyPatch, loops: str
) -> None:
    """What a big repository takes (worker pool, bulk range lookups) gives what the one-at-a-time paths give, with the
    compiled loops and with their numpy twins."""
    monkeypatch.setattr(builder, "_PARALLEL_FROM", 0)
    monkeypatch.setattr(output, "_BULK_RANGES", 0)
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    assert build_both_ways(tmp_path) == (expected, expected)


def contents(snapshot: dict[str, str]) -> tuple[list[dict], dict]:
    """(every record in the manifest's order, every index entry with its shard's place in that order)."""
    manifest = json.loads(snapshot["manifest.json"])
    shards = [shard["file"] for split in ("train", "validation") for shard in manifest["shards"][split]]
    lines = [json.loads(line) for name in shards for line in snapshot[name].splitlines()]
    index: dict = {}
    for chunk in manifest["index"]:
        for repo, files in json.loads(snapshot[chunk["file"]]).items():
            index.setdefault(repo, {}).update(files)
    for entry in (e for files in index.values() for e in files.values() if "shard" in e):
        entry["shard"] = shards.index(entry["shard"])  # shards are named by their content
    return lines, index


def test_without_file_commits_only_the_commits_are_gone(tmp_path: Path, fixed_clock: None) -> None:
    """The default (no history walk): the stored dataset, less each record's and index entry's ``commit``."""
    got, incremental = build_both_ways(tmp_path, replace(CONFIG, file_commits=False))
    assert got == incremental
    expected_records, expected_index = contents(json.loads(EXPECTED.read_text(encoding="utf-8")))
    records, index = contents(got)
    for entry in [*expected_records, *(e for files in expected_index.values() for e in files.values())]:
        assert len(entry.pop("commit")) == 40
    assert len(records) > 20 and records == expected_records
    assert index == expected_index
