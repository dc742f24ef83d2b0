"""Every secret pattern in one Hyperscan pass: which of them may match a file at all.

In prefilter mode Hyperscan matches at least what a pattern matches, so running the exact Python regexes of
:mod:`pipelines.dataset.secrets` only for the patterns that hit finds the same spans, at disk speed.
"""

from __future__ import annotations

import hashlib
import re

from pipelines.dataset.secrets import SCANNED, Hits
from pipelines.fsutil import user_cache_dir, write_cache

try:
    import hyperscan
except ImportError:  # the dataset extra installs it; without it every regex runs in Python
    hyperscan = None


class Prefilter:
    """All patterns in one Hyperscan database, compiled once per process (~0.2 s).

    Sound only for ASCII input, where bytes and characters agree (``\\w``, ``\\s``, counts, case); other
    files get None (every regex runs). A pattern for the lowered text is scanned case-insensitively over the
    original, which matches at least what it matches on the lowered text.
    """

    def __init__(self) -> None:
        if hyperscan is None:
            raise RuntimeError("hyperscan is not installed")
        expressions = [re.sub(r"\(\?P<\w+>", "(", pattern.pattern).encode() for pattern, _ in SCANNED]
        written = [(pattern.declared_flags, on_lower) for pattern, on_lower in SCANNED]
        key = hashlib.sha256(repr((hyperscan.__version__, expressions, written)).encode()).hexdigest()[:16]
        cache = user_cache_dir() / f"secret-prefilter-{key}.hsdb"
        try:  # compiling takes ~0.1 s; a compiled database is kept in the user's cache
            self.database = hyperscan.loadb(cache.read_bytes(), mode=hyperscan.HS_MODE_BLOCK)
            self.database.scratch = hyperscan.Scratch(self.database)
            return
        except (OSError, hyperscan.error):
            pass
        flags = [_hyperscan_flags(pattern.flags, on_lower) for pattern, on_lower in SCANNED]
        self.database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self.database.compile(expressions=expressions, ids=list(range(len(expressions))), flags=flags)
        write_cache(cache, hyperscan.dumpb(self.database))

    def hits(self, data: bytes) -> Hits:
        """The ids of the patterns that may match the file ``data`` (None: not ASCII, run them all)."""
        if not data.isascii():
            return None
        found: set[int] = set()
        self.database.scan(data, match_event_handler=_collect, context=found)
        return frozenset(found)


_shared: list[Prefilter] = []


def shared_prefilter() -> Prefilter | None:
    """This process's :class:`Prefilter`, compiled on first use (None without hyperscan). Compiled before a
    fork, it is inherited by the children."""
    if hyperscan is None:
        return None
    if not _shared:
        _shared.append(Prefilter())
    return _shared[0]


def _hyperscan_flags(flags: int, on_lower: bool) -> int:
    """Hyperscan's flags for a Python regex's (compiled) flags."""
    flag = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
    if on_lower or flags & re.IGNORECASE:
        flag |= hyperscan.HS_FLAG_CASELESS
    if flags & re.MULTILINE:
        flag |= hyperscan.HS_FLAG_MULTILINE
    if flags & re.DOTALL:
        flag |= hyperscan.HS_FLAG_DOTALL
    return flag


def _collect(pattern_id: int, start: int, end: int, flags: int, found: set[int]) -> None:
    found.add(pattern_id)
