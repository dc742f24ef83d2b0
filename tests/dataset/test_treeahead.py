"""Trees read ahead by git while a build loads: the same tree as read when asked, and no git process left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.dataset import treeahead
from pipelines.dataset.gitsource import GitSource
from pipelines.dataset.treeahead import trees_read_ahead
from tests.dataset.conftest import Repo, python_file, run_cli


def test_the_tree_read_ahead_is_the_tree_read_when_asked(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    repo.commit({f"src/m{i}.py": python_file(f"m{i}", seed=i) for i in range(200)} | {"README.md": "# hi\n"})
    source = GitSource(repo.path)
    commit = source.resolve(None)[1]
    expected = source.tree(commit)
    taken: list[bool] = []
    real = treeahead.tree_read_ahead

    def recorded(git_dir: Path, commit: str) -> bytes | None:
        out = real(git_dir, commit)
        taken.append(out is not None)
        return out

    monkeypatch.setattr("pipelines.dataset.gitsource.tree_read_ahead", recorded)
    with trees_read_ahead([(str(repo.path), None)]):
        assert source.tree(commit) == expected
        assert source.tree(commit) == expected  # taken once; asked again, read again
    assert taken == [True, False]


def test_a_read_not_taken_is_stopped_and_a_moved_ref_is_read_anew(repo: Repo) -> None:
    repo.commit({"a.py": python_file("a")})
    source = GitSource(repo.path)
    with trees_read_ahead([(str(repo.path), None), (str(repo.path / "missing"), None), (str(repo.path), "nope")]):
        started = list(treeahead._ahead.values())
        assert len(started) == 1  # a folder that is no repository and a ref that does not exist: nothing started
        repo.commit({"b.py": python_file("b")})  # the branch moves on before the build reads its tree
        assert set(source.tree(source.resolve(None)[1])) == {"a.py", "b.py"}
    assert treeahead._ahead == {}
    proc, out = started[0]
    assert proc.poll() is not None and out.closed


def test_a_build_of_a_missing_ref_still_says_what_to_do(repo: Repo, tmp_path: Path) -> None:
    repo.commit({"a.py": python_file("a")})
    result = run_cli("dataset", "build", str(tmp_path / "ds"), f"{repo.path}#nope")
    assert result.returncode != 0
    assert "has no ref 'nope'" in result.stderr and "Branches there" in result.stderr
