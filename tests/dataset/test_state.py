"""A state with no file yet (a new build) is held in memory until its commit: it answers every query as SQLite
answers it for a state written row by row, and writes each file once, whole, at commit."""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
from pathlib import Path

from pipelines.dataset.rows import INDEX_SELECTION, FileRow, shard_selection
from pipelines.dataset.state import StateStore


def rows(seed: int, count: int) -> list[FileRow]:
    rng = random.Random(seed)
    made = []
    for i in range(count):
        repo = rng.choice(["alpha", "beta"])
        made.append(
            FileRow(
                repo=repo, path=f"src/{rng.randrange(10**6):06d}_{i}.py", mode="100644", sha=f"{rng.randrange(40):040}",
                size=rng.randrange(1, 5000), commit_sha="", lang="python", split=rng.choice(["train", "validation"]),
                boundary=int(rng.random() < 0.1), filter_reason=rng.choice([None, None, None, "language"]),
                status="candidate", iboundary=int(rng.random() < 0.05),
            )
        )  # fmt: skip
    return made


def fill(store: StateStore, made: list[FileRow], seed: int) -> None:
    """What an update does: files put, their fates set, some placed."""
    rng = random.Random(seed)
    store.put_many(made)
    fates = [(row.key, rng.choice(["kept", "kept", "duplicate"]), None) for row in made if row.filter_reason is None]
    store.set_statuses(fates)
    store.set_locations([(row.key, f"train/{rng.randrange(9)}.jsonl", i) for i, row in enumerate(made[::3])])
    store.set_chunks([row.key for row in made[::5]], "index/0.json")


def test_a_new_state_is_held_and_each_file_written_once_at_commit(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    store.begin()
    assert store.held
    made = rows(1, 300)
    fill(store, made, 2)
    db = sqlite3.connect(tmp_path / "state.sqlite")
    assert db.execute("SELECT count(*) FROM files").fetchone() == (0,)  # nothing written before the commit
    expected = {row.key: store.get(row.key) for row in made}
    indexes = "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'files' ORDER BY name"
    schema = db.execute(indexes).fetchall()
    store.commit()  # rows go in without the indexes, which are made again after them
    assert not store.held
    written = {(r[0], r[1]): FileRow(*r) for r in db.execute("SELECT * FROM files")}
    assert written == expected
    assert db.execute(indexes).fetchall() == schema and len(schema) >= 7
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.begin()
    assert not store.held  # a state with files is read from and written to SQLite
    store.rollback()
    store.close()


def test_a_held_state_answers_as_sqlite_does(tmp_path: Path) -> None:
    made = rows(3, 600)
    held = StateStore(tmp_path / "held.sqlite")
    held.begin()
    fill(held, made, 4)
    written = StateStore(tmp_path / "written.sqlite")
    written.begin()
    written.put_many([rows(9, 1)[0]])  # a state with a file already: not held
    written.commit()
    written.begin()
    assert held.held and not written.held
    written.delete(rows(9, 1)[0].key)
    fill(written, made, 4)
    # (the written state's keys and ranges come from SQLite; its rows from its cache, which holds their places)
    probes = [row.key for row in made[::7]] + [("alpha", ""), ("alpha", "src/5"), ("beta", "zzz"), ("gamma", "x")]
    for sel in (shard_selection("train"), shard_selection("validation"), INDEX_SELECTION):
        assert held.selection_keys(sel) == written.selection_keys(sel)
        for key in probes:
            assert held.range_start(sel, key) == written.range_start(sel, key), (sel, key)
            assert held.before(sel, key) == written.before(sel, key), (sel, key)
            start = held.range_start(sel, key)
            if start is not None:
                assert held.range_end(sel, start) == written.range_end(sel, start)
                assert held.range_rows(sel, start) == written.range_rows(sel, start)
    shas = {row.sha for row in made[::4]}
    assert held.candidates_by_sha(shas) == written.candidates_by_sha(shas)
    fates = [{path: (r.sha, r.status) for path, r in store.files_of("alpha").items()} for store in (held, written)]
    assert fates[0] == fates[1] and len(fates[0]) > 100  # (files_of is asked before any file is placed)
    assert held.get(("gamma", "x")) is None and written.get(("gamma", "x")) is None
    for store in (held, written):
        store.rollback()
        store.close()


def test_after_a_build_s_commit_the_state_is_whole_in_its_file_and_no_thread_is_left(tmp_path: Path) -> None:
    """A build's commit copies its log into the database file in a thread of its own; closing waits for it."""
    before = threading.active_count()
    store = StateStore(tmp_path / "state.sqlite")
    store.begin()
    made = rows(3, 2000)
    fill(store, made, 4)
    expected = {row.key: store.get(row.key) for row in made}
    store.commit()
    store.close()
    assert threading.active_count() == before
    assert not (tmp_path / "state.sqlite-wal").exists()
    alone = tmp_path / "alone.sqlite"  # the database file without its log holds every file
    shutil.copyfile(tmp_path / "state.sqlite", alone)
    db = sqlite3.connect(alone)
    assert {(r[0], r[1]): FileRow(*r) for r in db.execute("SELECT * FROM files")} == expected
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
