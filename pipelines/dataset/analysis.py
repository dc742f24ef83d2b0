"""Analysing blobs in bulk: content filters, secrets and MinHash (``filters.analyze_many``) on every core.

The pool is forked from the builder while it runs no other thread, so its workers start at once with
everything imported and the secret prefilter compiled; blobs go to them in batches of a few MiB.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pipelines.dataset.config import DatasetConfig
from pipelines.dataset.filters import BlobAnalysis, analyze_many
from pipelines.dataset.output import _failpoint
from pipelines.dataset.prefilter import shared_prefilter
from pipelines.procutil import worker_pool

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

WORKER_NICE = 5  # the history walk (one git process) is the longest chain: analysis workers yield to it
Blob = tuple[str, bytes | None]


@contextlib.contextmanager
def analysis_pool() -> Iterator[Executor]:
    """A worker per core (at most 8), all started now (forked, while this process runs no other thread)."""
    with worker_pool(_workers(), fork=True, nice=WORKER_NICE) as pool:
        pool.submit(os.getpid).result()
        yield pool


def analysed_blobs(
    blobs: Iterable[Blob], config: DatasetConfig, pool: Executor | None
) -> Iterator[tuple[str, bytes | None, BlobAnalysis]]:
    """(sha, content, analysis) for each (sha, content), in order; in ``pool`` when given, else here. Secrets
    are scanned behind the one-pass prefilter (its compiled database comes from the user's cache)."""
    if pool is None:
        for batch in _batches(blobs):
            yield from _zip_batch(batch, _analyse_batch([d for _, d in batch], config))
        return
    in_flight: collections.deque = collections.deque()
    workers = _workers()
    for batch in _batches(blobs):
        in_flight.append((batch, pool.submit(_analyse_batch, [d for _, d in batch], config)))
        _failpoint("pool-running")
        while len(in_flight) > 2 * workers:
            yield from _finished(in_flight.popleft())
    while in_flight:
        yield from _finished(in_flight.popleft())


def _workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _analyse_batch(datas: list[bytes | None], config: DatasetConfig) -> list[BlobAnalysis]:
    return analyze_many(datas, config, shared_prefilter())


def _batches(blobs: Iterable[Blob], max_bytes: int = 4 << 20, max_items: int = 256) -> Iterator:
    batch: list[tuple[str, bytes | None]] = []
    size = 0
    for sha, data in blobs:
        batch.append((sha, data))
        size += len(data or b"")
        if size >= max_bytes or len(batch) >= max_items:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _finished(item: tuple[list, Future]) -> Iterator[tuple[str, bytes | None, BlobAnalysis]]:
    batch, future = item
    return _zip_batch(batch, future.result())


def _zip_batch(batch: list[Blob], results: list[BlobAnalysis]) -> Iterator:
    for (sha, data), result in zip(batch, results, strict=True):
        yield sha, data, result
