"""Committed content only, whatever the working copy holds: a file is read from the working tree only where it is
exactly the committed blob, every other blob from git; a FIFO, a symbolic link or an edit is never taken in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipelines.dataset import builder
from pipelines.dataset.builder import build
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.dataset.gitsource import GitSource, file_blob, file_blobs
from tests.dataset.conftest import Repo, python_file, records

CONFIG = DatasetConfig(near_dup=False)


@pytest.fixture(params=["pool", "here"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Files read by the workers of the pool, or by the builder itself (few files)."""
    monkeypatch.setattr(builder, "_PARALLEL_FROM", 0 if request.param == "pool" else 10**9)
    return request.param


def test_uncommitted_edits_links_and_fifos_are_never_read(repo: Repo, tmp_path: Path, where: str) -> None:
    committed = {f"m{i}.py": python_file(f"m{i}", seed=i) for i in range(8)}
    repo.commit(committed)
    outside = tmp_path / "outside.py"
    outside.write_text(python_file("leak", seed=99))
    (repo.path / "m0.py").write_text(committed["m0.py"].replace("return", "retur!"))  # same size, other bytes
    (repo.path / "m1.py").write_text(committed["m1.py"] + "# not committed\n")
    (repo.path / "m2.py").unlink()
    (repo.path / "m2.py").symlink_to(outside)
    (repo.path / "m3.py").unlink()
    os.mkfifo(repo.path / "m3.py")  # opening it for reading would wait for a writer forever
    (repo.path / "m4.py").unlink()  # deleted (e.g. a sparse checkout)
    build(tmp_path / "ds", [RepoSpec("project", str(repo.path))], CONFIG)
    got = {record["path"]: record["text"] for record in records(tmp_path / "ds")}
    assert got == committed


def test_a_checkout_of_another_branch_gives_the_ref_asked_for(repo: Repo, tmp_path: Path, where: str) -> None:
    repo.commit({"a.py": python_file("a"), "b.py": python_file("b", seed=1)})
    repo.git("checkout", "-q", "-b", "other")
    repo.commit({"a.py": python_file("a", seed=7), "c.py": python_file("c", seed=2)})
    build(tmp_path / "ds", [RepoSpec("project", str(repo.path), ref="main")], CONFIG)
    got = {record["path"]: record["text"] for record in records(tmp_path / "ds")}
    assert got == {"a.py": python_file("a"), "b.py": python_file("b", seed=1)}


def test_line_ending_conversion_on_checkout_is_not_taken_in(repo: Repo, tmp_path: Path) -> None:
    text = python_file("crlf")
    repo.commit({"w.py": text})
    repo.git("config", "core.autocrlf", "true")
    (repo.path / "w.py").unlink()
    repo.git("checkout", "--", "w.py")
    assert b"\r\n" in (repo.path / "w.py").read_bytes()  # the working copy holds CRLF, the blob LF
    build(tmp_path / "ds", [RepoSpec("project", str(repo.path))], CONFIG)
    assert [record["text"] for record in records(tmp_path / "ds")] == [text]


def test_files_read_a_folder_at_a_time_are_those_read_one_by_one(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"{folder}/f{i}.py": f"x = {i}  # {folder}\n" for folder in ("a", "a/b", "c", "d") for i in range(3)}
    repo.commit(files | {"top.py": "top = 1\n", "gone/g.py": "g = 1\n", "e/link.py": "e = 1\n"})
    shas = {path: repo.git("rev-parse", f"HEAD:{path}") for path in [*files, "top.py", "gone/g.py", "e/link.py"]}
    shutil.rmtree(repo.path / "gone")  # a folder no longer there
    (repo.path / "e" / "link.py").unlink()
    (repo.path / "e" / "link.py").symlink_to(repo.path / "top.py")  # a link: not followed
    (repo.path / "a" / "f1.py").write_text("edited\n")  # another content
    wanted = [(sha, path, len(files.get(path, "top = 1\n").encode())) for path, sha in sorted(shas.items())]
    wanted.append(wanted[0])  # a folder met again after others
    expected = [file_blob(repo.path / path, sha, size) for sha, path, size in wanted]
    assert file_blobs(str(repo.path), wanted) == expected
    taken = [path for (_, path, _), data in zip(wanted[:-1], expected, strict=False) if data is not None]
    assert sorted(taken) == sorted({*files, "top.py"} - {"a/f1.py"})  # not the edited, gone or linked ones
    assert expected[-1] == expected[0] is not None
    monkeypatch.setattr(os, "supports_dir_fd", set())  # a system without openat: each file by its whole path
    assert file_blobs(str(repo.path), wanted) == expected


def test_a_file_is_taken_only_when_it_is_the_blob(repo: Repo, tmp_path: Path) -> None:
    repo.commit({"x.py": "print('x')\n"})
    sha = repo.git("rev-parse", "HEAD:x.py")
    path = repo.path / "x.py"
    assert file_blob(path, sha, path.stat().st_size) == b"print('x')\n"
    assert file_blob(path, sha, path.stat().st_size + 1) is None  # the size git gives differs
    assert file_blob(path, "0" * 40, path.stat().st_size) is None  # another object id
    assert file_blob(repo.path / "missing.py", sha, 11) is None
    assert file_blob(repo.path, sha, 11) is None  # a folder
    os.mkfifo(tmp_path / "fifo")
    assert file_blob(tmp_path / "fifo", sha, 0) is None  # not opened: nothing writes to it
    source = GitSource(repo.path)
    assert source.worktree == repo.path.resolve()
    bare = tmp_path / "bare.git"
    repo.git("clone", "-q", "--bare", str(repo.path), str(bare))
    assert GitSource(bare).worktree is None
    assert dict(GitSource(bare).read_committed([(sha, "x.py", 11)])) == {sha: b"print('x')\n"}
