"""The files a dataset consists of, written so that an update costs what changed, not what exists.

- ``train/*.jsonl``, ``validation/*.jsonl``: records in key order (repo, path), cut into shards at keys
  whose hash marks a boundary, and named by the hash of their content. A changed file rewrites its shard.
- ``index/*.json``: every file's fate (sha, status, shard and line), cut the same way over all files.
- ``stats.json``: running totals kept in the state.
- ``manifest.json``: the repos, the settings and the lists of shards and index chunks; written last, it is
  what readers go by. Files it no longer lists are deleted only after it is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipelines.dataset.config import DatasetConfig
from pipelines.dataset.folder import FORMAT, MANIFEST, SPLITS, STATS
from pipelines.dataset.rows import INDEX_SELECTION, FileRow, Key, Selection, SelectionKeys, shard_selection
from pipelines.dataset.spool import Spooled, SpoolReader
from pipelines.dataset.state import StateStore
from pipelines.fsutil import TMP_PREFIX, dump_json, fsync_dir, start_writeback, sync_files, write_bytes_atomic
from pipelines.procutil import map_ahead
from pipelines.progress import Progress

if TYPE_CHECKING:
    from concurrent.futures import Executor

KEPT = "kept"
FOLDERS = (*SPLITS, "index")
_BULK_RANGES = 1000  # keys to place before the writer reads a selection's keys at once
_FILES_AHEAD = 4  # files (shards, index chunks) handed to the pool before the first is taken back
_WRITE_BUFFER = 1 << 20  # records are written and hashed a MiB at a time (a call per record costs ~10% of a build)


def record_parts(row: FileRow, text: bytes) -> tuple[bytes, bytes, bytes]:
    """One JSONL record, in three parts to write one after the other (the text is not copied): run_clm's ``text``
    (given as :func:`record_text` made it) plus files2jsonl's ``url`` and provenance (UTF-8, compact, keys in this
    order; byte for byte what ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` gives). ``commit`` is
    there only when the dataset records file commits."""
    return _record_parts(text, *_RECORD_FIELDS(row))


_RECORD_FIELDS = operator.attrgetter("path", "repo", "commit_sha", "lang", "sha")  # what a record says of its file


def _record_parts(
    text: bytes | memoryview, path: str, repo: str, commit_sha: str, lang: str | None, sha: str
) -> tuple[bytes, bytes | memoryview, bytes]:
    rest: dict[str, Any] = {"url": path, "repo": repo, "path": path}
    if commit_sha:
        rest["commit"] = commit_sha
    rest["lang"] = lang
    rest["sha"] = sha
    return b'{"text":', text, b"," + orjson.dumps(rest, option=orjson.OPT_APPEND_NEWLINE)[1:]


def record_text(text: str) -> bytes:
    """A record's text as the JSON string it is written as (made where the text is, e.g. in an analysis worker)."""
    return orjson.dumps(text)


def index_entry(row: FileRow) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha": row.sha, "status": row.status}
    if row.commit_sha:
        entry["commit"] = row.commit_sha
    if row.status == KEPT:
        entry.update(shard=row.shard, line=row.line, split=row.split, lang=row.lang)
    elif row.dup_of:
        entry["dup_of"] = row.dup_of
    return entry


def _affected_ranges(store: StateStore, by_selection: dict[Selection, set[Key]]) -> list[tuple[Selection, Key]]:
    """The ranges to rewrite: of each selection, the one holding each of its keys, and the one before (a boundary
    may have moved)."""
    starts: set[tuple[Selection, Key]] = set()
    for sel, wanted in by_selection.items():
        # Few keys: ask SQLite; many (a big update): read the selection's keys once.
        ranges = store if len(wanted) < _BULK_RANGES else SelectionKeys(*store.selection_keys(sel))
        if isinstance(ranges, SelectionKeys) and wanted.issuperset(ranges.keys):  # all of it (a build)
            starts.update((sel, start) for start in ranges.range_starts())
            continue
        start: Key | None = None
        end: Key | None = None
        for key in sorted(wanted):
            if start is not None and start < key and (end is None or key < end):
                continue  # inside the range found last: so is the key before it (a shard's keys move together)
            start = ranges.range_start(sel, key)
            prior = ranges.before(sel, key)
            for found in (start, None if prior is None else ranges.range_start(sel, prior)):
                if found is not None:
                    starts.add((sel, found))
            end = None if start is None else ranges.range_end(sel, start)
    return sorted(starts, key=lambda item: (item[0].params, item[1]))


class OutputWriter:
    """Rewrites the shards and index chunks an update touched (inside the state's transaction)."""

    def __init__(self, out_dir: Path, store: StateStore, progress: Progress) -> None:
        self.out_dir = out_dir
        self.store = store
        self.progress = progress
        self.relocated: set[Key] = set()
        self.old_names: set[str] = set()
        self.written: dict[str, int] = {folder: 0 for folder in FOLDERS}
        self.unsynced: list[Path] = []
        self._syncing: list[tuple[threading.Thread, list[BaseException]]] = []  # see sync_aside

    def write_shards(
        self,
        dirty: dict[Key, str],
        texts_for: Callable[[list[FileRow]], dict[str, bytes | Spooled]],
        spool: SpoolReader,
        pool: Executor | None = None,
    ) -> None:
        """``dirty`` maps each key whose record appeared, vanished or changed to its split. ``texts_for`` gives the
        record texts of rows, or where they are in ``spool``; the shards are written in ``pool`` when given (a few
        at once, each by a worker), else here."""
        by_split: dict[str, set[Key]] = {}
        for key, split in dirty.items():
            by_split.setdefault(split, set()).add(key)
        ranges = _affected_ranges(self.store, {shard_selection(split): keys for split, keys in by_split.items()})
        for key in dirty:
            row = self.store.get(key)
            if row is not None and row.status != KEPT and row.shard is not None:
                self.old_names.add(row.shard)
                self.store.set_location(key, None, None)
        if not ranges:
            return
        self.progress.start("writing shards", len(ranges), unit="shards")
        jobs = self._shard_jobs(ranges, dirty, texts_for, None if pool is not None else spool)
        for (split, rows), written in map_ahead(_write_pieces, jobs, pool, _FILES_AHEAD):
            name, size = self._written(written)
            moves = [(row.key, name, i) for i, row in enumerate(rows) if (row.shard, row.line) != (name, i)]
            self.old_names.update(row.shard for row in rows if row.shard and row.shard != name)
            self.store.set_locations(moves)
            self.relocated.update(key for key, _, _ in moves)
            self.store.put_output("shard", name, split, rows[0].key, len(rows), size)
            self.progress.advance(1, size)
        self.progress.finish()

    def _shard_jobs(
        self,
        ranges: list[tuple[Selection, Key]],
        dirty: dict[Key, str],
        texts_for: Callable[[list[FileRow]], dict[str, bytes | Spooled]],
        spool: SpoolReader | None,
    ) -> Iterator[tuple[tuple[str, list[FileRow]], tuple]]:
        """((split, rows), arguments of :func:`_write_pieces`) of each range's shard, made as they are asked for."""
        old_lines: dict[str, list[bytes]] = {}
        for sel, start in ranges:
            rows = self.store.range_rows(sel, start)
            if not rows:
                continue
            # An unchanged record is copied from the shard it is in; only new or changed ones are rendered.
            lines: list[bytes | None] = [
                self._old_line(row, old_lines) if row.key not in dirty else None for row in rows
            ]
            texts = texts_for([row for row, line in zip(rows, lines, strict=True) if line is None])
            # A record to render is (its text, or where it is spooled, and what it says of its file): rendered where
            # the shard is written (by a worker of the pool, when there is one).
            records: list[bytes | tuple] = [
                line if line is not None else (texts.pop(row.sha), *_RECORD_FIELDS(row))
                for row, line in zip(rows, lines, strict=True)
            ]
            split = sel.params[0]
            yield (split, rows), (self.out_dir / split, records, spool)

    def _old_line(self, row: FileRow, cache: dict[str, list[bytes]]) -> bytes | None:
        if row.shard is None or row.line is None:
            return None
        if row.shard not in cache:
            try:
                cache[row.shard] = (self.out_dir / row.shard).read_bytes().splitlines(keepends=True)
            except FileNotFoundError:
                cache[row.shard] = []
        lines = cache[row.shard]
        return lines[row.line] if row.line < len(lines) else None

    def write_index(self, keys: Iterable[Key], pool: Executor | None = None) -> None:
        """Rewrite the index chunks holding ``keys`` (and the files whose records moved); the files are written in
        ``pool`` when given (a few at once, each by a worker), else here."""
        ranges = _affected_ranges(self.store, {INDEX_SELECTION: set(keys) | self.relocated})

        def jobs() -> Iterator[tuple[list[FileRow], tuple]]:
            for _, start in ranges:
                rows = self.store.range_rows(INDEX_SELECTION, start)
                if not rows:
                    continue
                files: dict[str, dict[str, Any]] = {}
                for row in rows:
                    files.setdefault(row.repo, {})[row.path] = index_entry(row)
                content = orjson.dumps(files, option=orjson.OPT_SORT_KEYS)  # as json.dumps(sort_keys=True), compact
                yield rows, (self.out_dir / "index", [content, b"\n"], ".json")

        for rows, written in map_ahead(_write_named, jobs(), pool, _FILES_AHEAD):
            name, size = self._written(written)
            self.old_names.update(row.chunk for row in rows if row.chunk and row.chunk != name)
            self.store.set_chunks([row.key for row in rows if row.chunk != name], name)
            self.store.put_output("index", name, "index", rows[0].key, len(rows), size)

    def sync_aside(self) -> None:
        """Start making the files written so far durable, in a thread of its own (the kernel waits for the disk
        without the GIL), while the builder goes on (e.g. with the index); :meth:`forget_unused` waits for it."""
        paths, self.unsynced = self.unsynced, []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                sync_files(self.out_dir, paths)
            except BaseException as exc:  # raised again where it is waited for
                failed.append(exc)

        thread = threading.Thread(target=run, name="sync-outputs", daemon=True)
        thread.start()
        self._syncing.append((thread, failed))

    def forget_unused(self) -> None:
        """Drop the outputs no longer used, and make every file written durable (before the state commits)."""
        for name in sorted(self.old_names):
            self.store.drop_output_if_unused(name)
        for thread, failed in self._syncing:
            thread.join()
            if failed:
                raise failed[0]
        self._syncing = []
        sync_files(self.out_dir, self.unsynced)
        self.unsynced = []
        for folder in FOLDERS:
            fsync_dir(self.out_dir / folder)

    def _written(self, written: tuple[str, int, bool]) -> tuple[str, int]:
        """(name, size) of a file :func:`_write_named` wrote (its name made relative to the dataset folder)."""
        path, size, created = written
        name = os.path.relpath(path, self.out_dir)
        if created:
            self.unsynced.append(self.out_dir / name)
            self.written[os.path.dirname(name)] += 1
        return name, size


def _write_named(folder: Path, chunks: Iterable[bytes | memoryview], suffix: str) -> tuple[str, int, bool]:
    """Write ``chunks`` to ``folder/<hash of the content><suffix>``, through a temporary file (a MiB at a time: one
    write and one hash update); (its path, the size, whether it is new: a file of that name, so of that content, may
    be there already)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as handle:
            for batch in _batched(chunks, _WRITE_BUFFER):
                handle.write(batch)
                digest.update(batch)
                size += len(batch)
            handle.flush()
            start_writeback(handle.fileno())
        path = os.path.join(folder, f"{digest.hexdigest()[:24]}{suffix}")
        if os.path.exists(path):
            os.unlink(temporary)
            return path, size, False
        os.replace(temporary, path)
        return path, size, True
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _write_pieces(folder: Path, records: list[bytes | tuple], spool: SpoolReader | None) -> tuple[str, int, bool]:
    """:func:`_write_named` of a shard: each record a line as it is, or rendered from (its text, or where it is
    spooled, and the fields :func:`record_parts` takes); a spooled text read from ``spool`` (when None, as in a worker
    of the pool, from the spool files of ``folder``'s dataset, mapped for this shard only)."""
    reader = spool if spool is not None else SpoolReader(folder.parent, whole=False)
    text = reader.text

    def parts() -> Iterator[bytes | memoryview]:
        for record in records:
            if isinstance(record, bytes):
                yield record
            else:
                first, *fields = record
                yield from _record_parts(text(first) if isinstance(first, Spooled) else first, *fields)

    try:
        return _write_named(folder, parts(), ".jsonl")
    finally:
        if spool is None:
            reader.close()


def _batched(chunks: Iterable[bytes | memoryview], least: int) -> Iterator[bytes]:
    """``chunks`` joined into pieces of at least ``least`` bytes (but the last)."""
    pending: list[bytes | memoryview] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= least:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


# -- running totals -------------------------------------------------------------------------------------
def add_contributions(totals: dict[tuple[str, str], int], files: list[tuple[FileRow, int, list]], sign: int) -> None:
    """Add what files add to the totals behind stats.json (times ``sign``) to ``totals``: (row, text bytes,
    redactions) each (the text bytes and redactions of a kept file's analysis, else anything)."""
    kept = [(row, text_bytes, redactions) for row, text_bytes, redactions in files if row.status == KEPT]
    sums: list[tuple[str, dict[str, int]]] = [
        ("files_seen", Counter(row.repo for row, _, _ in files)),
        ("bytes_seen", {"": sum(max(row.size, 0) for row, _, _ in files)} if files else {}),
        ("files_kept", Counter(row.repo for row, _, _ in kept)),
        ("repo_bytes", _sums((row.repo, text_bytes) for row, text_bytes, _ in kept)),
        ("lang_files", Counter(row.lang or "" for row, _, _ in kept)),
        ("lang_bytes", _sums((row.lang or "", text_bytes) for row, text_bytes, _ in kept)),
        ("split_files", Counter(row.split for row, _, _ in kept)),
        ("split_bytes", _sums((row.split, text_bytes) for row, text_bytes, _ in kept)),
        ("redactions", Counter(kind for _, _, redactions in kept for _, _, kind in redactions)),
        ("dropped", Counter(row.status for row, _, _ in files if row.status != KEPT)),
    ]
    get = totals.get
    for name, by_key in sums:
        for key, value in by_key.items():
            totals[name, key] = get((name, key), 0) + sign * value


def _sums(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for key, value in pairs:
        found[key] = found.get(key, 0) + value
    return found


# -- export, recovery, garbage ----------------------------------------------------------------------------
def dataset_version(store: StateStore, config: DatasetConfig) -> str:
    settings = config.to_json()
    del settings["file_commits"]  # it shows in the shards' names; a dataset from before it keeps its version
    ident = {
        "config": settings,
        "repos": {name: info["commit"] for name, info in store.repos().items()},
        "shards": [name for _, name, _, _ in store.outputs("shard")],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def export(out_dir: Path, store: StateStore) -> None:
    """Write stats.json, then manifest.json (the commit point readers go by), from the state."""
    version = store.get_meta("dataset_version")
    config = json.loads(store.get_meta("config") or "{}")
    totals = store.totals()
    repos = {
        name: {**info["spec"], "resolved_ref": info["ref"], "commit": info["commit"]}
        for name, info in store.repos().items()
    }
    shards: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for split, name, items, nbytes in store.outputs("shard"):
        shards[split].append({"file": name, "records": items, "bytes": nbytes})
    index = [{"file": name, "files": items} for _, name, items, _ in store.outputs("index")]
    seen, kept = totals.get("files_seen", {}), totals.get("files_kept", {})
    stats = {
        "dataset_version": version,
        "files_seen": sum(seen.values()),
        "files_kept": sum(kept.values()),
        "files_dropped": sum(totals.get("dropped", {}).values()),
        "dropped": totals.get("dropped", {}),
        "bytes_seen": totals.get("bytes_seen", {}).get("", 0),
        "bytes_kept": sum(totals.get("split_bytes", {}).values()),
        "languages": {
            lang: {"files": n, "bytes": totals.get("lang_bytes", {}).get(lang, 0)}
            for lang, n in totals.get("lang_files", {}).items()
        },
        "splits": {
            split: {"files": n, "bytes": totals.get("split_bytes", {}).get(split, 0)}
            for split, n in totals.get("split_files", {}).items()
        },
        "redactions": totals.get("redactions", {}),
        "repos": {
            name: {
                "commit": info["commit"],
                "files_seen": seen.get(name, 0),
                "files_kept": kept.get(name, 0),
                "bytes_kept": totals.get("repo_bytes", {}).get(name, 0),
            }
            for name, info in repos.items()
        },
    }
    manifest = {
        "format": FORMAT,
        "dataset_version": version,
        "config": config,
        "repos": repos,
        "shards": shards,
        "index": index,
    }
    write_bytes_atomic(out_dir / STATS, dump_json(stats))
    _failpoint("stats-written")
    write_bytes_atomic(out_dir / MANIFEST, dump_json(manifest))
    fsync_dir(out_dir)


def recover(out_dir: Path, store: StateStore) -> None:
    """Finish what a killed run committed but did not export, and sweep what it left half-written."""
    version = store.get_meta("dataset_version")
    if version is not None:
        try:
            on_disk = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8")).get("dataset_version")
        except (FileNotFoundError, json.JSONDecodeError):
            on_disk = None
        if on_disk != version:
            export(out_dir, store)
    collect_garbage(out_dir, store)


def collect_garbage(out_dir: Path, store: StateStore) -> None:
    """Delete output files the state no longer lists, and temporary files of killed runs."""
    keep = store.output_names()
    for folder in FOLDERS:
        path = out_dir / folder
        if not path.is_dir():
            continue
        for item in path.iterdir():
            if f"{folder}/{item.name}" not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item)
    for item in out_dir.glob(TMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(item)


def _failpoint(name: str) -> None:
    """Die here, as a kill would, when the tests ask for it (REPOPILOT_FAILPOINT=name); with ``name:hang``,
    wait here (for a signal)."""
    point = os.environ.get("REPOPILOT_FAILPOINT")
    if point == name:
        os._exit(86)
    if point == f"{name}:hang":
        time.sleep(3600)
