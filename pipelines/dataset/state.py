"""The dataset's own state in SQLite (WAL): what is indexed, each file's fate, and the blob cache.

``manifest.json`` and ``stats.json`` are exports of this state. The state changes in one transaction
per update, after the new shard files are on disk, so a run killed at any point leaves either the old
state or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import operator
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from pipelines.dataset.dedup import BANDS
from pipelines.dataset.filters import KEPT, BlobAnalysis
from pipelines.dataset.rows import INDEX_SELECTION, FileRow, Key, Selection, SelectionKeys, lsh_chunk, shard_selection
from pipelines.errors import DatasetError

SCHEMA_VERSION = 4
# Schema 1 kept one near-duplicate index row per band and another MinHash: a state of it is migrated by
# forgetting both (and the cached analyses), and the next update re-analyses every file once.
_MIGRATIONS = {1: "DROP TABLE IF EXISTS lsh; DELETE FROM blobs;"}
# Schema 3 only made the files' commits optional (settings without ``file_commits`` mean on): a state of 2 is
# read as it is. The bump makes an older repopilot refuse a newer state rather than give commits to some files
# of a dataset without them. Schema 4 keeps the near-duplicate index in LSH_CHUNKS rows instead of one row per file:
# a state of 2 or 3 has its rows regrouped (see :meth:`StateStore._regroup_lsh`).
_REGROUP_LSH = {2, 3}
LSH_ROW_BYTES = BANDS * 8  # a file's band buckets, int64 little-endian

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repos(
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, ref TEXT NOT NULL, commit_sha TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    repo TEXT NOT NULL, path TEXT NOT NULL, mode TEXT NOT NULL, sha TEXT NOT NULL, size INTEGER NOT NULL,
    commit_sha TEXT NOT NULL, lang TEXT, split TEXT NOT NULL, boundary INTEGER NOT NULL,
    filter_reason TEXT, status TEXT NOT NULL, dup_of TEXT, shard TEXT, line INTEGER,
    iboundary INTEGER NOT NULL, chunk TEXT, PRIMARY KEY(repo, path));
CREATE INDEX IF NOT EXISTS files_by_sha ON files(sha) WHERE filter_reason IS NULL;
CREATE INDEX IF NOT EXISTS files_kept ON files(split, repo, path) WHERE status = 'kept';
CREATE INDEX IF NOT EXISTS files_starts ON files(split, repo, path) WHERE status = 'kept' AND boundary = 1;
DROP INDEX IF EXISTS files_by_shard;
DROP INDEX IF EXISTS files_by_chunk;
CREATE INDEX IF NOT EXISTS files_in_shard ON files(shard) WHERE shard IS NOT NULL;
CREATE INDEX IF NOT EXISTS files_in_chunk ON files(chunk) WHERE chunk IS NOT NULL;
CREATE INDEX IF NOT EXISTS files_chunk_starts ON files(repo, path) WHERE iboundary = 1;
CREATE TABLE IF NOT EXISTS outputs(
    kind TEXT NOT NULL, name TEXT PRIMARY KEY, split TEXT NOT NULL, first TEXT NOT NULL, items INTEGER NOT NULL,
    bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS totals(
    name TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY(name, key));
CREATE TABLE IF NOT EXISTS lsh_chunks(chunk INTEGER PRIMARY KEY, keys BLOB NOT NULL, buckets BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blobs(
    akey TEXT NOT NULL, sha TEXT NOT NULL, reason TEXT, text_bytes INTEGER NOT NULL,
    redactions TEXT NOT NULL, signature BLOB, PRIMARY KEY(akey, sha));
"""


_FILE_COLUMNS = ", ".join(f.name for f in fields(FileRow))
_row_values = operator.attrgetter(*(f.name for f in fields(FileRow)))
_PUT = f"INSERT OR REPLACE INTO files({_FILE_COLUMNS}) VALUES ({', '.join('?' * len(fields(FileRow)))})"
_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default
_CHUNK = 500  # keys per IN (...) query
_BULK_SHAS = 2000  # contents whose files are looked up by reading every file's content id once


