"""The dataset's own state in SQLite (WAL): what is indexed, each file's fate, and the blob cache.

``manifest.json`` and ``stats.json`` are exports of this state. The state changes in one transaction
per update, after the new shard files are on disk, so a run killed at any point leaves either the old
state or the new one, never a mix.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from pipelines.errors import DatasetError

SCHEMA_VERSION = 1
Key = tuple[str, str]  # (repo, path)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repos(
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, ref TEXT NOT NULL, commit_sha TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    repo TEXT NOT NULL, path TEXT NOT NULL, mode TEXT NOT NULL, sha TEXT NOT NULL, size INTEGER NOT NULL,
    commit_sha TEXT NOT NULL, lang TEXT, split TEXT NOT NULL, boundary INTEGER NOT NULL,
    filter_reason TEXT, status TEXT NOT NULL, dup_of TEXT, shard TEXT, line INTEGER,
    PRIMARY KEY(repo, path));
CREATE INDEX IF NOT EXISTS files_by_sha ON files(sha) WHERE filter_reason IS NULL;
CREATE INDEX IF NOT EXISTS files_kept ON files(split, repo, path) WHERE status = 'kept';
CREATE INDEX IF NOT EXISTS files_starts ON files(split, repo, path) WHERE status = 'kept' AND boundary = 1;
CREATE INDEX IF NOT EXISTS files_by_shard ON files(shard);
CREATE TABLE IF NOT EXISTS lsh(band INTEGER NOT NULL, bucket INTEGER NOT NULL, repo TEXT NOT NULL,
    path TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lsh_by_bucket ON lsh(band, bucket);
CREATE INDEX IF NOT EXISTS lsh_by_key ON lsh(repo, path);
CREATE TABLE IF NOT EXISTS blobs(
    akey TEXT NOT NULL, sha TEXT NOT NULL, reason TEXT, text_bytes INTEGER NOT NULL,
    redactions TEXT NOT NULL, signature BLOB, PRIMARY KEY(akey, sha));
"""


@dataclass
class FileRow:
    """One path of one indexed repo and what became of it."""

    repo: str
    path: str
    mode: str
    sha: str
    size: int
    commit_sha: str
    lang: str | None
    split: str
    boundary: int
    filter_reason: str | None
    status: str
    dup_of: str | None = None
    shard: str | None = None
    line: int | None = None

    @property
    def key(self) -> Key:
        return (self.repo, self.path)


_FILE_COLUMNS = ", ".join(f.name for f in fields(FileRow))


@dataclass(frozen=True)
class CachedBlob:
    reason: str | None
    text_bytes: int
    redactions: list
    signature: bytes | None


