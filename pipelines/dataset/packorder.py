"""The order in which git's pack files store objects, so that many blobs can be read in that order.

A packed blob is often a delta on another object, itself maybe a delta (chains of up to 50 by default); git keeps
recently inflated bases in a small cache (bounded by the builder, to keep git's memory small). Read in the order
the pack stores them (a base before its deltas), blobs find their bases in that cache; read by name, a pack whose
chains run forward in history (as ``git fast-import`` writes them: each blob a delta on the one before) inflates
every chain again for each of its blobs: 10x the time on a 60,000-file repository. Reading in pack order also
makes the reads of a cold pack sequential.

Positions come from the packs' ``.idx`` files (version 2: a fan-out table, the sorted names, their CRCs, then
their offsets), read in slices rather than mapped, so that a large index does not add to the process's memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

_MAGIC = b"\377tOc"
_HEADER = 8 + 256 * 4  # magic, version, fan-out table
_SLICE = 1 << 16  # names read at a time (1.25 MiB)
_LARGE = 0x80000000  # an offset with this bit set indexes the table of 8-byte offsets


def in_pack_order(objects_dir: Path, shas: list[str]) -> list[str]:
    """``shas`` sorted by where the packs of ``objects_dir`` (and of its alternates) store them; objects in no pack
    (loose, or in a pack whose index cannot be read) come last, in the given order. Object ids that are not SHA-1
    (a repository of SHA-256 ids) are left in the given order."""
    if any(len(sha) != 40 for sha in shas):
        return list(shas)
    names = np.frombuffer(bytes.fromhex("".join(shas)), dtype="S20")
    wanted = np.sort(names)
    wanted = wanted[np.concatenate([[True], wanted[1:] != wanted[:-1]])] if len(wanted) else wanted
    rank = np.full(len(wanted), np.iinfo(np.int64).max, dtype=np.int64)  # pack number, then offset
    for number, index in enumerate(_pack_indexes(objects_dir)):
        unplaced = np.flatnonzero(rank == np.iinfo(np.int64).max)
        if not len(unplaced):
            break
        found, offsets = _offsets(index, wanted[unplaced])
        rank[unplaced[found]] = (number << 48) + offsets
    order = np.argsort(rank[np.searchsorted(wanted, names)], kind="stable")
    return [shas[i] for i in order.tolist()]


def _pack_indexes(objects_dir: Path) -> Iterator[Path]:
    """The ``.idx`` of every pack of ``objects_dir`` and of the object folders it borrows from (alternates)."""
    folders, seen = [objects_dir], set()
    while folders:
        folder = folders.pop(0)
        if folder in seen:
            continue
        seen.add(folder)
        yield from sorted((folder / "pack").glob("pack-*.idx"))
        try:
            lines = (folder / "info" / "alternates").read_text().splitlines()
            folders += [(folder / line.strip()).resolve() for line in lines if line.strip() and line[0] not in '#"']
        except (OSError, ValueError, RuntimeError):  # unreadable, not UTF-8, a symlink loop: its packs read unordered
            continue


def _offsets(index: Path, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which of ``wanted`` (sorted names) the pack index ``index`` lists, their offsets in the pack)."""
    none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    try:
        with open(index, "rb") as handle:
            header = handle.read(_HEADER)
            if len(header) < _HEADER or header[:4] != _MAGIC or header[4:8] != b"\0\0\0\2":
                return none  # a version-1 index (git before 1.5.2) or a damaged one: its objects are read unordered
            count = struct.unpack_from(">I", header, _HEADER - 4)[0]
            found, positions = _positions(handle, count, wanted)
            if not len(found):
                return none
            offsets = _entries(handle, _HEADER + 24 * count, ">u4", positions)
            large = np.flatnonzero(offsets >= _LARGE)
            if len(large):  # a pack over 2 GiB: these offsets are in the table of 8-byte ones
                at = offsets[large] - _LARGE
                order = np.argsort(at)
                offsets[large[order]] = _entries(handle, _HEADER + 28 * count, ">u8", at[order])
    except (OSError, ValueError, IndexError):
        return none  # unreadable or truncated: these objects are read unordered
    return found, offsets


def _positions(handle: BinaryIO, count: int, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which of ``wanted`` are in the sorted name table (read a slice at a time), where in it they are)."""
    found: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    for start in range(0, count, _SLICE):
        block = np.frombuffer(handle.read(20 * min(_SLICE, count - start)), dtype="S20")
        low, high = np.searchsorted(wanted, block[0], side="left"), np.searchsorted(wanted, block[-1], side="right")
        at = np.searchsorted(block, wanted[low:high]).clip(max=len(block) - 1)
        hit = np.flatnonzero(block[at] == wanted[low:high])
        found.append(hit + low)
        positions.append(at[hit] + start)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found), np.concatenate(positions)


def _entries(handle: BinaryIO, table: int, dtype: str, positions: np.ndarray) -> np.ndarray:
    """The entries at ``positions`` (ascending) of a table of fixed-size entries starting at byte ``table``, read a
    slice at a time."""
    width = np.dtype(dtype).itemsize
    out = np.empty(len(positions), dtype=np.int64)
    done = 0
    while done < len(positions):
        first = int(positions[done])
        upto = int(np.searchsorted(positions, first + _SLICE))
        handle.seek(table + width * first)
        block = np.frombuffer(handle.read(width * (int(positions[upto - 1]) - first + 1)), dtype=dtype)
        out[done:upto] = block[positions[done:upto] - first]
        done = upto
    return out
