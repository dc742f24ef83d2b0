"""Read committed content from git (the git command itself): refs, trees and blobs in bulk.

Only what is committed at a ref is ever read. A blob may be taken from the working tree's file at its path, but
only where that file holds exactly the blob (its size and its git object id, hashed from the bytes read, agree):
uncommitted edits, line-ending or LFS filters, sparse checkouts and other branches are read from git instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipelines.dataset.packorder import in_pack_order
from pipelines.dataset.treeahead import LS_TREE, tree_read_ahead
from pipelines.errors import RepoError

MODE_SYMLINK = "120000"
MODE_SUBMODULE = "160000"
NULL_SHA = "0" * 40
# git maps pack files in windows of up to 1 GiB and caches 96 MiB of delta bases: reading a long history made
# a git process of 350 MB. Smaller windows and cache bound it (~80 MB) at no measured cost in time.
_BOUNDED_MEMORY = (
    "-c",
    "core.packedGitWindowSize=8m",
    "-c",
    "core.packedGitLimit=64m",
    "-c",
    "core.deltaBaseCacheLimit=16m",
)
_PACK_ORDER_FROM = 64  # blobs to read before they are put in pack order (reading the pack indexes costs ~ms)


class TreeEntry(NamedTuple):
    """One path at a commit: its git mode, object id and (for blobs) byte size (a tuple: one is made per path)."""

    mode: str
    sha: str
    size: int  # -1 for submodules


@dataclass(frozen=True)
class Change:
    """One path changed between two commits (renames are reported as status R with ``old_path``)."""

    status: str  # A, M, D, T or R
    path: str
    mode: str  # the new mode ("000000" when deleted)
    sha: str  # the new object id (NULL_SHA when deleted)
    old_path: str | None = None


def decode_path(raw: bytes) -> str:
    """Git paths are bytes; non-UTF-8 bytes become visible escapes so they stay storable and readable."""
    return raw.decode("utf-8", "backslashreplace")


class GitSource:
    """A git repository (working copy or bare) opened for reading committed content."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise RepoError(f"{self.path} does not exist. Give the path of a local git repository.")
        found = subprocess.run(
            ["git", "-C", str(self.path), "rev-parse", "--absolute-git-dir", "--is-bare-repository", "--show-prefix"],
            capture_output=True,
            text=True,
        )
        lines = found.stdout.split("\n")
        if found.returncode != 0 or len(lines) < 3:
            raise RepoError(
                f"{self.path} is not a git repository. Give the folder of a git working copy or a bare repo."
            )
        git_dir, bare, prefix = lines[:3]
        self._objects: Path | None = None
        self.worktree: Path | None = None if bare == "true" else self.path  # a checkout's top folder
        # Every git command names the git dir, so working copies, bare repos and bare mirrors without a
        # config file all work.
        self.git_dir = Path(git_dir)
        if bare == "true" or self.git_dir == self.path:
            self.path = self.git_dir
            self.worktree = None
        elif prefix:
            raise RepoError(
                f"{self.path} is a folder ({prefix.rstrip('/')}) inside a git repository. "
                f"Give the repository's top folder, {str(self.path).removesuffix(prefix.rstrip('/')).rstrip('/')}."
            )

    # -- refs ---------------------------------------------------------------------------------------
    def default_ref(self) -> str:
        """The checked-out branch (or HEAD when detached)."""
        branch = subprocess.run(self._git("symbolic-ref", "--quiet", "--short", "HEAD"), capture_output=True, text=True)
        return branch.stdout.strip() if branch.returncode == 0 and branch.stdout.strip() else "HEAD"

    def branches(self) -> list[str]:
        out = self._run(["for-each-ref", "--format=%(refname:short)", "refs/heads/"])
        return sorted(out.decode(errors="replace").split())

    def resolve(self, ref: str | None) -> tuple[str, str]:
        """Return (ref name, commit sha) for ``ref`` (default: the checked-out branch)."""
        name = ref or self.default_ref()
        try:
            commit = self._run(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"])
        except RepoError:
            if not self._has_commits():
                raise RepoError(f"{self.path} has no commits yet. Commit something, then index it.") from None
            branches = ", ".join(self.branches()[:10]) or "none"
            raise RepoError(
                f"{self.path} has no ref {name!r}. Branches there: {branches}. Pass one of them (or a tag/sha)."
            ) from None
        return name, commit.decode().strip()

    def _has_commits(self) -> bool:
        return bool(self._run(["rev-list", "-n", "1", "--all"]).strip())

    def first_parent_range(self, old: str, new: str) -> list[str] | None:
        """Commits of ``new``'s first-parent chain after ``old``, newest first.

        None when ``old`` is not on that chain (a force push, or a merge that left it on a side branch).
        """
        if old == new:
            return []
        try:
            out = self._run(["rev-list", "--first-parent", "--parents", f"{old}..{new}"])
        except RepoError:  # old is gone (e.g. a force push and a gc)
            return None
        rows = [line.split() for line in out.decode().splitlines() if line.strip()]
        if not rows:
            return None  # new is an ancestor of old: history went backwards
        oldest = rows[-1]
        if len(oldest) < 2 or oldest[1] != old:
            return None
        return [row[0] for row in rows]

    # -- trees and diffs ----------------------------------------------------------------------------
    def tree(self, commit: str) -> dict[str, TreeEntry]:
        """Every path at ``commit`` (recursively), with mode, sha and size (as ``treeahead.trees_read_ahead`` read
        it, when it did)."""
        out = tree_read_ahead(self.git_dir, commit)
        if out is None:
            out = self._run([*LS_TREE, commit])
        entries: dict[str, TreeEntry] = {}
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, _kind, sha, size = meta.decode().split()
            # "-" for submodules; "BAD" when the object is missing (reading it then reports it unreadable).
            entries[decode_path(raw_path)] = TreeEntry(mode, sha, int(size) if size.isdigit() else -1)
        return entries

    def diff(self, old: str, new: str) -> list[Change]:
        """Paths that differ between two commits, renames detected (as git's diff reports them)."""
        out = self._run(["diff-tree", "-r", "-z", "-M", "--no-commit-id", old, new])
        tokens = out.split(b"\0")
        changes: list[Change] = []
        i = 0
        while i < len(tokens):
            head = tokens[i]
            if not head.startswith(b":"):
                i += 1
                continue
            _old_mode, mode, _old_sha, sha, status = head[1:].decode().split()
            status = status[0]
            if status in "RC":
                old_path, new_path = decode_path(tokens[i + 1]), decode_path(tokens[i + 2])
                changes.append(Change(status, new_path, mode, sha, old_path))
                i += 3
            else:
                changes.append(Change(status, decode_path(tokens[i + 1]), mode, sha))
                i += 2
        return changes

    def last_commits(self, rev_range: str, paths: set[str] | None = None) -> dict[str, str]:
        """For each path touched in ``rev_range``'s first-parent history, the newest commit touching it.

        With ``paths`` given, stop walking as soon as all of them are found.
        """
        walk = HistoryWalk(self, rev_range, paths)
        walk.run()
        return walk.result()

    def blob_sizes(self, shas: Iterable[str]) -> dict[str, int]:
        """Byte sizes of objects, without reading them (``git cat-file --batch-check``)."""
        wanted = sorted(set(shas))
        if not wanted:
            return {}
        out = subprocess.run(
            self._git("cat-file", "--batch-check"),
            input=("\n".join(wanted) + "\n").encode(),
            capture_output=True,
            check=True,
        ).stdout
        sizes: dict[str, int] = {}
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                sizes[parts[0]] = int(parts[2])
        return sizes

    # -- blobs --------------------------------------------------------------------------------------
    def in_pack_order(self, shas: list[str]) -> list[str]:
        """``shas`` in the order the repository's packs store them: many blobs read in that order cost git a
        fraction of the work (see :mod:`pipelines.dataset.packorder`)."""
        if len(shas) < _PACK_ORDER_FROM:
            return list(shas)
        if self._objects is None:  # the common folder of a worktree's repository, or $GIT_OBJECT_DIRECTORY
            self._objects = Path(self._run(["rev-parse", "--git-path", "objects"]).decode().strip()).resolve()
        return in_pack_order(self._objects, shas)

    def read_committed(self, wanted: Iterable[tuple[str, str, int]]) -> Iterator[tuple[str, bytes | None]]:
        """(sha, content) for each (sha, path, size), each sha once: from the working tree's file at ``path`` where it
        holds exactly that blob, the rest from git (in pack order) after them. Content is None for an object git
        cannot find."""
        from_git: dict[str, None] = {}
        done: set[str] = set()
        for sha, path, size in wanted:
            if sha in done or sha in from_git:
                continue
            data = None if self.worktree is None else file_blob(self.worktree / path, sha, size)
            if data is None:
                from_git[sha] = None
            else:
                done.add(sha)
                yield sha, data
        yield from self.read_blobs(self.in_pack_order(list(from_git)))

    def read_blobs(self, shas: Iterable[str]) -> Iterator[tuple[str, bytes | None]]:
        """Stream (sha, content) for each sha, in order, through one ``git cat-file --batch``.

        Content is None for an object git cannot find.
        """
        shas = list(shas)
        if not shas:
            return
        proc = subprocess.Popen(
            self._git("cat-file", "--batch", "--buffer"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def feed() -> None:
            try:
                for sha in shas:
                    stdin.write(sha.encode() + b"\n")
                stdin.close()
            except (BrokenPipeError, ValueError):
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        try:
            for sha in shas:
                header = stdout.readline().split()
                if len(header) == 2 and header[1] == b"missing":
                    yield sha, None  # e.g. a partial clone or a damaged object store
                    continue
                if len(header) != 3:
                    raise RepoError(f"git could not read object {sha} in {self.path}: the repository may be corrupt.")
                size = int(header[2])
                data = stdout.read(size)
                stdout.read(1)  # the newline after each object
                yield sha, data
        finally:
            stdout.close()
            proc.kill()
            proc.wait()
            writer.join(timeout=5)

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        """Whether ``ancestor`` is ``commit`` or one of its ancestors."""
        return (
            subprocess.run(self._git("merge-base", "--is-ancestor", ancestor, commit), capture_output=True).returncode
            == 0
        )

    def _git(self, *args: str) -> list[str]:
        return ["git", f"--git-dir={self.git_dir}", *_BOUNDED_MEMORY, *args]

    def _run(self, args: list[str]) -> bytes:
        try:
            return subprocess.run(self._git(*args), check=True, capture_output=True).stdout
        except subprocess.CalledProcessError as exc:
            detail = exc.stderr.decode(errors="replace").strip().splitlines()
            raise RepoError(
                f"git {args[0]} failed in {self.path}: {detail[-1] if detail else exc}. "
                "Check the repository and the ref."
            ) from None


def file_blob(path: str | Path, sha: str, size: int, folder: int | None = None) -> bytes | None:
    """The bytes of the regular file at ``path`` (relative to the open folder ``folder`` when given) when they are
    the blob ``sha`` of ``size`` bytes (git's object id: SHA-1, or SHA-256 for a 64-digit id, of ``blob <size>\\0``
    and the bytes), else None. Not followed: a symbolic link; not opened: a FIFO, device or socket, or a file of
    another size (looked at first); not read: one swapped in since (opened without blocking, looked at again)."""
    try:
        found = os.lstat(path, dir_fd=folder)
        if not stat.S_ISREG(found.st_mode) or found.st_size != size:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return None
        data = os.read(fd, size + 1)  # one more: a file that grew since is not taken
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) != size:
        return None
    digest = (hashlib.sha1 if len(sha) == 40 else hashlib.sha256)(b"blob %d\0" % size, usedforsecurity=False)
    digest.update(data)
    return data if digest.hexdigest() == sha else None


def file_blobs(root: str, wanted: list[tuple[str, str, int]]) -> list[bytes | None]:
    """:func:`file_blob` of each (sha, path under ``root``, size): each folder opened once for its files in a row
    (``wanted`` in path order), so that the kernel walks a file's path from its folder, not from ``root``."""
    if not {os.open, os.stat} <= os.supports_dir_fd:  # a system without openat (lstat goes with stat): whole paths
        return [file_blob(os.path.join(root, path), sha, size) for sha, path, size in wanted]
    datas: list[bytes | None] = []
    opened: tuple[str, int | None] | None = None
    try:
        for sha, path, size in wanted:
            parent, _, name = path.rpartition("/")
            if opened is None or opened[0] != parent:
                if opened is not None and opened[1] is not None:
                    os.close(opened[1])
                opened = (parent, _open_folder(os.path.join(root, parent)))
            datas.append(None if opened[1] is None else file_blob(name, sha, size, opened[1]))
    finally:
        if opened is not None and opened[1] is not None:
            os.close(opened[1])
    return datas


def _open_folder(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None


class HistoryWalk:
    """``git log`` over a first-parent range, read as it streams: the newest commit touching each path.

    :meth:`start` runs it in a thread (the walk of a long history takes seconds of git's time, which can
    overlap other work); :meth:`close` stops it; :meth:`result` waits for it.
    """

    def __init__(self, source: GitSource, rev_range: str, paths: set[str] | None = None) -> None:
        options = ("--first-parent", "--root", "--raw", "--no-renames", "--no-abbrev", "-z", "--format=%x01%H")
        self.command = source._git("log", *options, rev_range)
        self.remaining = set(paths) if paths is not None else None
        self.found: dict[str, str] = {}
        self.error: BaseException | None = None
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None
        self.stopped = False

    def start(self) -> HistoryWalk:
        self.thread = threading.Thread(target=self.run, name="git-history", daemon=True)
        self.thread.start()
        return self

    def run(self) -> None:
        try:
            self._walk()
        except BaseException as exc:  # re-raised by result()
            self.error = exc

    def close(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.thread is not None:
            self.thread.join()

    def result(self) -> dict[str, str]:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        return self.found

    def _walk(self) -> None:
        if self.remaining is not None and not self.remaining:
            return
        self.proc = proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            self._parse(proc.stdout)
        finally:
            proc.stdout.close()
            proc.kill()
            proc.wait()

    def _parse(self, stream) -> None:  # type: ignore[no-untyped-def]
        found, remaining = self.found, self.remaining
        current = ""
        expect_path = False
        buffer = b""
        while not self.stopped:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            buffer += chunk
            *tokens, buffer = buffer.split(b"\0")
            for token in tokens:
                token = token.lstrip(b"\n")
                if expect_path:
                    expect_path = False
                    path = decode_path(token)
                    if path not in found:
                        found[path] = current
                        if remaining is not None:
                            remaining.discard(path)
                elif token.startswith(b"\x01"):
                    current = token[1:].decode()
                elif token.startswith(b":"):
                    expect_path = True
            if remaining is not None and not remaining:
                break
