"""Build and update a dataset: plan -> analyse blobs -> decide each file's fate -> write shards -> export.

``build`` is an update from nothing, so a fresh build and a chain of updates run the same code and give
byte-for-byte the same files.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gc
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.dataset import dedup
from pipelines.dataset.analysis import Analysed, Text, analysed_blobs, analysed_files, analysis_pool
from pipelines.dataset.analysis import prepare as prepare_analysis
from pipelines.dataset.config import DatasetConfig, RepoSpec, validate_repos
from pipelines.dataset.filters import KEPT, BlobAnalysis, Reason, path_reason, redact_spans
from pipelines.dataset.folder import is_dataset
from pipelines.dataset.gitsource import GitSource, TreeEntry
from pipelines.dataset.lsh import LshIndex
from pipelines.dataset.output import (
    OutputWriter,
    _failpoint,
    add_contributions,
    collect_garbage,
    dataset_version,
    export,
    record_text,
    recover,
)
from pipelines.dataset.plan import PlanMode, RepoPlan, plan_repo
from pipelines.dataset.rows import FileRow, Key, placement
from pipelines.dataset.spool import Spool, Spooled
from pipelines.dataset.state import StateStore
from pipelines.dataset.treeahead import reading_ahead
from pipelines.errors import DatasetError
from pipelines.progress import Progress

if TYPE_CHECKING:
    from concurrent.futures import Executor

STATE = "state.sqlite"
CANDIDATE = "candidate"
_TEXT_MEMORY_BUDGET = 256 * 1024 * 1024
_CACHE_FLUSH_ROWS = 2000  # analyses stored per transaction (or every 2 s): a killed build loses no more
_ROWS_A_STEP = 128  # rows made each _RESULTS_A_STEP analyses that come in (see _Work._made_rows): all made before
_RESULTS_A_STEP = 64  # the last analyses come in, on the way
_PARALLEL_FROM = 400  # blobs to analyse before a process pool pays for its start-up
_Wanted = tuple[str, str, int]  # a blob to read: (sha, a path of it, its size)
_DUPLICATE, _NEAR_DUPLICATE = Reason.DUPLICATE.value, Reason.NEAR_DUPLICATE.value  # (an enum's .value costs ~1 us)


@dataclass
class SyncResult:
    """What an update did, for the CLI and the agent."""

    dataset_version: str
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    records_changed: int = 0
    shards_written: int = 0
    index_chunks_written: int = 0
    seconds: float = 0.0


def build(
    out_dir: Path,
    repos: list[RepoSpec],
    config: DatasetConfig,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> SyncResult:
    """Index ``repos`` from scratch into ``out_dir`` (resuming an interrupted build there)."""
    config.validate()
    validate_repos(repos)
    out_dir = Path(out_dir)
    if is_dataset(out_dir) and not force:
        raise DatasetError(
            f"{out_dir} already holds a dataset. Run `repopilot dataset update {out_dir}` to bring it up to "
            "date, or pass --force to rebuild it with these settings."
        )
    if out_dir.exists() and not (out_dir / STATE).exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{out_dir} is not empty and is not a dataset. Choose an empty or new folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        store = StateStore(out_dir / STATE)
        try:
            with _collector_paused():
                return _sync(out_dir, store, repos, config, full=True, progress=progress or Progress("none"))
        finally:
            store.close()


def update(
    out_dir: Path,
    refs: dict[str, str] | None = None,
    *,
    progress: Progress | None = None,
) -> SyncResult:
    """Bring every repo of the dataset at ``out_dir`` to its ref (or the ref given in ``refs``)."""
    out_dir = Path(out_dir)
    if not (out_dir / STATE).exists():
        raise DatasetError(f"{out_dir} holds no dataset. Create one with `repopilot dataset build {out_dir} REPO...`.")
    with _locked(out_dir):
        store = StateStore(out_dir / STATE)
        try:
            raw = store.get_meta("config")
            if raw is None:
                raise DatasetError(f"The build of {out_dir} never finished. Run the same `build` again.")
            config = DatasetConfig.from_json(json.loads(raw))
            specs = []
            refs = dict(refs or {})
            indexed = store.repos()
            unknown = sorted(set(refs) - set(indexed))
            if unknown:
                raise DatasetError(f"{out_dir} has no repo named {', '.join(unknown)}; it has {', '.join(indexed)}.")
            for name, info in indexed.items():
                spec = info["spec"]
                specs.append(
                    RepoSpec(
                        name=name,
                        path=spec["path"],
                        ref=refs.get(name, spec["ref"]),
                        include=tuple(spec["include"]),
                        exclude=tuple(spec["exclude"]),
                    )
                )
            with _collector_paused():
                return _sync(out_dir, store, specs, config, full=False, progress=progress or Progress("none"))
        finally:
            store.close()


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    with open(out_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError(
                f"Another repopilot run is writing {out_dir}. Wait for it to finish, then try again."
            ) from None
        yield


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off for an update: an update makes hardly any cycles, while it holds ~10 objects a
    file that each of the collector's full passes would walk (~5% of a build's time); memory is freed as before. The
    switch is the process's: another thread's cycles wait for the end of the update (its analysis workers switch it
    on again)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- the one code path --------------------------------------------------------------------------------
def _sync(
    out_dir: Path, store: StateStore, specs: list[RepoSpec], config: DatasetConfig, *, full: bool, progress: Progress
) -> SyncResult:
    started = time.monotonic()
    recover(out_dir, store)
    if store.get_meta("reanalyse") == "1":
        progress.event("state written by an older repopilot: every file is looked at again")
        full = True
    if full and store.get_meta("config") not in (None, json.dumps(config.to_json(), sort_keys=True)):
        progress.event("settings changed: every file is looked at again")
    indexed = store.repos()
    if full and reading_ahead():  # git is still reading a whole tree (a big one): meanwhile, get analysing ready
        prepare_analysis()
    plans = []
    for spec in specs:
        source = GitSource(spec.path)
        spec = RepoSpec(spec.name, str(source.path), spec.ref, spec.include, spec.exclude)
        plans.append(plan_repo(spec, source, indexed.get(spec.name), store, full, config.file_commits))
        progress.event("plan", repo=spec.name, mode=plans[-1].mode.value, **plans[-1].counts)
    removed = sorted(set(indexed) - {p.spec.name for p in plans})
    sources = {p.spec.name: p.source for p in plans}
    work = _Work(out_dir, store, config, sources, progress, full=full)
    # On the way out: the pool's workers exit, then the spool files go (when the shards are written, or on an error).
    with contextlib.closing(work.spool), contextlib.ExitStack() as pool_stack:
        new_rows = work.compute_rows(plans, pool_stack)
        _failpoint("analysed")

        store.begin()
        try:
            for name in removed:
                for path in store.files_of(name):
                    work.remove((name, path))
                store.delete_repo(name)
            for plan in plans:
                for path in plan.deleted:
                    work.remove((plan.spec.name, path))
            if store.held and full:  # every file is new: its fate is decided before it goes into the state
                work.settle_new(new_rows)
            else:
                work.replace_all(new_rows)
                work.deduplicate()
            writer = OutputWriter(out_dir, store, progress)
            work.write(writer)
            _failpoint("shards-written")
            for plan in plans:
                store.put_repo(plan.spec.name, plan.spec.to_json(), plan.ref, plan.commit)
            store.set_meta("config", json.dumps(config.to_json(), sort_keys=True))
            store.set_meta("reanalyse", "0")
            version = dataset_version(store, config)
            store.set_meta("dataset_version", version)
            store.commit()
        except BaseException:
            store.rollback()
            raise
    _failpoint("committed")
    export(out_dir, store)
    collect_garbage(out_dir, store)
    return SyncResult(
        dataset_version=version,
        repos={p.spec.name: {"mode": p.mode.value, "commit": p.commit, **p.counts} for p in plans},
        records_changed=len(work.dirty),
        shards_written=writer.written["train"] + writer.written["validation"],
        index_chunks_written=writer.written["index"],
        seconds=round(time.monotonic() - started, 3),
    )


class _Work:
    """The state of one update in progress."""

    def __init__(
        self,
        out_dir: Path,
        store: StateStore,
        config: DatasetConfig,
        sources: dict[str, GitSource],
        progress: Progress,
        full: bool = False,
    ) -> None:
        self.out_dir = out_dir
        self.full = full  # every file of the state is looked at again: the totals are counted afresh
        self.store = store
        self.config = config
        self.akey = config.analysis_key()
        self.sources = sources
        self.progress = progress
        self.before: dict[Key, FileRow | None] = {}
        self.texts: dict[str, Text] = {}  # sha -> record text (or where a worker spooled it) of the blobs analysed
        self.spool = Spool(out_dir)  # closed by the caller
        self.pool: Executor | None = None  # the analysis workers, when there are (see compute_rows)
        self.text_bytes = 0
        self.blobs: dict[str, BlobAnalysis] = {}
        self.dirty: dict[Key, str] = {}

    # -- rows -------------------------------------------------------------------------------------------
    def compute_rows(self, plans: list[RepoPlan], pool_stack: contextlib.ExitStack) -> list[FileRow]:
        """New rows for every target path; analyses blobs not seen before (cached as it goes), on every core when
        there are many: then the pool (see :mod:`analysis`) is kept for the shards until ``pool_stack`` closes."""
        listed = [(plan, sorted(plan.targets.items())) for plan in plans if plan.mode is not PlanMode.UNCHANGED]
        fates = [[self._path_fate(plan, path, entry) for path, entry in items] for plan, items in listed]
        to_read: dict[str, dict[str, _Wanted]] = {}  # repo -> sha -> (sha, a path of it, size)
        for (plan, items), decided in zip(listed, fates, strict=True):
            for (path, entry), (reason, _) in zip(items, decided, strict=True):
                if reason is None:
                    to_read.setdefault(plan.spec.name, {}).setdefault(entry.sha, (entry.sha, path, entry.size))
        self.blobs.update(self.store.cached_blobs(self.akey, {sha for shas in to_read.values() for sha in shas}))
        # In path order: a working copy's files are read a folder at a time (see gitsource.file_blobs).
        missing = {name: [w for w in ws.values() if w[0] not in self.blobs] for name, ws in to_read.items()}
        total = sum(len(v) for v in missing.values())
        if total >= _PARALLEL_FROM:
            prepare_analysis()  # before the workers fork, so that they inherit it (done already while git read)
            self.pool = pool_stack.enter_context(analysis_pool())
        rows: list[FileRow] = []
        made = self._made_rows(listed, fates, rows)
        with contextlib.ExitStack() as stack:
            for plan in plans:  # threads only now: the pool forked while this process had none
                stack.callback(plan.close_history)
                plan.start_history()
            if total:
                self._analyse(missing, self.pool, made)
            collections.deque(made, maxlen=0)  # the rows not made yet
            for plan in plans:
                plan.finish_history()
        commits = {plan.spec.name: plan.commits for plan in plans}
        for row in rows:
            row.commit_sha = commits[row.repo][row.path]
            if row.filter_reason is None:
                blob = self.blobs[row.sha]
                row.filter_reason = blob.reason
                row.status = blob.reason or CANDIDATE
        return rows

    def _path_fate(self, plan: RepoPlan, path: str, entry: TreeEntry) -> tuple[str | None, str | None]:
        """(why a target path is dropped, by its path and size alone, or None; its language)."""
        reason, lang = path_reason(path, entry.mode, plan.spec, self.config)
        if reason is None and entry.size > self.config.max_file_bytes:
            reason = Reason.TOO_LARGE.value
        return reason, lang

    def _made_rows(
        self, listed: list[tuple[RepoPlan, list[tuple[str, TreeEntry]]]], fates: list[list], rows: list[FileRow]
    ) -> Iterator[None]:
        """Make the row of each listed path (of its fate by path) into ``rows``, in order, a step of _ROWS_A_STEP
        at a time: :meth:`_analyse` takes a step as results come in, so that the workers analyse meanwhile."""
        for (plan, items), decided in zip(listed, fates, strict=True):
            for start in range(0, len(items), _ROWS_A_STEP):
                stop = start + _ROWS_A_STEP
                rows.extend(
                    self._target_row(plan, path, entry, fate)
                    for (path, entry), fate in zip(items[start:stop], decided[start:stop], strict=True)
                )
                yield

    def _target_row(self, plan: RepoPlan, path: str, entry: TreeEntry, fate: tuple[str | None, str | None]) -> FileRow:
        """The row of a target path, its fate decided by path and size so far (commit filled in later)."""
        reason, lang = fate
        split, boundary, iboundary = placement((plan.spec.name, path), self.config)
        return FileRow(
            repo=plan.spec.name,
            path=path,
            mode=entry.mode,
            sha=entry.sha,
            size=entry.size,
            commit_sha="",
            lang=lang,
            split=split,
            boundary=boundary,
            iboundary=iboundary,
            filter_reason=reason,
            status=reason or CANDIDATE,
        )

    def _analyse(self, missing: dict[str, list[_Wanted]], pool: Executor | None, alongside: Iterator[None]) -> None:
        """Analyse the ``missing`` blobs; a step of ``alongside`` each _RESULTS_A_STEP results."""
        self.progress.start("analysing", sum(len(v) for v in missing.values()))
        pending: list[tuple[str, BlobAnalysis]] = []
        last_flush = time.monotonic()
        done = 0
        analysed = self._analysed(missing, pool)
        with contextlib.closing(analysed):  # closed at once on an error or a signal
            for batch in analysed:
                for _ in range((done + len(batch)) // _RESULTS_A_STEP - done // _RESULTS_A_STEP):
                    next(alongside, None)
                done += len(batch)
                for sha, _, result, text in batch:
                    self.blobs[sha] = result
                    if text is not None:
                        self._remember_text(sha, text)
                pending += [(sha, result) for sha, _, result, _ in batch]
                self.progress.advance(len(batch), sum(size for _, size, _, _ in batch))
                if len(pending) >= _CACHE_FLUSH_ROWS or time.monotonic() - last_flush > 2:
                    self.store.cache_blobs(self.akey, pending)
                    pending, last_flush = [], time.monotonic()
        self.store.cache_blobs(self.akey, pending)
        self.progress.finish()

    def _analysed(self, missing: dict[str, list[_Wanted]], pool: Executor | None) -> Iterator[list[Analysed]]:
        """Batches of (sha, size, analysis, record text of a kept blob) of the blobs, in ``pool`` (on every core) when
        given: first those whose file in the working copy holds them, then the others read from git. The pool's
        workers spool the record texts (see :mod:`spool`)."""
        spool = None if pool is None else self.spool.prefix
        for name, wanted in missing.items():
            source = self.sources[name]
            unread = [sha for sha, _, _ in wanted]
            if source.worktree is not None:
                unread = []
                for batch in analysed_files(source.worktree, wanted, self.config, pool, spool):
                    unread += [found[0] for found in batch if found[2] is None]
                    yield [found for found in batch if found[2] is not None]  # type: ignore[misc]
            blobs = source.read_blobs(source.in_pack_order(unread))
            yield from analysed_blobs(blobs, self.config, pool, spool)

    def _remember_text(self, sha: str, text: Text) -> None:
        if isinstance(text, Spooled):  # on disk: no budget
            self.texts[sha] = text
        elif self.text_bytes + len(text) <= _TEXT_MEMORY_BUDGET:
            self.texts[sha] = text
            self.text_bytes += len(text)

    def _touch(self, key: Key) -> None:
        if key not in self.before:
            self.before[key] = self.store.get(key)

    def remove(self, key: Key) -> None:
        self._touch(key)
        self.store.delete(key)

    def replace_all(self, rows: list[FileRow]) -> None:
        self.store.prefetch(row.key for row in rows)
        for row in rows:
            self._touch(row.key)
            old = self.before[row.key]
            if old is not None:
                row.shard, row.line, row.chunk = old.shard, old.line, old.chunk
        self.store.put_many(rows)

    # -- deduplication ------------------------------------------------------------------------------
    def deduplicate(self) -> None:
        get = self.store.get
        shas = {
            row.sha
            for key, old in self.before.items()
            for row in (old, get(key))
            if row is not None and row.filter_reason is None
        }
        # Exact: among files with equal content, the smallest key is kept.
        groups = self.store.candidates_by_sha(shas)
        changes: list[tuple[Key, str, str | None]] = []
        for sha in sorted(groups):
            group = groups[sha]
            for key in group:
                self._touch(key)
            first, rest = group[0], group[1:]
            changes += [(key, _DUPLICATE, _ref(first)) for key in rest]
            row = self.store.get(first)
            if row is not None and row.status == _DUPLICATE:
                changes.append((first, CANDIDATE, None))
        self.store.set_statuses(changes)
        if self.config.near_dup:
            self._near_duplicates()
        self.store.set_statuses(
            [(key, KEPT, None) for key in self.before if (row := self.store.get(key)) and row.status == CANDIDATE]
        )
        deltas: dict[tuple[str, str], int] = {}
        if self.full:  # the old analyses may be of other settings (or of an older repopilot): not subtracted
            self.store.clear_totals()
        else:
            add_contributions(deltas, self._contributions(self.before.values()), -1)
        add_contributions(deltas, self._contributions(map(self.store.get, self.before)), 1)
        for key, old in self.before.items():
            new = self.store.get(key)
            was_kept = old is not None and old.status == KEPT
            is_kept = new is not None and new.status == KEPT
            if was_kept != is_kept or (
                is_kept and (old.sha, old.commit_sha, old.lang) != (new.sha, new.commit_sha, new.lang)
            ):
                self.dirty[key] = (new or old).split
        self.store.add_totals(deltas)

    def settle_new(self, rows: list[FileRow]) -> None:
        """:meth:`replace_all` then :meth:`deduplicate` for a held state built afresh (no file is older than this
        update, every total is counted anew): the same fates, decided over all the new rows at once before they go
        into the state."""
        rows = sorted(rows, key=attrgetter("repo", "path"))  # key order: of equal contents, the first is kept
        first: dict[str, FileRow] = {}
        unique: list[FileRow] = []
        for row in rows:
            if row.filter_reason is None:
                twin = first.setdefault(row.sha, row)
                if twin is row:
                    unique.append(row)
                else:
                    row.status, row.dup_of = _DUPLICATE, _ref(twin.key)
        if self.config.near_dup:
            self._near_duplicates_new(unique)
        for row in unique:
            if row.status == CANDIDATE:
                row.status = KEPT
        self.before.update(dict.fromkeys(row.key for row in rows))
        self.store.put_many(rows)
        deltas: dict[tuple[str, str], int] = {}
        add_contributions(deltas, self._contributions(rows), 1)
        self.store.clear_totals()
        self.store.add_totals(deltas)
        self.dirty.update((row.key, row.split) for row in rows if row.status == KEPT)

    def _near_duplicates_new(self, unique: list[FileRow]) -> None:
        """:meth:`_near_duplicates` for :meth:`settle_new`: ``unique`` (in key order) are the files of distinct
        contents that passed the filters; the index starts empty."""
        signed = [(row, signature) for row in unique if (signature := self.blobs[row.sha].signature) is not None]
        keys = [row.key for row, _ in signed]
        matrix = dedup.matrix_of([signature for _, signature in signed])
        buckets = dedup.band_buckets_many(matrix)
        lsh = LshIndex(self.store, anew=True)
        lsh.put_many(keys, buckets)
        lsh.flush()
        every = np.ones(len(keys), dtype=bool)
        similar = dedup.linked_rows(matrix, buckets, every, self.config.near_dup_threshold)
        for i, twin in dedup.resolve(similar, similar.__getitem__).items():  # rows in key order: as keys resolve
            if twin is not None:
                signed[i][0].status, signed[i][0].dup_of = _NEAR_DUPLICATE, _ref(keys[twin])

    def _contributions(self, rows: Iterable[FileRow | None]) -> list[tuple[FileRow, int, list]]:
        """(row, text bytes, redactions) of each row (its analysis, for a kept file; read at once where not at hand)."""
        found = [row for row in rows if row is not None]
        self.blobs.update(
            self.store.cached_blobs(self.akey, {r.sha for r in found if r.status == KEPT and r.sha not in self.blobs})
        )
        blobs = self.blobs
        return [
            (row, blobs[row.sha].text_bytes, blobs[row.sha].redactions) if row.status == KEPT else (row, 0, [])
            for row in found
        ]

    def _signature(self, key: Key) -> bytes | None:
        row = self.store.get(key)
        if row is None or row.filter_reason is not None or row.status == _DUPLICATE:
            return None
        if row.sha not in self.blobs:
            self.blobs.update(self.store.cached_blobs(self.akey, [row.sha]))
        blob = self.blobs.get(row.sha)
        return None if blob is None else blob.signature

    def _near_duplicates(self) -> None:
        affected = list(self.before)
        lsh = LshIndex(self.store, anew=self.full)
        old_neighbours = lsh.sharing(affected) - set(affected)
        signatures: dict[Key, bytes | None] = {}

        def sig(key: Key) -> bytes | None:
            if key not in signatures:
                signatures[key] = self._signature(key)
            return signatures[key]

        self._prefetch_blobs([*affected, *old_neighbours])
        with_signature = [key for key in affected if sig(key) is not None]
        lsh.drop([key for key in affected if sig(key) is None])
        if with_signature:
            lsh.put_many(with_signature, dedup.band_buckets_many(dedup.matrix_of([sig(k) for k in with_signature])))
        seeds = sorted(k for k in set(affected) | old_neighbours if sig(k) is not None)
        threshold = self.config.near_dup_threshold

        def similar_of(keys: list[Key]) -> dict[Key, list[Key]]:
            candidates = lsh.sharing(keys)
            self._prefetch_blobs([key for key in candidates if key not in signatures])
            return dedup.similar_pairs(keys, candidates, sig, threshold, lsh.buckets_of)

        nodes, similar = dedup.component(seeds, similar_of)
        lsh.flush()
        changes: list[tuple[Key, str, str | None]] = []
        for key, twin in dedup.resolve(nodes, similar.__getitem__).items():
            status, dup_of = (KEPT, None) if twin is None else (_NEAR_DUPLICATE, _ref(twin))
            row = self.store.get(key)
            if twin is None and key in self.before and row is not None and row.status == CANDIDATE:
                continue  # made kept with every other candidate of this update (see deduplicate)
            if key in self.before or row is None or (row.status, row.dup_of) != (status, dup_of):
                self._touch(key)
                changes.append((key, status, dup_of))
        self.store.set_statuses(changes)

    def _prefetch_blobs(self, keys: list[Key]) -> None:
        """Read the rows and cached analyses of many files at once."""
        self.store.prefetch(keys)
        shas = {row.sha for row in map(self.store.get, keys) if row is not None and row.sha not in self.blobs}
        self.blobs.update(self.store.cached_blobs(self.akey, shas))

    # -- output -----------------------------------------------------------------------------------------
    def write(self, writer: OutputWriter) -> None:
        """Rewrite the shards and index chunks this update touched."""
        for old in self.before.values():
            if old is not None:
                writer.old_names.update(name for name in (old.shard, old.chunk) if name)
        writer.write_shards(self.dirty, self._texts_for, self.spool, self.pool)
        self.spool.close()  # before the outputs are synced: deleted now, its pages are never written to the disk
        writer.sync_aside()  # the shards, while the index is written
        writer.write_index(self.before, self.pool)
        writer.forget_unused()

    def _texts_for(self, rows: list[FileRow]) -> dict[str, Text]:
        """The record text of each row's blob (see ``output.record_text``): remembered from its analysis (or where
        a worker spooled it), else read again and its secrets redacted as its cached analysis says."""
        texts: dict[str, Text] = {}
        for row in rows:
            text = self.texts.pop(row.sha, None)  # each written once
            if text is not None:
                texts[row.sha] = text
        by_repo: dict[str, list[_Wanted]] = {}
        for row in rows:
            if row.sha not in texts:
                by_repo.setdefault(row.repo, []).append((row.sha, row.path, row.size))
        for repo, wanted in by_repo.items():
            source = self.sources.get(repo)
            if source is None:
                raise DatasetError(f"The dataset holds files of repo {repo!r}, which is no longer configured.")
            blobs = self.store.cached_blobs(self.akey, [sha for sha, _, _ in wanted])
            for sha, data in source.read_committed(sorted(wanted)):
                if data is None or sha not in blobs:
                    raise DatasetError(
                        f"Blob {sha} of repo {repo!r} can no longer be read. "
                        "Rebuild the dataset with `repopilot dataset build --force`."
                    )
                texts[sha] = record_text(redact_spans(data.decode("utf-8"), blobs[sha].redactions))
        return texts


def _ref(key: Key) -> str:
    return f"{key[0]}:{key[1]}"
