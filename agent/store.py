"""The agent's machine-written state in one SQLite file (WAL mode, versioned schema).

One connection per thread; writes go through :meth:`Store.transaction`, which takes SQLite's write
lock up front (``BEGIN IMMEDIATE``) so that concurrent writers, threads or processes, queue up instead
of failing. Config is not stored here: it lives in TOML (see ``agent/config``).
"""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StoreError, UnknownRecord

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE repos (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        ref TEXT NOT NULL DEFAULT 'HEAD',
        include TEXT NOT NULL DEFAULT '[]',
        exclude TEXT NOT NULL DEFAULT '[]',
        last_indexed_commit TEXT,
        added_at REAL NOT NULL
    );
    CREATE TABLE dataset_versions (
        version TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        stats TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL,
        depends_on TEXT NOT NULL DEFAULT '[]',
        resource TEXT,
        run_if TEXT,
        attempts INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        error_title TEXT,
        error_message TEXT,
        result TEXT,
        progress TEXT,
        cancelled_by INTEGER,
        owner TEXT
    );
    CREATE INDEX jobs_state ON jobs (state, created_at, id);
    CREATE TABLE models (
        version TEXT PRIMARY KEY,
        parent TEXT,
        dataset_version TEXT,
        run_dir TEXT NOT NULL,
        eval_report TEXT,
        converted_dirs TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        status TEXT NOT NULL
    );
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        runtime TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        previous INTEGER
    );
    """,
}


class ModelStatus(str, enum.Enum):
    """Where a trained model stands."""

    TRAINED = "trained"
    EVALUATED = "evaluated"
    REJECTED = "rejected"
    CONVERTED = "converted"
    DEPLOYED = "deployed"
    RETIRED = "retired"


@dataclass(frozen=True)
class Repo:
    """A watched git repository."""

    name: str
    path: str
    ref: str = "HEAD"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    last_indexed_commit: str | None = None
    added_at: float = 0.0


@dataclass(frozen=True)
class DatasetVersion:
    """One built dataset version and its stats."""

    version: str
    created_at: float
    stats: dict[str, Any]


@dataclass(frozen=True)
class Model:
    """A fine-tuned model and where its artifacts are."""

    version: str
    parent: str | None
    dataset_version: str | None
    run_dir: str
    eval_report: str | None
    converted_dirs: dict[str, str]
    created_at: float
    status: ModelStatus


@dataclass(frozen=True)
class Deployment:
    """A model served by a runtime from ``started_at`` until ``ended_at`` (None while serving)."""

    id: int
    model: str
    runtime: str
    started_at: float
    ended_at: float | None
    previous: int | None


class Store:
    """SQLite-backed agent state; safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    # -- connections and transactions -------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot open {self.path}: {exc}") from exc
            self._local.conn = conn
            self._local.depth = 0
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested uses join the outer one."""
        conn = self.conn()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
        finally:
            self._local.depth = 0

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        return int(self.conn().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self.transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer repopilot (schema {version} > {SCHEMA_VERSION}); upgrade it"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")

    # -- repos ------------------------------------------------------------------------------------

    def add_repo(self, repo: Repo) -> Repo:
        """Add (or replace) a watched repository; ``added_at`` is set now when 0."""
        added_at = repo.added_at or time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO repos VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    repo.name,
                    repo.path,
                    repo.ref,
                    json.dumps(repo.include),
                    json.dumps(repo.exclude),
                    repo.last_indexed_commit,
                    added_at,
                ),
            )
        return self.get_repo(repo.name)

    def get_repo(self, name: str) -> Repo:
        """The repository called ``name``; StoreError when unknown."""
        row = self.conn().execute("SELECT * FROM repos WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownRecord(f"no watched repository called {name!r}", title="Unknown repository")
        return _repo(row)

    def list_repos(self) -> list[Repo]:
        """All watched repositories, by name."""
        return [_repo(r) for r in self.conn().execute("SELECT * FROM repos ORDER BY name")]

    def set_repo_indexed(self, name: str, commit: str) -> None:
        """Record the last commit the dataset was built from."""
        with self.transaction() as conn:
            if conn.execute("UPDATE repos SET last_indexed_commit = ? WHERE name = ?", (commit, name)).rowcount != 1:
                raise UnknownRecord(f"no watched repository called {name!r}", title="Unknown repository")

    def remove_repo(self, name: str) -> None:
        """Stop watching a repository (no error when it was not watched)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM repos WHERE name = ?", (name,))

    # -- dataset versions -------------------------------------------------------------------------

    def add_dataset_version(self, version: str, stats: dict[str, Any]) -> DatasetVersion:
        """Record a built dataset version."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO dataset_versions VALUES (?, ?, ?)", (version, now, json.dumps(stats)))
        return DatasetVersion(version, now, stats)

    def list_dataset_versions(self) -> list[DatasetVersion]:
        """All dataset versions, oldest first."""
        rows = self.conn().execute("SELECT * FROM dataset_versions ORDER BY created_at, version")
        return [DatasetVersion(r["version"], r["created_at"], json.loads(r["stats"])) for r in rows]

    # -- models -----------------------------------------------------------------------------------

    def add_model(self, model: Model) -> Model:
        """Record a model (replacing one of the same version)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model.version,
                    model.parent,
                    model.dataset_version,
                    model.run_dir,
                    model.eval_report,
                    json.dumps(model.converted_dirs),
                    model.created_at or time.time(),
                    ModelStatus(model.status).value,
                ),
            )
        return self.get_model(model.version)

    def get_model(self, version: str) -> Model:
        """The model ``version``; StoreError when unknown."""
        row = self.conn().execute("SELECT * FROM models WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise UnknownRecord(f"no model with version {version!r}", title="Unknown model")
        return _model(row)

    def list_models(self, status: ModelStatus | None = None) -> list[Model]:
        """Models, oldest first, optionally only those with ``status``."""
        if status is None:
            rows = self.conn().execute("SELECT * FROM models ORDER BY created_at, version")
        else:
            rows = self.conn().execute(
                "SELECT * FROM models WHERE status = ? ORDER BY created_at, version", (ModelStatus(status).value,)
            )
        return [_model(r) for r in rows]

    def update_model(self, version: str, **changes: Any) -> Model:
        """Change some fields of a model (status, eval_report, converted_dirs)."""
        allowed = {"status", "eval_report", "converted_dirs"}
        if not changes or set(changes) - allowed:
            raise StoreError(f"can only update {sorted(allowed)}, not {sorted(set(changes) - allowed)}")
        values = {
            k: ModelStatus(v).value if k == "status" else json.dumps(v) if k == "converted_dirs" else v
            for k, v in changes.items()
        }
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as conn:
            cur = conn.execute(f"UPDATE models SET {assignments} WHERE version = ?", (*values.values(), version))
            if cur.rowcount != 1:
                raise UnknownRecord(f"no model with version {version!r}", title="Unknown model")
        return self.get_model(version)

    def remove_model(self, version: str) -> None:
        """Forget a model (its files are the caller's to delete first)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM models WHERE version = ?", (version,))

    # -- deployments ------------------------------------------------------------------------------

    def start_deployment(self, model: str, runtime: str) -> Deployment:
        """End the current deployment (if any) and record ``model`` as served by ``runtime``."""
        now = time.time()
        with self.transaction() as conn:
            current = self.current_deployment()
            previous = current.id if current else None
            if current:
                conn.execute("UPDATE deployments SET ended_at = ? WHERE id = ?", (now, current.id))
            cur = conn.execute(
                "INSERT INTO deployments (model, runtime, started_at, previous) VALUES (?, ?, ?, ?)",
                (model, runtime, now, previous),
            )
        return Deployment(int(cur.lastrowid or 0), model, runtime, now, None, previous)

    def current_deployment(self) -> Deployment | None:
        """The deployment serving now, if any."""
        row = self.conn().execute("SELECT * FROM deployments WHERE ended_at IS NULL ORDER BY id DESC").fetchone()
        return Deployment(**dict(row)) if row else None

    def list_deployments(self) -> list[Deployment]:
        """All deployments, oldest first."""
        return [Deployment(**dict(r)) for r in self.conn().execute("SELECT * FROM deployments ORDER BY id")]


def _repo(row: sqlite3.Row) -> Repo:
    return Repo(
        name=row["name"],
        path=row["path"],
        ref=row["ref"],
        include=json.loads(row["include"]),
        exclude=json.loads(row["exclude"]),
        last_indexed_commit=row["last_indexed_commit"],
        added_at=row["added_at"],
    )


def _model(row: sqlite3.Row) -> Model:
    return Model(
        version=row["version"],
        parent=row["parent"],
        dataset_version=row["dataset_version"],
        run_dir=row["run_dir"],
        eval_report=row["eval_report"],
        converted_dirs=json.loads(row["converted_dirs"]),
        created_at=row["created_at"],
        status=ModelStatus(row["status"]),
    )
