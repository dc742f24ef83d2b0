"""The analysis pool's forked workers: their cycle collector runs, but never over what they inherited."""

from __future__ import annotations

import gc
import os

from pipelines.procutil import worker_pool


def _collector_state() -> tuple[int, bool, int]:
    return gc.get_freeze_count(), gc.isenabled(), os.getppid()


def test_forked_workers_leave_the_objects_they_inherited_out_of_their_collections() -> None:
    inherited = [[i] for i in range(50_000)]  # what a worker's first collection would otherwise walk (and copy)
    gc.disable()  # as the builder runs
    try:
        with worker_pool(2, fork=True) as pool:
            assert gc.get_freeze_count() == 0  # this process's collector sees all of its objects again
            states = {pool.submit(_collector_state).result() for _ in range(4)}
    finally:
        gc.enable()
    for frozen, enabled, parent in states:
        assert parent == os.getpid()  # forked from here
        assert enabled  # collecting what they make themselves
        assert frozen >= len(inherited)  # but not what they inherited
