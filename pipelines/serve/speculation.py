"""Prompt-lookup speculation: guess the next tokens by finding the text just written earlier in the context.

Code repeats itself (names, call shapes, whole lines), so the tokens that followed the last occurrence of the
current last few tokens are a good guess of what comes next. The engine feeds the guess through the model in
one forward pass and keeps the longest run the model itself would have chosen greedily, plus the model's own
next token: the output is exactly what plain greedy decoding gives, in fewer passes when the guess is right.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramDrafter:
    """An index from every n-gram of a row's tokens (n = ``min_n``..``max_n``) to where it was last followed."""

    def __init__(self, tokens: Sequence[int], max_n: int = 3, min_n: int = 2) -> None:
        self.tokens: list[int] = []
        self.sizes = range(max_n, min_n - 1, -1)
        self.seen: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            end = len(self.tokens)
            for n in self.sizes:
                if end >= n:
                    self.seen[tuple(self.tokens[end - n : end])] = end  # the n-gram before `end` was followed there
            self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the longest matching suffix."""
        if limit <= 0:
            return []
        end = len(self.tokens)
        for n in self.sizes:
            if end < n:
                continue
            at = self.seen.get(tuple(self.tokens[end - n :]))
            if at is not None:
                return self.tokens[at : at + limit]
        return []


class DraftLength:
    """How many tokens to guess: more after a fully accepted guess, fewer after a rejected one."""

    def __init__(self, start: int = 4, most: int = 12) -> None:
        self.value, self.most = start, most

    def update(self, proposed: int, accepted: int) -> None:
        if accepted == proposed:
            self.value = min(self.most, self.value + 2)
        else:
            self.value = max(2, accepted + 1)
