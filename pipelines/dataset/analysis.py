"""Analysing blobs in bulk: content filters, secrets and MinHash (``filters.analyze_many``) on every core.

The pool is forked from the builder while it runs no other thread, so its workers start at once with
everything imported and the secret prefilter compiled; blobs go to them in batches of a few MiB, or, for a working
copy, the paths of their files: a worker reads each file and keeps it only when it holds exactly the blob (see
``gitsource.file_blobs``), so reading and checking run on every core too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.dataset import native
from pipelines.dataset.config import DatasetConfig
from pipelines.dataset.filters import BlobAnalysis, analyze_texts
from pipelines.dataset.gitsource import file_blobs
from pipelines.dataset.output import _failpoint, record_text
from pipelines.dataset.prefilter import shared_prefilter
from pipelines.dataset.secrets import compile_patterns
from pipelines.dataset.spool import Spooled, spool_texts
from pipelines.procutil import map_ahead, worker_pool

if TYPE_CHECKING:
    from concurrent.futures import Executor

WORKER_NICE = 5  # the history walk (one git process) is the longest chain: analysis workers yield to it
Blob = tuple[str, bytes | None]


def prepare() -> None:
    """Load, work out or compile now what analysing needs: the prefilter and its stand-ins, the secret patterns and
    the compiled loops. Done before the pool forks, its workers inherit them instead of each making its own (~25 ms
    each)."""
    prefilter = shared_prefilter()  # loaded from the user's cache (or compiled)
    if prefilter is not None:
        prefilter.prepare()
    compile_patterns()
    native.library()


@contextlib.contextmanager
def analysis_pool() -> Iterator[Executor]:
    """A worker per core (at most 8), all started now (forked, while this process runs no other thread)."""
    with worker_pool(_workers(), fork=True, nice=WORKER_NICE) as pool:
        yield pool


Text = bytes | Spooled  # a kept blob's record text, or where a worker spooled it
Analysed = tuple[str, int, BlobAnalysis, Text | None]  # (sha, size, analysis, record text of a kept blob)


def analysed_blobs(
    blobs: Iterable[Blob], config: DatasetConfig, pool: Executor | None, spool: str | None = None
) -> Iterator[list[Analysed]]:
    """(sha, size, analysis, record text) for each (sha, content), in order, a batch at a time; in ``pool`` when
    given, else here. The record text (``output.record_text`` of the text with its secrets redacted) comes only for a
    blob kept: where it is in a spool file when ``spool`` (a spool's prefix, see :mod:`spool`) is given. Secrets are
    scanned behind the one-pass prefilter (its compiled database comes from the user's cache)."""
    items = ((sha, data, len(data or b"")) for sha, data in blobs)
    for batch, results in _pipelined(items, _analyse_batch, (config, spool), pool):
        yield [(sha, size, result, text) for (sha, _, size), (result, text) in zip(batch, results, strict=True)]


def analysed_files(
    root: Path,
    wanted: Iterable[tuple[str, str, int]],
    config: DatasetConfig,
    pool: Executor | None,
    spool: str | None = None,
) -> Iterator[list[Analysed | tuple[str, int, None, None]]]:
    """:func:`analysed_blobs` for each (sha, path, size) whose file under ``root`` holds exactly that blob, read
    where it is analysed (in ``pool`` when given: this process gets back only the record texts, or where they are);
    (sha, size, None, None) for the others, to be read from git."""
    items = ((sha, (sha, path, size), size) for sha, path, size in wanted)
    for batch, results in _pipelined(items, _analyse_files, (root, config, spool), pool):
        yield [(sha, size, result, text) for (sha, _, size), (result, text) in zip(batch, results, strict=True)]


def _pipelined(items: Iterable[tuple[str, Any, int]], work: Callable, arg: Any, pool: Executor | None) -> Iterator:
    """(batch, ``work([payload of each item], arg)``) for batches of (sha, payload, size) items, in order; in
    ``pool`` when given, a few batches ahead, else here."""

    def jobs() -> Iterator[tuple[list, tuple]]:
        for batch in _batches(items):
            yield batch, ([payload for _, payload, _ in batch], arg)
            if pool is not None:
                _failpoint("pool-running")

    return map_ahead(work, jobs(), pool, 2 * _workers())


def _workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _analyse_batch(
    datas: list[bytes | None], arg: tuple[DatasetConfig, str | None]
) -> list[tuple[BlobAnalysis, Text | None]]:
    config, spool = arg
    results, texts = analyze_texts(datas, config, shared_prefilter())
    records: list = [None if text is None else record_text(text) for text in texts]
    if spool is not None:
        records = spool_texts(spool, records)
    return list(zip(results, records, strict=True))


def _analyse_files(
    wanted: list[tuple[str, str, int]], arg: tuple[Path, DatasetConfig, str | None]
) -> list[tuple[BlobAnalysis, Text | None] | tuple[None, None]]:
    root, config, spool = arg
    datas = file_blobs(os.fspath(root), wanted)
    analysed = iter(_analyse_batch([data for data in datas if data is not None], (config, spool)))
    return [(None, None) if data is None else next(analysed) for data in datas]


def _batches(
    items: Iterable[tuple[str, Any, int]], max_bytes: int = 4 << 20, max_items: int = 256
) -> Iterator[list[tuple[str, Any, int]]]:
    batch: list[tuple[str, Any, int]] = []
    size = 0
    for item in items:
        batch.append(item)
        size += item[2]
        if size >= max_bytes or len(batch) >= max_items:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
