"""Watch git repositories' refs and call back, debounced, when a watched ref points at a new commit.

inotify (watchdog) on each repo's git dir gives a fast reaction; a polling thread is the fallback that also
covers network file systems where inotify stays silent. Commits are resolved with plain ``git``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

OnChange = Callable[[str, str, str], None]
OnError = Callable[[str, str], None]
_WRITE_EVENTS = frozenset({"created", "modified", "deleted", "moved", "closed"})
_TOP_FILES = frozenset({"HEAD", "packed-refs"})


@dataclass
class RepoWatch:
    """One watched ref of one repository; ``ref=None`` means the branch checked out when first seen."""

    name: str
    path: Path | str
    ref: str | None = None
    commit: str | None = field(default=None, repr=False)  # last reported commit
    failed: bool = field(default=False, repr=False)  # an error was reported and not yet recovered
    polled: tuple[str | None, str | None] = field(default=(None, None), repr=False)
    handles: list = field(default_factory=list, repr=False)


def find_git_dir(path: Path) -> Path | None:
    """The git dir of a working copy (``.git`` dir or file) or of a bare repo at ``path``; None if neither."""
    dot = path / ".git"
    if dot.is_file():
        text = dot.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text[len("gitdir:") :].strip())
            target = target if target.is_absolute() else path / target
            return target if target.is_dir() else None
        return None
    if dot.is_dir():
        return dot
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    return None


def _git(git_dir: Path, *args: str) -> str | None:
    done = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def resolve(git_dir: Path, ref: str) -> str | None:
    """The commit sha ``ref`` points at, or None when it does not resolve to a commit."""
    return _git(git_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def default_ref(git_dir: Path) -> str:
    """The checked-out branch (``main``), or ``HEAD`` when detached."""
    return _git(git_dir, "symbolic-ref", "--quiet", "--short", "HEAD") or "HEAD"


class _Handler(FileSystemEventHandler):
    def __init__(self, trigger: Callable[[], None], names: frozenset[str] | None) -> None:
        self._trigger, self._names = trigger, names

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _WRITE_EVENTS:
            return
        if self._names is not None:
            paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
            if not any(Path(p).name.removesuffix(".lock") in self._names for p in paths if p):
                return
        self._trigger()


class Watcher:
    """Calls ``on_change(name, ref, commit)`` on a worker thread when a watched ref moves, once per burst."""

    def __init__(
        self,
        on_change: OnChange,
        debounce_s: float = 1.0,
        poll_interval_s: float = 5.0,
        *,
        on_error: OnError | None = None,
        use_inotify: bool = True,
    ) -> None:
        self.on_change, self.on_error = on_change, on_error
        self.debounce_s, self.poll_interval_s, self.use_inotify = debounce_s, poll_interval_s, use_inotify
        self._watches: dict[str, RepoWatch] = {}
        self._pending: dict[str, tuple[float, float]] = {}  # name -> (first trigger, deadline)
        self._cond = threading.Condition(threading.RLock())
        self._dispatch = threading.RLock()
        self._paused = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._observer = None

    # -- watches --------------------------------------------------------------------------------------------
    def add(self, watch: RepoWatch) -> None:
        """Start watching; the ref's current commit is the baseline (no callback for it)."""
        watch.path = Path(watch.path)
        with self._cond:
            if watch.name in self._watches:
                raise ValueError(f"already watching {watch.name!r}")
            self._watches[watch.name] = watch
        watch.polled = self._probe(watch)
        watch.commit = watch.polled[0]
        self._schedule(watch)

    def remove(self, name: str) -> None:
        """Stop watching ``name`` (no-op when unknown)."""
        with self._cond:
            watch = self._watches.pop(name, None)
            self._pending.pop(name, None)
        if watch is not None:
            self._unschedule(watch)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the observer, the polling thread and the callback worker."""
        self._stop.clear()
        if self.use_inotify:
            self._observer = Observer()
            self._observer.daemon = True
            self._observer.start()
            for watch in list(self._watches.values()):
                self._schedule(watch)
        for target, name in ((self._work, "watcher-worker"), (self._poll, "watcher-poll")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop all threads; pending (debounced) changes are dropped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        for watch in self._watches.values():
            watch.handles.clear()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    @property
    def paused(self) -> bool:
        """True while changes are held back (they are reported, once, on resume)."""
        return self._paused

    def pause(self) -> None:
        """Hold back callbacks until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        """Report what changed while paused (one callback per repo) and carry on."""
        self._paused = False
        with self._cond:
            for name in self._watches:
                self._trigger(name, delay=0.0)

    def check_now(self) -> None:
        """Check every watch at once, in the caller's thread (callbacks too); does nothing while paused."""
        for name in list(self._watches):
            self._check(name)

    # -- internals ------------------------------------------------------------------------------------------
    def _schedule(self, watch: RepoWatch) -> None:
        git_dir = find_git_dir(watch.path)
        if self._observer is None or git_dir is None or watch.handles:
            return
        trigger = lambda: self._trigger(watch.name)  # noqa: E731
        try:
            watch.handles.append(self._observer.schedule(_Handler(trigger, _TOP_FILES), git_dir))
            if (git_dir / "refs").is_dir():
                watch.handles.append(self._observer.schedule(_Handler(trigger, None), git_dir / "refs", recursive=True))
        except OSError as exc:  # inotify limits, races with deletion: polling still covers it
            log.warning("cannot watch %s with inotify (%s); polling only", git_dir, exc)

    def _unschedule(self, watch: RepoWatch) -> None:
        for handle in watch.handles:
            try:
                if self._observer is not None:
                    self._observer.unschedule(handle)
            except Exception:  # the emitter may already be gone with the deleted directory
                log.debug("unschedule %s failed", handle, exc_info=True)
        watch.handles.clear()

    def _trigger(self, name: str, delay: float | None = None) -> None:
        now = time.monotonic()
        deadline = now + (self.debounce_s if delay is None else delay)
        with self._cond:
            if name not in self._watches:
                return
            first = self._pending.get(name, (now, 0.0))[0]
            self._pending[name] = (first, min(deadline, first + 10 * self.debounce_s))  # a steady stream still fires
            self._cond.notify_all()

    def _probe(self, watch: RepoWatch) -> tuple[str | None, str | None]:
        """(commit, None) or (None, error message)."""
        git_dir = find_git_dir(Path(watch.path))
        if git_dir is None:
            return None, f"repository {watch.name!r} at {watch.path} is gone or is not a git repository"
        if watch.ref is None:
            watch.ref = default_ref(git_dir)
        commit = resolve(git_dir, watch.ref)
        if commit is None:
            return None, f"ref {watch.ref!r} of repository {watch.name!r} at {watch.path} does not resolve to a commit"
        return commit, None

    def _check(self, name: str) -> None:
        with self._dispatch:
            watch = self._watches.get(name)
            if watch is None or self._paused:
                return
            commit, error = self._probe(watch)
            if error is not None:
                if not watch.failed:
                    watch.failed = True
                    self._unschedule(watch)
                    log.warning("%s", error)
                    self._call(self.on_error, name, error)
                return
            if watch.failed:
                watch.failed = False
                log.info("repository %r is back", name)
                self._schedule(watch)
            if commit != watch.commit:
                watch.commit = commit
                self._call(self.on_change, name, watch.ref, commit)

    def _call(self, callback: Callable[..., None] | None, *args: str | None) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("watcher callback %r failed for %s", callback, args)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                due = [n for n, (_, deadline) in self._pending.items() if deadline <= now]
                if self._paused or not due:
                    wait = None if self._paused or not self._pending else min(d for _, d in self._pending.values())
                    self._cond.wait(timeout=None if wait is None else max(wait - now, 0.001))
                    continue
                for name in due:
                    del self._pending[name]
            for name in due:
                self._check(name)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            for watch in list(self._watches.values()):
                state = self._probe(watch)
                if state != watch.polled:  # moved (or broke) since the last poll: (re)start the debounce
                    watch.polled = state
                    self._trigger(watch.name)
                elif state[0] not in (None, watch.commit) and watch.name not in self._pending:
                    self._trigger(watch.name)  # a change that was not reported yet (e.g. a lost check)
