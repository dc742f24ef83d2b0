"""Blobs are read in the order git's packs store them (see pipelines/dataset/packorder.py)."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

from pipelines.dataset.builder import build, update
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.dataset.gitsource import GitSource
from pipelines.dataset.packorder import in_pack_order
from tests.dataset.conftest import git, records


def _fast_imported(path: Path, files: int) -> dict[str, str]:
    """A repository written by ``git fast-import`` (each blob a delta on the one before), packed however few its
    objects; path -> blob sha."""
    git(path.parent, "init", "-q", "-b", "main", path.name)
    rng = random.Random(7)
    stream = ["commit refs/heads/main\n", "committer t <t@example.com> 1700000000 +0000\n", "data 2\nc\n"]
    for i in range(files):
        body = "".join(f"def f_{i}_{n}(x):\n    return x * {rng.randrange(10**6)}\n" for n in range(20))
        stream.append(f"M 100644 inline src/m{i}.py\ndata {len(body)}\n{body}\n")
    git(path, "-c", "fastimport.unpackLimit=0", "fast-import", "--quiet", input="".join(stream).encode())
    listed = git(path, "ls-tree", "-r", "main").splitlines()
    return {line.split("\t")[1]: line.split()[2] for line in listed}


def _offsets(repo: Path) -> dict[str, int]:
    """What ``git show-index`` says: sha -> offset, over every pack of ``repo``."""
    found = {}
    for index in (repo / ".git" / "objects" / "pack").glob("*.idx"):
        for line in git(repo, "show-index", input=index.read_bytes()).splitlines():
            offset, sha = line.split()[:2]
            found[sha] = int(offset)
    return found


def test_blobs_are_put_in_the_order_the_pack_stores_them(tmp_path: Path) -> None:
    repo = tmp_path / "imported"
    shas = list(_fast_imported(repo, 300).values())
    random.Random(1).shuffle(shas)
    offsets = _offsets(repo)
    ordered = in_pack_order(repo / ".git" / "objects", shas + shas[:5])  # a blob asked twice comes twice
    assert sorted(ordered) == sorted(shas + shas[:5])
    assert [offsets[s] for s in ordered] == sorted(offsets[s] for s in shas + shas[:5])
    assert ordered != sorted(shas + shas[:5])  # by name it would not be
    assert GitSource(repo).in_pack_order(shas) == in_pack_order(repo / ".git" / "objects", shas)


def test_loose_objects_and_unreadable_indexes_come_last_in_the_given_order(tmp_path: Path) -> None:
    repo = tmp_path / "imported"
    packed = list(_fast_imported(repo, 80).values())
    loose = [git(repo, "hash-object", "-w", "--stdin", input=f"loose {n}\n".encode()) for n in range(5)]
    asked = loose[:2] + packed + loose[2:]
    ordered = in_pack_order(repo / ".git" / "objects", asked)
    assert ordered[-5:] == loose and sorted(ordered[:-5]) == sorted(packed)
    for index in (repo / ".git" / "objects" / "pack").glob("*.idx"):
        index.chmod(0o644)
        index.write_bytes(index.read_bytes()[:1000])  # truncated: it tells nothing, and nothing fails
    assert in_pack_order(repo / ".git" / "objects", asked) == asked
    assert in_pack_order(repo / ".git" / "objects", []) == []


def test_a_repository_borrowing_objects_reads_them_in_the_lenders_pack_order(tmp_path: Path) -> None:
    lender = tmp_path / "imported"
    shas = list(_fast_imported(lender, 120).values())
    borrower = tmp_path / "shared"
    git(tmp_path, "clone", "-q", "--shared", str(lender), str(borrower))
    assert not list((borrower / ".git" / "objects" / "pack").glob("*.idx"))  # every object is the lender's
    random.Random(2).shuffle(shas)
    offsets = _offsets(lender)
    ordered = GitSource(borrower).in_pack_order(shas)
    assert [offsets[s] for s in ordered] == sorted(offsets[s] for s in shas)
    shutil.rmtree(lender / ".git" / "objects" / "pack")  # a lender gone: read unordered, not an error
    assert in_pack_order(borrower / ".git" / "objects", shas) == shas


def _write_index(path: Path, entries: dict[bytes, int]) -> None:
    """A version-2 pack index of ``entries`` (name -> offset), offsets of 2 GiB and more in the 8-byte table."""
    names = sorted(entries)
    fanout = [sum(1 for n in names if n[0] <= byte) for byte in range(256)]
    large = sorted((offset for offset in entries.values() if offset >= 0x80000000), reverse=True)  # not name order
    small = [o if o < 0x80000000 else 0x80000000 | large.index(o) for o in (entries[name] for name in names)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\377tOc"
        + struct.pack(">I", 2)
        + struct.pack(">256I", *fanout)
        + b"".join(names)
        + bytes(4 * len(names))  # CRCs
        + struct.pack(f">{len(small)}I", *small)
        + struct.pack(f">{len(large)}Q", *large)
        + bytes(40)  # the pack's and the index's checksums
    )


def test_offsets_past_2_gib_are_read_from_the_table_of_large_offsets(tmp_path: Path) -> None:
    rng = random.Random(3)
    offsets = [12, 5_000_000_000, 700, 0x80000000, 9_000_000_000, 2_500_000_000, 0x7FFFFFFF]
    entries = {rng.randbytes(20): offset for offset in offsets}
    _write_index(tmp_path / "objects" / "pack" / "pack-a.idx", entries)
    shas = [name.hex() for name in entries]
    rng.shuffle(shas)
    ordered = in_pack_order(tmp_path / "objects", shas)
    assert [entries[bytes.fromhex(s)] for s in ordered] == sorted(offsets)


def test_other_object_ids_and_unreadable_alternates_leave_the_order_as_it_is(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    shas = [random.Random(n).randbytes(20).hex() for n in range(3)]
    _write_index(objects / "pack" / "pack-a.idx", {bytes.fromhex(s): 100 - n for n, s in enumerate(shas)})
    assert in_pack_order(objects, shas) == shas[::-1]
    sha256 = [random.Random(n).randbytes(32).hex() for n in range(3)]  # a repository of SHA-256 ids
    assert in_pack_order(objects, sha256) == sha256
    (objects / "info").mkdir()
    (objects / "info" / "alternates").write_bytes(b"\xff\xfe not UTF-8\n")
    assert in_pack_order(objects, shas) == shas[::-1]  # its own pack still counts


def test_a_repository_of_sha256_ids_builds_and_updates(tmp_path: Path) -> None:
    """Enough blobs to be put in pack order: ids of another length are read in the given order, not refused."""
    repo = tmp_path / "sha256"
    git(tmp_path, "init", "-q", "--object-format=sha256", "-b", "main", str(repo))
    for n in range(70):
        (repo / f"m{n}.py").write_text(f"def f{n}(x):\n    return x + {n}\n\n\nclass C{n}:\n    pass\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "files")
    out = tmp_path / "dataset"
    assert build(out, [RepoSpec("p", str(repo))], DatasetConfig(near_dup=False)).repos["p"]["recomputed"] == 70
    (repo / "m1.py").write_text("def changed():\n    return 1\n")
    git(repo, "commit", "-qam", "edit")
    assert update(out).records_changed == 1
    assert len(records(out)) == 70
