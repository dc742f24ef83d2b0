"""Record texts through spool files: what a worker appends is what the builder reads, and nothing stays behind."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pipelines.dataset import spool
from pipelines.dataset.spool import Spool, spool_texts


def test_texts_read_back_as_written_across_many_batches_and_writes(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = Spool(tmp_path)
    written: list[tuple[bytes, spool.Spooled]] = []
    for batch in range(5):  # one batch holds more texts than one writev call takes
        texts: list[bytes | None] = [
            None if rng.random() < 0.2 else rng.randbytes(rng.choice([1, 5, 300, 70_000])) for _ in range(1_300)
        ]
        places = spool_texts(store.prefix, texts)
        assert [p is None for p in places] == [t is None for t in texts]
        written += [(t, p) for t, p in zip(texts, places, strict=True) if t is not None and p is not None]
        if batch == 1:  # mapped before the worker wrote the rest: the builder maps the file again
            assert bytes(store.text(written[0][1])) == written[0][0]
    rng.shuffle(written)
    assert all(bytes(store.text(place)) == text for text, place in written)
    files = [p.name for p in tmp_path.iterdir()]
    assert len(files) == 1 and files[0].startswith(".tmp-spool-") and files[0].endswith(f"-{os.getpid()}")
    store.close()
    assert list(tmp_path.iterdir()) == []
    assert not spool._written  # and its file closed


def test_each_build_and_each_worker_has_its_own_file(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)
    a = spool_texts(first.prefix, [b"one"])[0]
    b = spool_texts(second.prefix, [b"two"])[0]
    assert a is not None and b is not None and a.name != b.name
    pid = os.fork()
    if pid == 0:  # a second worker of the first build writes a file of its own
        spool_texts(first.prefix, [b"three"])
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert len(list(tmp_path.iterdir())) == 3
    first.close()  # only the first build's files go
    assert [p.name for p in tmp_path.iterdir()] == [b.name]
    assert bytes(second.text(b)) == b"two"
    second.close()
    assert list(tmp_path.iterdir()) == []


def test_texts_are_read_where_files_cannot_be_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Spool(tmp_path)
    places = spool_texts(store.prefix, [b'"one"', b'"two"'])

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(19, "No such device")  # as mmap answers on a file system without it

    monkeypatch.setattr(spool.mmap, "mmap", refuse)
    assert [bytes(store.text(place)) for place in places if place is not None] == [b'"one"', b'"two"']
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_a_file_still_open_in_a_worker_is_emptied_when_the_build_is_done_with_it(tmp_path: Path) -> None:
    """A worker of the pool lives on while the outputs are made durable: the pages of its spool file, deleted but
    still open there, must not be written to the disk then."""
    store = Spool(tmp_path)
    place = spool_texts(store.prefix, [b"x" * 100_000])[0]
    assert place is not None
    held = os.open(tmp_path / place.name, os.O_RDONLY)  # as the worker's own descriptor
    try:
        store.close()
        assert list(tmp_path.iterdir()) == []
        assert os.fstat(held).st_size == 0
    finally:
        os.close(held)