class Store:
    """All reads and writes of ``state.sqlite``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        version = self.get_meta("schema")
        if version is None:
            self.set_meta("schema", str(SCHEMA_VERSION))
        elif int(version) != SCHEMA_VERSION:
            raise DatasetError(
                f"{path} was written by another version of repopilot (schema {version}). "
                "Rebuild it with `repopilot dataset build --force`."
            )

    def close(self) -> None:
        self.db.close()

    # -- transactions -------------------------------------------------------------------------------
    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

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
        cur = self.db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE repo = ?", (repo,))
        return {row[1]: FileRow(*row) for row in cur}

    def get(self, key: Key) -> FileRow | None:
        row = self.db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE repo = ? AND path = ?", key
        ).fetchone()
        return None if row is None else FileRow(*row)

    def put(self, row: FileRow) -> None:
        marks = ", ".join("?" * len(fields(FileRow)))
        self.db.execute(f"INSERT OR REPLACE INTO files({_FILE_COLUMNS}) VALUES ({marks})", astuple(row))

    def delete(self, key: Key) -> None:
        self.db.execute("DELETE FROM files WHERE repo = ? AND path = ?", key)

    def set_status(self, key: Key, status: str, dup_of: str | None) -> None:
        self.db.execute(
            "UPDATE files SET status = ?, dup_of = ? WHERE repo = ? AND path = ?", (status, dup_of, *key)
        )

    def set_location(self, key: Key, shard: str | None, line: int | None) -> None:
        self.db.execute(
            "UPDATE files SET shard = ?, line = ? WHERE repo = ? AND path = ?", (shard, line, *key)
        )

    def candidates_with_sha(self, sha: str) -> list[Key]:
        rows = self.db.execute(
            "SELECT repo, path FROM files WHERE sha = ? AND filter_reason IS NULL", (sha,)
        ).fetchall()
        return sorted((r, p) for r, p in rows)

    def all_rows(self) -> Iterator[FileRow]:
        cur = self.db.execute(f"SELECT {_FILE_COLUMNS} FROM files ORDER BY repo, path")
        for row in cur:
            yield FileRow(*row)

    # -- shard geometry (over kept files of one split, in key order) ---------------------------------
    def shard_start(self, split: str, key: Key) -> Key | None:
        """The first key of the shard that holds (or would hold) ``key``."""
        row = self.db.execute(
            "SELECT repo, path FROM files WHERE status = 'kept' AND boundary = 1 AND split = ? "
            "AND (repo, path) <= (?, ?) ORDER BY repo DESC, path DESC LIMIT 1",
            (split, *key),
        ).fetchone()
        if row is not None:
            return (row[0], row[1])
        return self.first_kept(split)

    def first_kept(self, split: str) -> Key | None:
        row = self.db.execute(
            "SELECT repo, path FROM files WHERE status = 'kept' AND split = ? ORDER BY repo, path LIMIT 1",
            (split,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def kept_before(self, split: str, key: Key) -> Key | None:
        row = self.db.execute(
            "SELECT repo, path FROM files WHERE status = 'kept' AND split = ? AND (repo, path) < (?, ?) "
            "ORDER BY repo DESC, path DESC LIMIT 1",
            (split, *key),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def shard_rows(self, split: str, start: Key) -> list[FileRow]:
        """Kept rows from ``start`` up to (not including) the next boundary after it."""
        nxt = self.db.execute(
            "SELECT repo, path FROM files WHERE status = 'kept' AND boundary = 1 AND split = ? "
            "AND (repo, path) > (?, ?) ORDER BY repo, path LIMIT 1",
            (split, *start),
        ).fetchone()
        if nxt is None:
            cur = self.db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE status = 'kept' AND split = ? "
                "AND (repo, path) >= (?, ?) ORDER BY repo, path",
                (split, *start),
            )
        else:
            cur = self.db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE status = 'kept' AND split = ? "
                "AND (repo, path) >= (?, ?) AND (repo, path) < (?, ?) ORDER BY repo, path",
                (split, *start, *nxt),
            )
        return [FileRow(*row) for row in cur]

    def shard_names(self) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT shard FROM files WHERE shard IS NOT NULL").fetchall()
        return {r[0] for r in rows}

    def shard_list(self) -> list[tuple[str, str, int]]:
        """(split, shard, records) in key order of their first record."""
        rows = self.db.execute(
            "SELECT split, shard, count(*), min(repo || char(1) || path) AS first FROM files "
            "WHERE status = 'kept' GROUP BY split, shard ORDER BY split, first"
        ).fetchall()
        return [(split, shard, n) for split, shard, n, _ in rows]

    # -- near-duplicate index -------------------------------------------------------------------------
    def lsh_neighbours(self, key: Key) -> set[Key]:
        rows = self.db.execute(
            "SELECT DISTINCT b.repo, b.path FROM lsh a JOIN lsh b ON a.band = b.band AND a.bucket = b.bucket "
            "WHERE a.repo = ? AND a.path = ?",
            key,
        ).fetchall()
        return {(r, p) for r, p in rows} - {key}

    def lsh_lookup(self, buckets: list[int]) -> set[Key]:
        found: set[Key] = set()
        for band, bucket in enumerate(buckets):
            rows = self.db.execute(
                "SELECT repo, path FROM lsh WHERE band = ? AND bucket = ?", (band, bucket)
            ).fetchall()
            found.update((r, p) for r, p in rows)
        return found

    def lsh_put(self, key: Key, buckets: list[int]) -> None:
        self.db.execute("DELETE FROM lsh WHERE repo = ? AND path = ?", key)
        self.db.executemany(
            "INSERT INTO lsh(band, bucket, repo, path) VALUES (?, ?, ?, ?)",
            [(band, bucket, *key) for band, bucket in enumerate(buckets)],
        )

    def lsh_delete(self, key: Key) -> None:
        self.db.execute("DELETE FROM lsh WHERE repo = ? AND path = ?", key)

    # -- blob cache ---------------------------------------------------------------------------------
    def cached_blobs(self, akey: str, shas: Iterable[str]) -> dict[str, CachedBlob]:
        found: dict[str, CachedBlob] = {}
        wanted = list(dict.fromkeys(shas))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            cur = self.db.execute(
                "SELECT sha, reason, text_bytes, redactions, signature FROM blobs "
                f"WHERE akey = ? AND sha IN ({marks})",
                (akey, *chunk),
            )
            for sha, reason, text_bytes, redactions, sig in cur:
                found[sha] = CachedBlob(reason, text_bytes, json.loads(redactions), sig)
        return found

    def cache_blobs(self, akey: str, rows: list[tuple[str, str | None, int, str, bytes | None]]) -> None:
        """Store analyses (sha, reason, text_bytes, redactions_json, signature) in their own transaction."""
        if not rows:
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO blobs(akey, sha, reason, text_bytes, redactions, signature) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(akey, *row) for row in rows],
        )
        self.db.execute("COMMIT")

    # -- aggregates for stats.json ------------------------------------------------------------------
    def aggregate(self, akey: str) -> dict[str, Any]:
        q = self.db.execute
        per_repo = {
            repo: {"files_seen": seen, "files_kept": kept or 0}
            for repo, seen, kept in q(
                "SELECT repo, count(*), sum(status = 'kept') FROM files GROUP BY repo ORDER BY repo"
            )
        }
        dropped = dict(q("SELECT status, count(*) FROM files WHERE status != 'kept' GROUP BY status ORDER BY 1"))
        kept_join = "FROM files f JOIN blobs b ON b.sha = f.sha AND b.akey = ? WHERE f.status = 'kept'"
        languages = {
            lang: {"files": n, "bytes": nbytes}
            for lang, n, nbytes in q(
                f"SELECT f.lang, count(*), sum(b.text_bytes) {kept_join} GROUP BY f.lang ORDER BY 1", (akey,)
            )
        }
        splits = {
            split: {"files": n, "bytes": nbytes}
            for split, n, nbytes in q(
                f"SELECT f.split, count(*), sum(b.text_bytes) {kept_join} GROUP BY f.split ORDER BY 1", (akey,)
            )
        }
        redactions: dict[str, int] = {}
        for (raw,) in q(f"SELECT b.redactions {kept_join} AND b.redactions != '[]'", (akey,)):
            for _, _, kind in json.loads(raw):
                redactions[kind] = redactions.get(kind, 0) + 1
        seen_bytes = q("SELECT coalesce(sum(max(size, 0)), 0) FROM files").fetchone()[0]
        return {
            "repos": per_repo,
            "dropped": dropped,
            "languages": languages,
            "splits": splits,
            "redactions": dict(sorted(redactions.items())),
            "bytes_seen": seen_bytes,
        }
