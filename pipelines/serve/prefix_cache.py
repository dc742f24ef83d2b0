"""Keys and values of recent prompts, kept in a radix tree of token ids, so a new prompt prefills only what is new.

Each node holds a run of tokens and the keys/values of those positions (``[layers, 2, heads, n, head_dim]``,
computed with every token before them in the context). Prompts that share a start share nodes: eight
developers in eight files keep eight branches, and one developer's keystrokes add a few tokens each. A
lookup walks the tree with the new prompt's own token ids, so where a few more characters re-tokenize the
end of the previous prompt the match simply stops before the tokens that differ: the reused part is always
exactly what a full prefill would compute. Memory is bounded in bytes; the least recently used leaves go
first. Only the engine's worker thread uses it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]
    kv: torch.Tensor | None  # [layers, 2, heads, len(tokens), head_dim]; None for the root
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    used: int = 0

    @property
    def bytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


@dataclass
class Match:
    """The longest cached prefix of a prompt: its length and the key/value segments that make it up."""

    length: int
    segments: list[torch.Tensor]


class PrefixCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = max(0, int(capacity_bytes))
        self.root = _Node((), None, None)
        self.bytes = 0
        self._clock = itertools.count(1)
        self.stats = {"lookups": 0, "hits": 0, "reused_tokens": 0, "prompt_tokens": 0, "evicted_tokens": 0}

    @property
    def tokens(self) -> int:
        return sum(len(n.tokens) for n in self._nodes())

    def lookup(self, ids: Sequence[int], limit: int | None = None, count: bool = True) -> Match:
        """The cached keys/values of the longest prefix of ``ids`` (at most ``limit`` tokens); ``count``: add it to
        the hit statistics (requests do, the worker's own lookahead does not)."""
        limit = len(ids) if limit is None else min(limit, len(ids))
        node, at, segments = self.root, 0, []
        now = next(self._clock)
        while at < limit:
            child = node.children.get(ids[at])
            if child is None:
                break
            same = _common(child.tokens, ids, at, limit)
            child.used = now
            segments.append(child.kv if same == len(child.tokens) else child.kv[:, :, :, :same])
            at += same
            if same < len(child.tokens):
                break
            node = child
        if count:
            self.stats["lookups"] += 1
            self.stats["hits"] += at > 0
            self.stats["reused_tokens"] += at
            self.stats["prompt_tokens"] += len(ids)
        return Match(at, segments)

    def insert(self, ids: Sequence[int], kv_of: callable) -> None:
        """Remember ``ids``; ``kv_of(start, end)`` gives the keys/values of positions ``[start, end)`` for the
        part not cached yet (only that part is copied)."""
        if not self.capacity or not ids:
            return
        node, at = self.root, 0
        now = next(self._clock)
        while at < len(ids):
            child = node.children.get(ids[at])
            if child is None:
                leaf = _Node(tuple(ids[at:]), kv_of(at, len(ids)), node, used=now)
                node.children[ids[at]] = leaf
                self.bytes += leaf.bytes
                break
            same = _common(child.tokens, ids, at, len(ids))
            if same < len(child.tokens):
                child = self._split(child, same)
            child.used = now
            node, at = child, at + same
        self._evict(keep=node)

    def clear(self) -> None:
        self.root = _Node((), None, None)
        self.bytes = 0

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node`` after its first ``at`` tokens; returns the new upper part (the old node hangs below)."""
        upper = _Node(node.tokens[:at], node.kv[:, :, :, :at].clone(), node.parent, used=node.used)
        upper.children[node.tokens[at]] = node
        node.parent.children[node.tokens[0]] = upper
        self.bytes -= node.bytes
        node.tokens, node.kv, node.parent = node.tokens[at:], node.kv[:, :, :, at:].clone(), upper
        self.bytes += node.bytes + upper.bytes
        return upper

    def _evict(self, keep: _Node) -> None:
        """Drop least recently used leaves until the tree fits (never ``keep`` or its ancestors)."""
        protected = set()
        node: _Node | None = keep
        while node is not None:
            protected.add(id(node))
            node = node.parent
        while self.bytes > self.capacity:
            leaves = [n for n in self._nodes() if not n.children and id(n) not in protected]
            if not leaves:
                return
            self._remove(min(leaves, key=lambda n: n.used))

    def _remove(self, node: _Node) -> None:
        del node.parent.children[node.tokens[0]]
        self.bytes -= node.bytes
        self.stats["evicted_tokens"] += len(node.tokens)

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())


def _common(tokens: tuple[int, ...], ids: Sequence[int], at: int, limit: int) -> int:
    """How many of ``tokens`` equal ``ids[at:limit]`` from the start."""
    n = min(len(tokens), limit - at)
    i = 0
    while i < n and tokens[i] == ids[at + i]:
        i += 1
    return i
