"""The keys and values of one sequence, every layer, in one growable buffer.

``KVCache.data`` is ``[layers, 2, heads, capacity, head_dim]``: columns ``[0, length)`` hold the keys (index 0)
and values (index 1) of the sequence's positions. Each row being decoded owns one, so rows join and leave a
batch without copying anybody's cache; a decode step writes its column in place; rejected speculative tokens
are forgotten by moving ``length`` back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GROW = 64  # columns added at a time


class KVCache:
    def __init__(self, layers: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.data = torch.empty((layers, 2, heads, 0, head_dim), dtype=dtype, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return int(self.data.shape[3])

    def ensure(self, columns: int) -> None:
        """Room for ``columns`` columns (grows in steps of GROW, keeping what is there)."""
        if columns <= self.capacity:
            return
        shape = list(self.data.shape)
        shape[3] = -(-(columns + GROW) // GROW) * GROW
        grown = self.data.new_empty(shape)  # only columns below `length` are ever read
        grown[:, :, :, : self.length] = self.data[:, :, :, : self.length]
        self.data = grown

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``[heads, S, head_dim]`` keys and values of ``layer`` at columns ``[start, start+S)``."""
        end = start + keys.shape[1]
        self.data[layer, 0, :, start:end] = keys
        self.data[layer, 1, :, start:end] = values

    def layer(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of ``layer``'s keys and values, columns ``[0, end)``: ``[heads, end, head_dim]`` each."""
        return self.data[layer, 0, :, :end], self.data[layer, 1, :, :end]

    def truncate(self, length: int) -> None:
        """Forget the columns from ``length`` on (rejected speculative tokens)."""
        self.length = min(self.length, length)

    def segment(self, start: int, end: int) -> torch.Tensor:
        """A copy of columns ``[start, end)``: ``[layers, 2, heads, end-start, head_dim]``."""
        return self.data[:, :, :, start:end].clone()

    def load(self, segments: Sequence[torch.Tensor]) -> None:
        """Fill the cache with ``segments`` (as :meth:`segment` returns them), one after the other."""
        total = sum(int(s.shape[3]) for s in segments)
        self.ensure(total)
        at = 0
        for seg in segments:
            n = int(seg.shape[3])
            self.data[:, :, :, at : at + n] = seg
            at += n
        self.length = total

    def copy(self) -> KVCache:
        """An independent cache with the same content and room (another choice of the same prompt)."""
        twin = KVCache.__new__(KVCache)
        twin.data, twin.length = self.data.clone(), self.length
        return twin