class StateStore:
    """All reads and writes of ``state.sqlite``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Rows read or written by this connection, so that an update asks SQLite once per file; written through
        # (but for their places, see below), dropped on rollback. A cached row is never changed in place (a change
        # caches a new object), but for the unwritten rows of a held state. Where the cache has a row, it is the row.
        self.rows: dict[Key, FileRow | None] = {}
        # Cached rows whose place (shard, line, index chunk) is not written yet: a build places every file twice
        # (its record, then its index entry) and writes each place once (see :meth:`_place`).
        self.unplaced: dict[Key, None] = {}
        # A state with no file yet (a new build, or one resumed after a kill) is held: every row is in the cache and
        # its files are written once, whole, at commit (not inserted, then marked kept, then placed); until then
        # queries that read many files are answered from the cache (see :meth:`begin`).
        self.held = False
        self.unwritten: dict[Key, None] = {}
        self._selections: dict[Selection, SelectionKeys] = {}
        self._checkpointing: threading.Thread | None = None
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._open_schema()

    def _open_schema(self) -> None:
        """Create the tables, or bring an older state to this schema; a state of another version is refused before
        anything in it is changed."""
        has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None
        version = self.get_meta("schema") if has_meta else None
        if version is not None and int(version) not in (SCHEMA_VERSION, *_MIGRATIONS, *_REGROUP_LSH):
            raise DatasetError(
                f"{self.path} was written by another version of repopilot (schema {version}). "
                "Rebuild it with `repopilot dataset build --force`."
            )
        self.db.executescript(_SCHEMA)
        if version is not None and int(version) in _MIGRATIONS:
            self.db.executescript(_MIGRATIONS[int(version)])
            self.set_meta("reanalyse", "1")
            version = None
        if version is not None and int(version) in _REGROUP_LSH:
            self._regroup_lsh()
        elif version is None:
            self.set_meta("schema", str(SCHEMA_VERSION))

    def close(self) -> None:
        if self._checkpointing is not None:
            self._checkpointing.join()
            self._checkpointing = None
        self.db.close()

    # -- transactions -------------------------------------------------------------------------------
    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.held = self.db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def commit(self) -> None:
        big = bool(self.unwritten)
        if big:
            self.db.execute("PRAGMA wal_autocheckpoint=0")  # not in COMMIT: see _checkpoint_aside
            rows = [row for row in map(self.rows.get, self.unwritten) if row is not None]
            # Into an empty table (a held state), rows go faster without its indexes, made again after them.
            indexes = self.db.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'files' AND sql IS NOT NULL"
            ).fetchall()
            for name, _ in indexes:
                self.db.execute(f"DROP INDEX {name}")
            self.db.executemany(_PUT, map(_row_values, rows))
            for _, sql in indexes:
                self.db.execute(sql)
            for key in self.unwritten:
                self.unplaced.pop(key, None)
        self._write_places()
        self.db.execute("COMMIT")
        self._release()
        if big:
            self.db.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
            self._checkpoint_aside()

    def _checkpoint_aside(self) -> None:
        """Copy what the write-ahead log holds into the database file in a thread of its own, on a connection of its
        own (SQLite works without the GIL), while the command goes on: after a build's commit, ~20 ms its last steps
        (exporting the manifest, stopping the workers) no longer wait for. :meth:`close` waits for it; a checkpoint
        that fails here is made there (at the close of the last connection), as it always is."""

        def run() -> None:
            with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(self.path)) as other:
                other.execute("PRAGMA wal_checkpoint(PASSIVE)")

        self._checkpointing = threading.Thread(target=run, name="state-checkpoint", daemon=True)
        self._checkpointing.start()

    def rollback(self) -> None:
        self.rows.clear()
        self.unplaced.clear()
        self._release()
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def _release(self) -> None:
        self.held = False
        self.unwritten.clear()
        self._selections.clear()

    # -- meta ---------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- repos --------------------------------------------------------------------------------------
    def repos(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT name, spec, ref, commit_sha FROM repos ORDER BY name").fetchall()
        return {name: {"spec": json.loads(spec), "ref": ref, "commit": c} for name, spec, ref, c in rows}

    def put_repo(self, name: str, spec: dict[str, Any], ref: str, commit_sha: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO repos(name, spec, ref, commit_sha) VALUES (?, ?, ?, ?)",
            (name, json.dumps(spec, sort_keys=True), ref, commit_sha),
        )

    def delete_repo(self, name: str) -> None:
        self.db.execute("DELETE FROM repos WHERE name = ?", (name,))

    # -- files --------------------------------------------------------------------------------------
    def files_of(self, repo: str) -> dict[str, FileRow]:
        if self.held:
            return {key[1]: row for key, row in self.rows.items() if row is not None and key[0] == repo}
        cur = self.db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE repo = ?", (repo,))
        return {row[1]: FileRow(*row) for row in cur}

    def get(self, key: Key) -> FileRow | None:
        if key not in self.rows:
            if self.held:
                return None
            row = self.db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE repo = ? AND path = ?", key).fetchone()
            self.rows[key] = None if row is None else FileRow(*row)
        return self.rows[key]

    def prefetch(self, keys: Iterable[Key]) -> None:
        """Read the rows of many keys at once (into the cache that :meth:`get` answers from)."""
        if self.held:
            return
        by_repo: dict[str, list[str]] = {}
        for repo, path in keys:
            if (repo, path) not in self.rows:
                by_repo.setdefault(repo, []).append(path)
        for repo, paths in by_repo.items():
            for i in range(0, len(paths), _CHUNK):
                chunk = paths[i : i + _CHUNK]
                self.rows.update(((repo, p), None) for p in chunk)
                marks = ", ".join("?" * len(chunk))
                cur = self.db.execute(
                    f"SELECT {_FILE_COLUMNS} FROM files WHERE repo = ? AND path IN ({marks})", (repo, *chunk)
                )
                for values in cur:
                    row = FileRow(*values)
                    self.rows[row.key] = row

    def put_many(self, rows: list[FileRow]) -> None:
        if self.held:
            self.unwritten.update((row.key, None) for row in rows)
            self._selections.clear()
        else:
            self.db.executemany(_PUT, map(_row_values, rows))
        self.rows.update((row.key, row) for row in rows)

    def delete(self, key: Key) -> None:
        self.db.execute("DELETE FROM files WHERE repo = ? AND path = ?", key)
        self.rows[key] = None
        self.unwritten.pop(key, None)
        self._selections.clear()

    def set_statuses(self, changes: list[tuple[Key, str, str | None]]) -> None:
        """Record each file's fate: (key, status, dup_of) each."""
        if self.held:
            self.unwritten.update((key, None) for key, _, _ in changes)
            self._selections.clear()
        else:
            self.db.executemany(
                "UPDATE files SET status = ?, dup_of = ? WHERE repo = ? AND path = ?",
                [(status, dup_of, *key) for key, status, dup_of in changes],
            )
        for key, status, dup_of in changes:
            self._changed(key, status=status, dup_of=dup_of)

    def set_location(self, key: Key, shard: str | None, line: int | None) -> None:
        self.set_locations([(key, shard, line)])

    def set_locations(self, moves: list[tuple[Key, str | None, int | None]]) -> None:
        """Record where records now are: (key, shard, line) each."""
        rows, unwritten = self.rows, self.unwritten
        for key, shard, line in moves:
            row = rows.get(key)
            if row is not None and key in unwritten:  # as _place does, without its keywords (a build places every file)
                row.shard, row.line = shard, line
            else:
                self._place(key, shard=shard, line=line)

    def _place(self, key: Key, **place: object) -> None:
        """Change a row's place columns; of a cached row in the cache only, until :meth:`_write_places`. No query
        filters on those columns but :meth:`drop_output_if_unused`, which writes them first, and every reader of
        whole rows prefers the cache."""
        row = self.rows.get(key)
        if row is None:
            columns = ", ".join(f"{name} = ?" for name in place)
            self.db.execute(f"UPDATE files SET {columns} WHERE repo = ? AND path = ?", (*place.values(), *key))
        elif key in self.unwritten:  # written whole at commit
            row.__dict__.update(place)
        else:
            self._changed(key, **place)
            self.unplaced[key] = None

    def _write_places(self) -> None:
        rows = [row for row in map(self.rows.get, self.unplaced) if row is not None]
        self.db.executemany(
            "UPDATE files SET shard = ?, line = ?, chunk = ? WHERE repo = ? AND path = ?",
            [(row.shard, row.line, row.chunk, row.repo, row.path) for row in rows],
        )
        self.unplaced.clear()

    def _changed(self, key: Key, **values: object) -> None:
        cached = self.rows.get(key)
        if cached is None:
            return
        if key in self.unwritten:  # a new row of a held state: no one holds it from before this update
            cached.__dict__.update(values)
            return
        changed = self.rows[key] = object.__new__(FileRow)
        changed.__dict__.update(cached.__dict__, **values)

    def candidates_by_sha(self, shas: Iterable[str]) -> dict[str, list[Key]]:
        """sha -> the keys (sorted) of the files with that content that passed the filters."""
        found: dict[str, list[Key]] = {}
        if self.held:
            chosen = set(shas)
            for key, row in self.rows.items():
                if row is not None and row.filter_reason is None and row.sha in chosen:
                    found.setdefault(row.sha, []).append(key)
            return {sha: sorted(keys) for sha, keys in found.items()}
        wanted = sorted(set(shas))
        if len(wanted) >= _BULK_SHAS:  # most of the files (a build): one pass over the table beats the lookups
            chosen = set(wanted)
            rows = self.db.execute("SELECT sha, repo, path FROM files NOT INDEXED WHERE filter_reason IS NULL")
            for sha, repo, path in rows:  # a scan of the table: through the index by sha it takes 2.5x as long
                if sha in chosen:
                    found.setdefault(sha, []).append((repo, path))
            wanted = []
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            cur = self.db.execute(
                f"SELECT sha, repo, path FROM files WHERE sha IN ({marks}) AND filter_reason IS NULL", chunk
            )
            for sha, repo, path in cur:
                found.setdefault(sha, []).append((repo, path))
        for keys in found.values():
            keys.sort()
        return found

    # -- ranges: shards (kept files of one split) and index chunks (all files), in key order -------------
    def range_start(self, sel: Selection, key: Key) -> Key | None:
        """The first key of the range that holds (or would hold) ``key``."""
        if self.held:
            return self._held(sel).range_start(sel, key)
        row = self.db.execute(
            f"SELECT repo, path FROM files WHERE {sel.where} AND {sel.boundary} = 1 "
            "AND (repo, path) <= (?, ?) ORDER BY repo DESC, path DESC LIMIT 1",
            (*sel.params, *key),
        ).fetchone()
        if row is not None:
            return (row[0], row[1])
        row = self.db.execute(
            f"SELECT repo, path FROM files WHERE {sel.where} ORDER BY repo, path LIMIT 1", sel.params
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def selection_keys(self, sel: Selection) -> tuple[list[Key], list[Key]]:
        """(every key of the selection, the keys that start a range), in key order."""
        if self.held:
            return self._held(sel).keys, self._held(sel).starts
        cur = self.db.execute(f"SELECT repo, path, {sel.boundary} FROM files WHERE {sel.where}", sel.params)
        rows = sorted(cur)
        return [(r, p) for r, p, _ in rows], [(r, p) for r, p, b in rows if b == 1]

    def before(self, sel: Selection, key: Key) -> Key | None:
        if self.held:
            return self._held(sel).before(sel, key)
        row = self.db.execute(
            f"SELECT repo, path FROM files WHERE {sel.where} AND (repo, path) < (?, ?) "
            "ORDER BY repo DESC, path DESC LIMIT 1",
            (*sel.params, *key),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def range_end(self, sel: Selection, start: Key) -> Key | None:
        """The first boundary after ``start`` (the start of the next range), None for the last range."""
        if self.held:
            return self._held(sel).range_end(sel, start)
        row = self.db.execute(
            f"SELECT repo, path FROM files WHERE {sel.where} AND {sel.boundary} = 1 "
            "AND (repo, path) > (?, ?) ORDER BY repo, path LIMIT 1",
            (*sel.params, *start),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def range_rows(self, sel: Selection, start: Key) -> list[FileRow]:
        """Rows from ``start`` up to (not including) the next boundary after it.

        Rows this connection has read or written are taken from its cache (they are the rows, and cost no FileRow to
        make): the keys are asked first, and the whole rows only when one of them is not cached (a small update);
        those are cached too."""
        if self.held:
            return [self.rows[key] for key in self._held(sel).range_keys(start)]  # type: ignore[misc]
        nxt = self.range_end(sel, start)
        upper, bound = ("", ()) if nxt is None else (" AND (repo, path) < (?, ?)", nxt)
        where = f"FROM files WHERE {sel.where} AND (repo, path) >= (?, ?){upper} ORDER BY repo, path"
        params = (*sel.params, *start, *bound)
        cached = self.rows
        found = [cached.get(key) for key in self.db.execute(f"SELECT repo, path {where}", params)]
        if all(found):
            return found  # type: ignore[return-value]
        rows = []
        for values in self.db.execute(f"SELECT {_FILE_COLUMNS} {where}", params):
            key = (values[0], values[1])
            row = cached.get(key)
            if row is None:
                row = cached[key] = FileRow(*values)
            rows.append(row)
        return rows

    def _held(self, sel: Selection) -> SelectionKeys:
        """The keys of a selection of a held state, from the cache (kept until a file or a fate changes)."""
        if sel not in self._selections:
            self._select_held()
            self._selections.setdefault(sel, SelectionKeys([], []))  # a split with no kept file
        return self._selections[sel]

    def _select_held(self) -> None:
        """The keys of every selection (all files, the kept files of each split) of a held state, in one pass over
        its cached rows in key order (a build asks for all of them, one after the other)."""
        every: list[Key] = []
        starts: list[Key] = []
        kept: dict[str, SelectionKeys] = {}
        rows = self.rows
        for key in sorted(rows):
            row = rows[key]
            if row is None:
                continue
            every.append(key)
            if row.iboundary == 1:
                starts.append(key)
            if row.status == KEPT:
                split = kept.get(row.split) or kept.setdefault(row.split, SelectionKeys([], []))
                split.keys.append(key)
                if row.boundary == 1:
                    split.starts.append(key)
        self._selections[INDEX_SELECTION] = SelectionKeys(every, starts)
        self._selections.update((shard_selection(split), keys) for split, keys in kept.items())

    def set_chunks(self, keys: list[Key], chunk: str) -> None:
        rows, unwritten = self.rows, self.unwritten
        for key in keys:
            row = rows.get(key)
            if row is not None and key in unwritten:  # as in set_locations
                row.chunk = chunk
            else:
                self._place(key, chunk=chunk)

    # -- output files (shards and index chunks) ---------------------------------------------------------
    def put_output(self, kind: str, name: str, split: str, first: Key, items: int, nbytes: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO outputs(kind, name, split, first, items, bytes) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, name, split, f"{first[0]}\x01{first[1]}", items, nbytes),
        )

    def drop_output_if_unused(self, name: str) -> None:
        column = "chunk" if name.startswith("index/") else "shard"
        if self.held:
            used = any(getattr(row, column) == name for row in self.rows.values() if row is not None)
        else:
            self._write_places()
            used = self.db.execute(f"SELECT 1 FROM files WHERE {column} = ? LIMIT 1", (name,)).fetchone() is not None
        if not used:
            self.db.execute("DELETE FROM outputs WHERE name = ?", (name,))

    def outputs(self, kind: str) -> list[tuple[str, str, int, int]]:
        """(split, name, items, bytes) of every live output of a kind, in key order of their first item."""
        return self.db.execute(
            "SELECT split, name, items, bytes FROM outputs WHERE kind = ? ORDER BY split, first", (kind,)
        ).fetchall()

    def output_names(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM outputs")}

    # -- running totals for stats.json ----------------------------------------------------------------
    def add_totals(self, deltas: dict[tuple[str, str], int]) -> None:
        for (name, key), value in deltas.items():
            if value:
                self.db.execute(
                    "INSERT INTO totals(name, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT(name, key) DO UPDATE SET value = value + excluded.value",
                    (name, key, value),
                )
        self.db.execute("DELETE FROM totals WHERE value = 0")

    def clear_totals(self) -> None:
        self.db.execute("DELETE FROM totals")

    def totals(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for name, key, value in self.db.execute("SELECT name, key, value FROM totals ORDER BY name, key"):
            found.setdefault(name, {})[key] = value
        return found

    # -- near-duplicate index (see pipelines.dataset.lsh) ---------------------------------------------------
    def lsh_chunks(self) -> list[tuple[int, bytes, bytes]]:
        """(chunk, its keys, its buckets) of every stored chunk of the near-duplicate index."""
        return self.db.execute("SELECT chunk, keys, buckets FROM lsh_chunks ORDER BY chunk").fetchall()

    def lsh_write_chunks(self, chunks: dict[int, list[tuple[Key, bytes]]]) -> None:
        """Replace chunks with their (key, buckets) entries; a chunk with none is removed."""
        self.db.executemany("DELETE FROM lsh_chunks WHERE chunk = ?", [(c,) for c, e in chunks.items() if not e])
        self.db.executemany(
            "INSERT OR REPLACE INTO lsh_chunks(chunk, keys, buckets) VALUES (?, ?, ?)",
            [(chunk, *_encode_chunk(entries)) for chunk, entries in chunks.items() if entries],
        )

    def _regroup_lsh(self) -> None:
        """Schema 2 or 3 to 4: the per-file rows of the near-duplicate index regrouped into chunks, at once."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            chunks: dict[int, list[tuple[Key, bytes]]] = {}
            if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'lsh_bands'").fetchone():
                for repo, path, buckets in self.db.execute("SELECT repo, path, buckets FROM lsh_bands"):
                    if not isinstance(buckets, bytes) or len(buckets) != LSH_ROW_BYTES:
                        raise damaged(self.path)
                    chunks.setdefault(lsh_chunk((repo, path)), []).append(((repo, path), buckets))
                self.db.execute("DROP TABLE lsh_bands")
            self.lsh_write_chunks(chunks)
            self.set_meta("schema", str(SCHEMA_VERSION))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- blob cache ---------------------------------------------------------------------------------
    def cached_blobs(self, akey: str, shas: Iterable[str]) -> dict[str, BlobAnalysis]:
        found: dict[str, BlobAnalysis] = {}
        wanted = list(dict.fromkeys(shas))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            cur = self.db.execute(
                f"SELECT sha, reason, text_bytes, redactions, signature FROM blobs WHERE akey = ? AND sha IN ({marks})",
                (akey, *chunk),
            )
            for sha, reason, text_bytes, redactions, sig in cur:
                spans = () if redactions == "[]" else tuple(tuple(span) for span in json.loads(redactions))
                found[sha] = BlobAnalysis(reason, text_bytes, spans, sig)
        return found

    def cache_blobs(self, akey: str, analyses: list[tuple[str, BlobAnalysis]]) -> None:
        """Store analyses ((sha, analysis) each) in their own transaction."""
        if not analyses:
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO blobs(akey, sha, reason, text_bytes, redactions, signature) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(akey, sha, a.reason, a.text_bytes, a.redactions_json(), a.signature) for sha, a in analyses],
        )
        self.db.execute("COMMIT")


def damaged(path: Path) -> DatasetError:
    return DatasetError(f"{path} is damaged. Rebuild the dataset with `repopilot dataset build --force`.")


def _encode_chunk(entries: list[tuple[Key, bytes]]) -> tuple[bytes, bytes]:
    """(keys as JSON, buckets joined) of a chunk's entries, in key order."""
    entries = sorted(entries)
    return orjson.dumps([list(key) for key, _ in entries]), b"".join(buckets for _, buckets in entries)


def decode_chunk_keys(raw: bytes) -> list[Key] | None:
    """The keys of a stored chunk, None where they cannot be read (a damaged state)."""
    try:
        return [(repo, path) for repo, path in orjson.loads(raw)]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
