"""Tokenize and pack: EOS between files, no dropped tail, cached per dataset version."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.finetune.data import IGNORE_INDEX, BlockDataset, iter_records, pack
from pipelines.finetune.tiny import train_tokenizer


def test_every_file_ends_with_eos_and_the_tail_is_kept(dataset: Path, tmp_path: Path) -> None:
    texts = [r["text"] for r in iter_records(dataset, "train")]
    tokenizer = train_tokenizer(texts, vocab_size=600)
    eos = tokenizer.eos_token_id
    packed, facts = pack(dataset, "train", tokenizer, 100, cache_dir=tmp_path)
    assert facts["cached"] is False and facts["files"] == len(texts)
    tokens = np.asarray(packed.tokens)
    assert int((tokens == eos).sum()) == len(texts)
    # The stream is exactly each file's tokens followed by EOS, in record order.
    first = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert tokens[: len(first) + 1].tolist() == [*first, eos]
    assert packed.blocks == -(-len(tokens) // 100)
    _ids, labels, mask = packed.block(packed.blocks - 1)
    tail = len(tokens) - (packed.blocks - 1) * 100
    assert mask.sum() == tail and (labels[tail:] == IGNORE_INDEX).all() and labels[tail - 1] == eos
    covered = sum(int(packed.block(i)[2].sum()) for i in range(packed.blocks))
    assert covered == len(tokens)  # no token dropped
    item = BlockDataset(packed)[0]
    assert item["input_ids"].shape == (100,) and item["labels"].dtype.is_floating_point is False


def test_second_pack_comes_from_the_cache(dataset: Path, tmp_path: Path) -> None:
    tokenizer = train_tokenizer((r["text"] for r in iter_records(dataset, "train")), vocab_size=600)
    first, _ = pack(dataset, "train", tokenizer, 64, cache_dir=tmp_path)
    second, facts = pack(dataset, "train", tokenizer, 256, cache_dir=tmp_path)
    assert facts["cached"] is True
    assert np.array_equal(np.asarray(first.tokens), np.asarray(second.tokens))
    assert second.blocks == -(-len(second.tokens) // 256)
    other = train_tokenizer((r["text"] for r in iter_records(dataset, "train")), vocab_size=400)
    assert pack(dataset, "train", other, 64, cache_dir=tmp_path)[1]["cached"] is False


def test_a_share_of_public_blocks_is_mixed_in_the_same_every_epoch() -> None:
    import numpy as np

    from pipelines.finetune.data import BlockDataset, Packed

    team = Packed(np.arange(80, dtype=np.uint32), block_size=8, pad_id=0, files=1, source_bytes=80)  # 10 blocks
    public = Packed(np.arange(1000, 1024, dtype=np.uint32), block_size=8, pad_id=0, files=1, source_bytes=24)
    mixed = BlockDataset(team, public, share=1 / 6, seed=3)  # 2 public blocks beside the 10: a sixth of 12
    assert len(mixed) == 12
    firsts = [int(mixed[i]["input_ids"][0]) for i in range(len(mixed))]
    assert firsts[:10] == list(range(0, 80, 8))  # the team's blocks, all of them
    assert all(f >= 1000 for f in firsts[10:])  # then public ones
    again = BlockDataset(team, public, share=1 / 6, seed=3)
    assert [int(again[i]["input_ids"][0]) for i in range(len(again))] == firsts
    assert len(BlockDataset(team)) == 10 and len(BlockDataset(team, public, share=0.0)) == 10


def test_blocks_behind_repository_context_learn_only_the_code(dataset: Path, tmp_path: Path) -> None:
    from pipelines.finetune.context_samples import pack_context

    texts = [r["text"] for r in iter_records(dataset, "train")]
    tokenizer = train_tokenizer(texts, 600)
    samples, meta = pack_context(dataset, tokenizer, 512, tmp_path, wanted=20)
    assert samples is not None and samples.count == meta["samples"] == 20
    for i in range(samples.count):
        ids, labels, mask = samples.block(i)
        k, n = int(samples.context[i]), int(mask.sum())
        context = tokenizer.decode(ids[:k].tolist())
        assert 0 < k <= 128 and n <= 512  # a quarter of the block at most
        assert all(line.startswith("#") for line in context.splitlines())  # as the server writes it
        assert "# jobs/job_" in context  # code like it from the other jobs
        assert (labels[:k] == IGNORE_INDEX).all() and (labels[k:n] == ids[k:n]).all()  # loss on the code only
    # Validation records are never context for training (they are held out): acme/ledger.py is one here.
    assert "acme/ledger.py" in {r["path"] for r in iter_records(dataset, "validation")}
    assert not any("acme/ledger.py" in tokenizer.decode(samples.block(i)[0].tolist()) for i in range(samples.count))
    again, _ = pack_context(dataset, tokenizer, 512, tmp_path, wanted=20)
    assert (again.tokens == samples.tokens).all()  # from the cache, the same
    mixed = BlockDataset(pack(dataset, "train", tokenizer, 512, cache_dir=tmp_path)[0], context=samples)
    assert len(mixed) == mixed.packed.blocks + 20
    assert (mixed[len(mixed) - 1]["labels"].numpy() == samples.block(19)[1]).all()
