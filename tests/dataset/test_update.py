"""Incremental updates: equal, byte for byte, to a fresh build; cheap; and safe to kill at any point."""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.dataset import output
from pipelines.dataset.builder import build, update
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.dataset.folder import file_index
from pipelines.dataset.state import SCHEMA_VERSION
from pipelines.errors import DatasetError
from tests.dataset.conftest import Repo, python_file, read_dataset, records, run_cli

CONFIG = DatasetConfig(val_fraction=0.2, shard_records=4, file_commits=True)


def fresh(repo: Repo, out: Path, ref: str | None = None, config: DatasetConfig = CONFIG) -> dict[str, bytes]:
    """A new build (in a new folder: its state is held, and every fate decided at once; see ``settle_new``)."""
    shutil.rmtree(out, ignore_errors=True)
    build(out, [RepoSpec("project", str(repo.path), ref=ref)], config)
    return read_dataset(out)


def near_variant(text: str, salt: int) -> str:
    lines = text.splitlines()
    if len(lines) > 5:
        lines[5] = lines[5] + f"  # tweak {salt}"
    return "\n".join(lines) + "\n"


def random_commit(repo: Repo, rng: random.Random, step: int) -> str:
    """One commit of a plausible kind: add, edit, delete, rename, copy, near copy, or a noisy mix."""
    files = sorted(p.relative_to(repo.path).as_posix() for p in repo.path.rglob("*.py") if ".git" not in p.parts)
    kind = rng.choice(["add", "add", "add", "edit", "edit", "delete", "rename", "copy", "near", "mix", "junk"])
    if not files or kind == "add":
        name = f"pkg{rng.randrange(4)}/mod_{step}.py"
        return repo.commit({name: python_file(f"m{step}", body_lines=rng.randrange(4, 14), seed=step)}, "add")
    target = rng.choice(files)
    text = (repo.path / target).read_text()
    if kind == "edit":
        return repo.commit({target: text + f"\nEXTRA_{step} = {step}\n"}, "edit")
    if kind == "delete":
        return repo.commit({target: None}, "delete")
    if kind == "rename":
        (repo.path / "moved").mkdir(exist_ok=True)
        repo.git("mv", target, f"moved/{step}_{Path(target).name}")
        return repo.commit(message="rename")
    if kind == "copy":
        return repo.commit({f"copies/{step}.py": text}, "exact copy")
    if kind == "near":
        return repo.commit({f"near/{step}.py": near_variant(text, step)}, "near copy")
    if kind == "junk":
        return repo.commit({f"assets/{step}.bin": b"\x00" * 10, f"dist/{step}.min.js": "a()\n"}, "junk")
    changes = {f"pkg9/new_{step}.py": python_file(f"n{step}", seed=step + 100)}
    for other in rng.sample(files, min(3, len(files))):
        changes[other] = None if rng.random() < 0.3 else (repo.path / other).read_text() + f"# {step}\n"
    return repo.commit(changes, "mix")


@pytest.mark.parametrize(("bulk_paths", "file_commits"), [(False, True), (True, False)])
def test_replayed_history_matches_fresh_builds(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bulk_paths: bool, file_commits: bool
) -> None:
    if bulk_paths:  # the path big updates take (bulk range lookups) decides the same
        monkeypatch.setattr(output, "_BULK_RANGES", 0)
    config = replace(CONFIG, file_commits=file_commits)
    rng = random.Random(7)
    repo.commit({"pkg0/base.py": python_file("base"), "README.md": "# project\n"}, "initial")
    incremental = tmp_path / "inc"
    build(incremental, [RepoSpec("project", str(repo.path))], config)
    modes = []
    for step in range(45):
        random_commit(repo, rng, step)
        if step % 3 == 2:  # several commits between some updates
            continue
        result = update(incremental)
        modes.append(result.repos["project"]["mode"])
        assert read_dataset(incremental) == fresh(repo, tmp_path / "fresh", config=config), f"after step {step}"
    assert set(modes) == {"fast"}
    new_build = fresh(repo, tmp_path / "fresh", config=config)
    build(tmp_path / "fresh", [RepoSpec("project", str(repo.path))], config, force=True)  # over a state with files
    assert read_dataset(tmp_path / "fresh") == new_build
    assert all(("commit" in record) == file_commits for record in records(incremental))
    stats = json.loads((incremental / "stats.json").read_text())
    assert stats["files_kept"] > 15 and stats["dropped"]["duplicate"] and stats["dropped"]["near_duplicate"]
    assert len(json.loads((incremental / "manifest.json").read_text())["shards"]["train"]) > 3


