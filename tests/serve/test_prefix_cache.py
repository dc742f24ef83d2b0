"""The radix tree of cached prompt prefixes and the prompt-lookup drafter, on hand-made tensors and token lists."""

from __future__ import annotations

import torch

from pipelines.serve.prefix_cache import PrefixCache
from pipelines.serve.speculation import DraftLength, NgramDrafter

LAYERS, HEADS, DIM = 2, 2, 4
PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4  # bytes of one position (float32)


def kv_for(ids: list[int]):
    """Keys/values whose every entry is the token id at that position, so a lookup shows what it returns."""

    def kv_of(start: int, end: int) -> torch.Tensor:
        values = torch.tensor(ids[start:end], dtype=torch.float32)
        return values.view(1, 1, 1, -1, 1).expand(LAYERS, 2, HEADS, -1, DIM).clone()

    return kv_of


def positions(match) -> list[int]:
    if not match.segments:
        return []
    return torch.cat(match.segments, dim=3)[0, 0, 0, :, 0].int().tolist()


def test_longest_prefix_is_found_and_returned_position_by_position() -> None:
    cache = PrefixCache(10**9)
    first = [5, 6, 7, 8, 9]
    cache.insert(first, kv_for(first))
    match = cache.lookup([5, 6, 7, 1, 2])
    assert match.length == 3 and positions(match) == [5, 6, 7]
    assert cache.lookup([4, 5, 6]).length == 0
    assert cache.lookup(first, limit=4).length == 4  # a full hit leaves the last token to run


def test_a_diverging_prompt_splits_the_node_and_both_branches_stay() -> None:
    cache = PrefixCache(10**9)
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]
    cache.insert(a, kv_for(a))
    cache.insert(b, kv_for(b))
    assert positions(cache.lookup(a)) == a
    assert positions(cache.lookup(b)) == b
    assert cache.tokens == 3 + 3 + 2  # the shared start is stored once
    assert cache.bytes == cache.tokens * PER_TOKEN


def test_only_the_new_part_is_copied_when_a_prompt_grows() -> None:
    cache = PrefixCache(10**9)
    asked: list[tuple[int, int]] = []
    ids = list(range(10))

    def kv_of(start: int, end: int) -> torch.Tensor:
        asked.append((start, end))
        return kv_for(ids)(start, end)

    cache.insert(ids[:6], kv_of)
    cache.insert(ids, kv_of)
    assert asked == [(0, 6), (6, 10)]


def test_memory_stays_under_the_bound_and_the_least_recently_used_branch_goes() -> None:
    cache = PrefixCache(capacity_bytes=12 * PER_TOKEN)
    old, recent = [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]
    cache.insert(old, kv_for(old))
    cache.insert(recent, kv_for(recent))
    cache.lookup(recent)
    new = [3, 3, 3, 3, 3]
    cache.insert(new, kv_for(new))
    assert cache.bytes <= cache.capacity
    assert cache.lookup(old).length == 0
    assert cache.lookup(recent).length == 5 and cache.lookup(new).length == 5
    assert cache.stats["evicted_tokens"] == 5


def test_a_prompt_larger_than_the_cache_is_not_kept_and_zero_capacity_keeps_nothing() -> None:
    cache = PrefixCache(capacity_bytes=3 * PER_TOKEN)
    ids = list(range(8))
    cache.insert(ids, kv_for(ids))
    assert cache.bytes <= cache.capacity
    off = PrefixCache(0)
    off.insert(ids, kv_for(ids))
    assert off.lookup(ids).length == 0 and off.bytes == 0


def test_drafter_proposes_what_followed_the_last_occurrence_of_the_suffix() -> None:
    drafter = NgramDrafter([10, 11, 12, 13, 14, 99, 10, 11, 12])
    assert drafter.draft(3) == [13, 14, 99]
    drafter.extend([13, 50])
    assert drafter.draft(4) == []  # "13 50" never appeared before
    drafter.extend([10, 11])
    assert drafter.draft(2) == [12, 13]  # the latest occurrence wins
    assert NgramDrafter([1, 2, 3]).draft(0) == []


def test_draft_length_grows_on_success_and_shrinks_on_rejection() -> None:
    length = DraftLength(start=4, most=8)
    length.update(proposed=4, accepted=4)
    assert length.value == 6
    length.update(proposed=6, accepted=1)
    assert length.value == 2
