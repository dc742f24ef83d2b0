"""Held-out samples from a real repo and dataset: the time split's filters, redaction and deduplication."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.dataset import dedup
from pipelines.dataset.builder import build
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.errors import InputError, RepopilotError
from pipelines.evaluate.samples import DatasetView, choose_splits, load_samples
from pipelines.progress import Progress
from tests.evaluate.conftest import NEW_ENTITIES, World


def _load(world: World, splits: list[str], **options) -> object:
    settings = {"repo": None, "since": world.indexed, "until": None, "max_files": 100, "seed": 0, **options}
    return load_samples(DatasetView(world.dataset), splits, progress=Progress("none"), **settings)


def test_time_split_holds_new_files_and_drops_everything_training_already_has(world: World) -> None:
    found = _load(world, ["time"])
    info = found.splits["time"]
    paths = {s.path for s in found.samples}
    expected_new = {f"services/{kind}_{e}.py" for e in NEW_ENTITIES for kind in ("sync", "audit", "bill")}
    assert paths == expected_new | {"settings/vault.py"}
    assert info["dropped"] == {
        "duplicate_of_training": 2,  # the exact copy, and the copy equal to a training file once redacted
        "near_duplicate_of_training": 1,
        "vendored": 1,
    }
    assert (info["since_commit"], info["until_commit"]) == (world.indexed, world.head)

    # Check against the training records independently: no blob, no text, no near copy of any of them.
    training = world.records("train")
    shas, texts = {r["sha"] for r in training}, {r["text"] for r in training}
    signatures = [s for s in (dedup.signature(r["text"], 50) for r in training) if s is not None]
    for sample in found.samples:
        assert sample.sha not in shas and sample.text not in texts
        sig = dedup.signature(sample.text, 50)
        if sig is not None:
            assert dedup.similarities(sig, signatures).max() < 0.85, sample.path


def test_time_split_redacts_secrets_like_the_dataset(world: World) -> None:
    found = _load(world, ["time"])
    vault = next(s for s in found.samples if s.path == "settings/vault.py")
    assert world.secret not in vault.text and "<redacted-" in vault.text
    assert 'VAULT_CLIENT = LedgerClient("vault")' in vault.text
    assert all(world.secret not in s.text and world.training_secret not in s.text for s in found.samples)


def test_sampling_is_seeded_and_capped(world: World) -> None:
    first = [s.path for s in _load(world, ["time"], max_files=7, seed=5).samples]
    again = [s.path for s in _load(world, ["time"], max_files=7, seed=5).samples]
    other = [s.path for s in _load(world, ["time"], max_files=7, seed=6).samples]
    assert len(first) == 7 and first == again and set(first) != set(other)
    validation = _load(world, ["validation"], since=None, max_files=4).samples
    assert len(validation) == 4 and {s.split for s in validation} == {"validation"}
    everything = {r["path"]: r["text"] for r in world.records("validation")}
    assert all(everything[s.path] == s.text for s in validation)


def test_training_definitions_know_the_internal_library(world: World) -> None:
    index = _load(world, ["validation"], since=None).definitions["ledger"]
    assert {"LedgerClient", "acme_fetch_ledger", "acme_post_invoice", "ACME_DEFAULT_CURRENCY"} <= index.names()
    assert "open_session" in index.names()
    assert not {"json", "client", "account_id", "session", "print"} & index.names()


def test_the_time_split_defaults_to_the_commit_the_dataset_indexed(world: World) -> None:
    found = _load(world, ["time"], since=None)
    assert found.splits["time"]["since_commit"] == world.indexed
    assert len(found.samples) == 3 * len(NEW_ENTITIES) + 1


def test_an_until_before_new_work_narrows_the_split(world: World) -> None:
    middle = world.repo.git("rev-parse", "HEAD~1")
    found = _load(world, ["time"], until=middle)
    assert {s.path for s in found.samples} == {
        f"services/{kind}_{e}.py" for e in NEW_ENTITIES[:4] for kind in ("sync", "audit", "bill")
    }


@pytest.mark.parametrize(
    ("options", "title", "words"),
    [
        ({"since": "no-such-commit"}, "Unknown commit", ["--since", "no-such-commit"]),
        ({"until": "no-such-branch"}, "Unknown commit", ["--until", "no-such-branch", "main"]),
        ({"repo": "frontend"}, "Invalid input", ["frontend", "ledger", "--repo"]),
    ],
)
def test_bad_time_split_inputs_say_what_to_do(world: World, options: dict, title: str, words: list[str]) -> None:
    with pytest.raises(InputError) as caught:
        _load(world, ["time"], **options)
    assert caught.value.title == title
    for word in words:
        assert word in caught.value.message


def test_since_after_until_is_refused(world: World) -> None:
    with pytest.raises(InputError, match="not an ancestor"):
        _load(world, ["time"], since=world.head, until=world.indexed)


def test_no_held_out_files_is_an_error_not_an_empty_report(world: World) -> None:
    with pytest.raises(InputError, match="No held-out files") as caught:
        _load(world, ["time"], since=world.head)
    assert caught.value.title == "Nothing to evaluate on"


def test_a_dataset_without_validation_records_needs_a_time_split(world: World, tmp_path: Path) -> None:
    bare = tmp_path / "no-validation"
    build(bare, [RepoSpec("ledger", str(world.repo.path), world.indexed)], DatasetConfig(val_fraction=0.0))
    view = DatasetView(bare)
    with pytest.raises(InputError, match="--since COMMIT") as caught:
        choose_splits(None, None, view)
    assert caught.value.title == "Nothing to evaluate on"
    assert choose_splits(None, world.indexed, view) == ["time"]
    with pytest.raises(RepopilotError, match="does not exist"):
        DatasetView(tmp_path / "missing")