def test_revert_and_merge_keep_commit_attribution_exact(repo: Repo, tmp_path: Path) -> None:
    repo.commit({"a.py": python_file("a"), "b.py": python_file("b", seed=1)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    original = (repo.path / "a.py").read_text()
    repo.commit({"a.py": original + "# temporary\n"}, "edit")
    revert = repo.commit({"a.py": original}, "revert")  # same content as indexed, newer commit
    repo.git("checkout", "-q", "-b", "side")
    repo.commit({"side.py": python_file("side", seed=3)}, "side work")
    repo.git("checkout", "-q", "main")
    repo.commit({"c.py": python_file("c", seed=4)}, "main work")
    repo.git("merge", "-q", "--no-ff", "side", "-m", "merge side")
    update(out)
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh")
    by_path = {r["path"]: r for r in records(out)}
    if "a.py" in by_path:
        assert by_path["a.py"]["commit"] == revert


@pytest.mark.parametrize("file_commits", [True, False])
def test_force_push_falls_back_to_tree_comparison(repo: Repo, tmp_path: Path, file_commits: bool) -> None:
    config = replace(CONFIG, file_commits=file_commits)
    for i in range(6):
        repo.commit({f"f{i}.py": python_file(f"f{i}", seed=i)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], config)
    repo.git("reset", "-q", "--hard", "HEAD~3")
    repo.commit({"rewritten.py": python_file("rewritten", seed=50), "f0.py": python_file("f0", seed=51)})
    result = update(out)
    assert result.repos["project"]["mode"] == "rewrite"
    assert result.repos["project"]["recomputed"] == 2  # only the two changed files, either way
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh", config=config)
    # The old commit is gone entirely (gc'd): same fallback.
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    repo.git("checkout", "-q", "--orphan", "fresh-start")
    repo.git("rm", "-q", "-rf", ".")
    repo.commit({"only.py": python_file("only", seed=60)})
    repo.git("branch", "-f", "main", "fresh-start")
    repo.git("checkout", "-q", "main")
    repo.git("branch", "-D", "fresh-start")
    update(out)
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh", config=config)
    assert [r["path"] for r in records(out)] == ["only.py"]


def test_update_to_another_ref_and_back(repo: Repo, tmp_path: Path) -> None:
    repo.commit({"a.py": python_file("a")})
    repo.git("checkout", "-q", "-b", "feature")
    repo.commit({"b.py": python_file("b", seed=2)})
    repo.git("checkout", "-q", "main")
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    result = run_cli("dataset", "update", str(out), "--ref", "project=feature")
    assert result.returncode == 0, result.stderr
    assert {r["path"] for r in records(out)} == {"a.py", "b.py"}
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh", ref="feature")
    bad = run_cli("dataset", "update", str(out), "--ref", "nope=main")
    assert bad.returncode == 1 and "no repo named nope" in bad.stderr


def test_nothing_changed_is_a_no_op(repo: Repo, tmp_path: Path) -> None:
    repo.commit({"a.py": python_file("a")})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    before = read_dataset(out)
    result = update(out)
    assert result.repos["project"]["mode"] == "unchanged" and result.records_changed == 0
    assert read_dataset(out) == before


def test_one_file_commit_touches_one_shard(repo: Repo, tmp_path: Path) -> None:
    repo.commit({f"m/f{i:03d}.py": python_file(f"f{i}", seed=i) for i in range(120)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], DatasetConfig(val_fraction=0.0, shard_records=8))
    shards_before = {s["file"] for s in json.loads((out / "manifest.json").read_text())["shards"]["train"]}
    repo.commit({"m/f050.py": python_file("f50", seed=50) + "# edited\n"})
    result = update(out)
    assert result.records_changed == 1 and result.shards_written == 1 and result.index_chunks_written == 1
    shards_after = {s["file"] for s in json.loads((out / "manifest.json").read_text())["shards"]["train"]}
    assert len(shards_after - shards_before) == 1 and len(shards_before - shards_after) == 1
    assert not any((out / s).exists() for s in shards_before - shards_after)  # old shard collected


def reader_view(out: Path) -> dict[str, bytes]:
    """What a reader of the dataset sees: the manifest and the shards it lists."""
    manifest = (out / "manifest.json").read_bytes()
    view = {"manifest.json": manifest}
    for shards in json.loads(manifest)["shards"].values():
        for shard in shards:
            view[shard["file"]] = (out / shard["file"]).read_bytes()
    return view


@pytest.mark.parametrize("point", ["analysed", "shards-written", "committed", "stats-written"])
def test_killed_update_leaves_old_dataset_and_next_run_completes(repo: Repo, tmp_path: Path, point: str) -> None:
    repo.commit({f"f{i}.py": python_file(f"f{i}", seed=i) for i in range(30)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    before = reader_view(out)
    repo.commit({"f3.py": None, "new.py": python_file("new", seed=99), "f7.py": python_file("f7", seed=70)})
    crashed = run_cli("dataset", "update", str(out), env={"REPOPILOT_FAILPOINT": point})
    assert crashed.returncode == 86
    assert reader_view(out) == before
    finished = run_cli("dataset", "update", str(out))
    assert finished.returncode == 0, finished.stderr
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh")
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_killed_build_resumes_from_its_cache(repo: Repo, tmp_path: Path) -> None:
    repo.commit({f"f{i}.py": python_file(f"f{i}", seed=i) for i in range(40)})
    out = tmp_path / "ds"
    crashed = run_cli("dataset", "build", str(out), str(repo.path), env={"REPOPILOT_FAILPOINT": "shards-written"})
    assert crashed.returncode == 86 and not (out / "manifest.json").exists()
    resumed = run_cli("dataset", "build", str(out), str(repo.path), "--progress", "json")
    assert resumed.returncode == 0, resumed.stderr
    assert '"stage": "analysing"' not in resumed.stderr  # every blob came from the cache
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh", config=DatasetConfig())


def test_sigkill_at_random_moments_never_mixes_versions(repo: Repo, tmp_path: Path) -> None:
    rng = random.Random(3)
    repo.commit({f"m/f{i:03d}.py": python_file(f"f{i}", body_lines=30, seed=i) for i in range(300)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    old_view = reader_view(out)
    for i in range(0, 300, 2):
        repo.write({f"m/f{i:03d}.py": python_file(f"g{i}", body_lines=30, seed=i + 1000)})
    repo.commit(message="big change")
    expected = fresh(repo, tmp_path / "fresh")
    new_view = reader_view(tmp_path / "fresh")
    for attempt in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "dataset", "update", str(out), "--progress", "none"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        view = reader_view(out)
        assert view in (old_view, new_view), f"mixed dataset after kill {attempt}"
        if view == new_view:
            break
    update(out)
    assert read_dataset(out) == expected


def test_a_state_of_an_older_repopilot_is_analysed_again_once(repo: Repo, tmp_path: Path) -> None:
    """Schema 1 kept another MinHash and one index row per band: the next update forgets both, looks at every
    file again (once), and gives what a fresh build gives."""
    base = python_file("base", body_lines=30)
    repo.commit({"a.py": base, "b.py": near_variant(base, 1), "c.py": python_file("c", seed=3)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    db = sqlite3.connect(out / "state.sqlite")
    db.executescript(
        "UPDATE meta SET value = '1' WHERE key = 'schema'; DROP TABLE lsh_chunks;"
        "CREATE TABLE lsh(band INTEGER, bucket INTEGER, repo TEXT, path TEXT);"
        "UPDATE blobs SET signature = zeroblob(512) WHERE signature IS NOT NULL;"
    )
    db.close()
    repo.commit({"d.py": python_file("d", seed=4)})
    result = update(out)
    assert result.repos["project"]["mode"] == "full"
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh")
    repo.commit({"e.py": python_file("e", seed=5)})
    assert update(out).repos["project"]["mode"] == "fast"
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh")


def test_a_dataset_from_before_the_file_commits_setting_keeps_its_commits(repo: Repo, tmp_path: Path) -> None:
    """A state of schema 2 (settings without ``file_commits``, written when every record had a commit) updates
    with commits, keeps its dataset version while nothing changed, and is then marked as the current schema."""
    repo.commit({"a.py": python_file("a"), "b.py": python_file("b", seed=2)})
    out = tmp_path / "inc"
    version = build(out, [RepoSpec("project", str(repo.path))], CONFIG).dataset_version
    db = sqlite3.connect(out / "state.sqlite")
    stored = json.loads(db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    del stored["file_commits"]
    db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(stored, sort_keys=True),))
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    assert update(out).dataset_version == version
    head = repo.commit({"c.py": python_file("c", seed=3)})
    assert update(out).repos["project"]["mode"] == "fast"
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh")
    assert {r["path"]: r["commit"] for r in records(out)}["c.py"] == head
    db = sqlite3.connect(out / "state.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(SCHEMA_VERSION)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))  # a newer one's
    db.execute("DROP INDEX files_in_shard")  # as a newer schema might
    db.commit()
    db.close()
    with pytest.raises(DatasetError, match="another version of repopilot"):
        update(out)
    db = sqlite3.connect(out / "state.sqlite")
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'files_in_shard'").fetchall()  # left as it was
    db.close()


def test_a_damaged_near_duplicate_index_is_reported(repo: Repo, tmp_path: Path) -> None:
    repo.commit({f"m{i}.py": python_file(f"m{i}", seed=i) for i in range(4)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    db = sqlite3.connect(out / "state.sqlite")
    db.execute("UPDATE lsh_chunks SET keys = X'7b7b'")  # not the JSON list of keys
    db.commit()
    db.close()
    repo.commit({"m0.py": python_file("m0", seed=9)})
    with pytest.raises(DatasetError, match=r"is damaged.*build --force"):
        update(out)
    build(out, [RepoSpec("project", str(repo.path))], CONFIG, force=True)
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh")


def test_a_near_duplicate_index_of_one_row_per_file_is_regrouped_and_still_finds_near_copies(
    repo: Repo, tmp_path: Path
) -> None:
    """Schema 3 kept one index row per file: opening such a state regroups the rows into chunks (in one
    transaction, no re-analysis), and later updates find near copies of files indexed before, as a fresh build."""
    bases = {f"m{i}.py": python_file(f"m{i}", body_lines=30, seed=i) for i in range(12)}
    repo.commit(bases)
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], CONFIG)
    db = sqlite3.connect(out / "state.sqlite")
    rows = []
    for keys, buckets in db.execute("SELECT keys, buckets FROM lsh_chunks").fetchall():
        for n, (name, path) in enumerate(json.loads(keys)):
            rows.append((name, path, buckets[n * 128 : (n + 1) * 128]))
    assert len(rows) == 12
    db.executescript(
        "CREATE TABLE lsh_bands(repo TEXT NOT NULL, path TEXT NOT NULL, buckets BLOB NOT NULL, "
        "PRIMARY KEY(repo, path)) WITHOUT ROWID; DROP TABLE lsh_chunks;"
        "DROP INDEX files_in_shard; CREATE INDEX files_by_shard ON files(shard);"  # as schema 3 had it
        "UPDATE meta SET value = '3' WHERE key = 'schema';"
    )
    db.executemany("INSERT INTO lsh_bands VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()
    repo.commit({"z_copy.py": near_variant(bases["m3.py"], 1)})
    result = update(out)
    assert result.repos["project"]["mode"] == "fast"  # nothing analysed again
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh")
    assert file_index(out)["project"]["z_copy.py"]["dup_of"] == "project:m3.py"
    db = sqlite3.connect(out / "state.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(SCHEMA_VERSION)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'lsh_bands'").fetchone() is None
    indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "files_in_shard" in indexes and "files_by_shard" not in indexes
    stored = [tuple(k) for (keys,) in db.execute("SELECT keys FROM lsh_chunks") for k in json.loads(keys)]
    db.close()
    assert sorted(stored) == sorted([("project", p) for p in bases] + [("project", "z_copy.py")])


@pytest.mark.parametrize("first", [True, False])
def test_a_forced_build_switches_file_commits_everywhere(repo: Repo, tmp_path: Path, first: bool) -> None:
    repo.commit({"a.py": python_file("a"), "b.py": python_file("b", seed=2)})
    repo.commit({"b.py": python_file("b", seed=3), "c.py": python_file("c", seed=4)})
    out = tmp_path / "inc"
    build(out, [RepoSpec("project", str(repo.path))], replace(CONFIG, file_commits=first))
    switched = replace(CONFIG, file_commits=not first)
    build(out, [RepoSpec("project", str(repo.path))], switched, force=True)
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh", config=switched)
    assert all(("commit" in record) == (not first) for record in records(out))
    repo.commit({"d.py": python_file("d", seed=5)})
    update(out)
    assert read_dataset(out) == fresh(repo, tmp_path / "fresh", config=switched)
