"""Child processes that never outlive the command that started them.

- :func:`worker_pool`: a process pool whose workers are shut down (pending work cancelled) however the block
  ends, ignore Ctrl-C (the parent handles it and stops them), and are killed by the kernel if the parent
  dies without cleaning up (SIGKILL, a crash: Linux ``PR_SET_PDEATHSIG``).
- :func:`terminate_unwinds`: SIGTERM unwinds the main thread like Ctrl-C (``finally`` blocks run, pools and
  temporary files are cleaned up) instead of killing the process where it stands.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Executor

Tag = TypeVar("Tag")
PR_SET_PDEATHSIG = 1
DEFERRED = {signal.SIGINT, signal.SIGTERM}


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that everything unwinds (not an Exception: nothing that
    catches errors may swallow it)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def terminate_unwinds() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread, unless a handler is already installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _init_worker(parent: int, nice: int) -> None:
    gc.enable()  # forked from a parent that may have paused its cycle collector (see the dataset builder)
    if nice:
        os.nice(nice)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED)  # started while the parent deferred them
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died while this worker was starting: too late for the kernel
        os._exit(1)


@contextlib.contextmanager
def worker_pool(workers: int, *, fork: bool = False, nice: int = 0) -> Iterator[Executor]:
    """A process pool of ``workers``; on leaving, pending work is cancelled and every worker has exited (a normal
    end, an error, Ctrl-C or SIGTERM with :func:`terminate_unwinds`).

    Workers are spawned (a fresh interpreter each), or with ``fork`` forked from this process when it runs
    no other thread (Linux): then all of them start at once, with everything already imported and compiled.
    ``nice`` lowers the workers' priority, e.g. for a single-threaded helper (a git process) on the critical path
    to get a core of its own.
    """
    import multiprocessing  # here: every command imports this module, few start a pool (~30 ms to import)

    forkable = fork and sys.platform.startswith("linux") and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if forkable else "spawn")
    pool = _pool_class()(workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(), nice))
    try:
        if forkable:
            _start_forked(pool)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def map_ahead(
    fn: Callable[..., Any], jobs: Iterable[tuple[Tag, tuple]], pool: Executor | None, ahead: int
) -> Iterator[tuple[Tag, Any]]:
    """(tag, ``fn(*args)``) for each (tag, args) of ``jobs``, in order: in ``pool`` when given, at most ``ahead`` jobs
    handed to it before their results are taken (the others are not made yet: they may be big), else here."""
    if pool is None:
        for tag, args in jobs:
            yield tag, fn(*args)
        return
    in_flight: collections.deque = collections.deque()
    for tag, args in jobs:
        in_flight.append((tag, pool.submit(fn, *args)))
        while len(in_flight) > ahead:
            done, future = in_flight.popleft()
            yield done, future.result()
    while in_flight:
        done, future = in_flight.popleft()
        yield done, future.result()


def _start_forked(pool: Executor) -> None:
    """Fork every worker now, with this process's objects frozen out of the cycle collector meanwhile: a worker's
    collections then never walk (and so never copy the pages of) what it inherited (~35 ms of both cores at the
    start of a dataset build's analysis)."""
    frozen_before = gc.get_freeze_count()  # objects its caller froze stay frozen
    gc.freeze()
    try:
        pool.submit(os.getpid).result()
    finally:
        if not frozen_before:
            gc.unfreeze()


@functools.cache
def _pool_class() -> type[Executor]:
    from concurrent.futures import ProcessPoolExecutor

    class _Pool(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            """As ProcessPoolExecutor's, with Ctrl-C and SIGTERM held until it returns: one arriving while it
            starts workers and its manager thread would leave a pool that can neither run nor shut down."""
            old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
            try:
                return super().submit(fn, *args, **kwargs)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    return _Pool
