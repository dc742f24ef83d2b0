"""Every secret pattern in one Hyperscan pass: which of them may match a file at all.

In prefilter mode Hyperscan matches at least what a pattern matches, so running the exact Python regexes of
:mod:`pipelines.dataset.secrets` only for the patterns that hit finds the same spans, at disk speed.

A file that is not ASCII, or holds one of ``\\x1c``-``\\x1f``, is scanned as an ASCII stand-in (:class:`Standins`):
each such character becomes one ASCII byte that every piece of every pattern accepting the character accepts too.
"""

from __future__ import annotations

import hashlib
import re
import sys

from pipelines.dataset.secrets import SCANNED, Hits
from pipelines.dataset.standins import Standins, UnsupportedPattern
from pipelines.fsutil import user_cache_dir, write_cache

try:
    import hyperscan
except ImportError:  # the dataset extra installs it; without it every regex runs in Python
    hyperscan = None


_STANDINS_FROM = 8  # such files before stand-ins are worked out (~20 ms once, ~10 us a character; ~2 ms saved a file)
# ASCII bytes that Python's \s accepts (str.isspace) and Hyperscan's does not: scanned through stand-ins too.
_UNLIKE_BYTES = (b"\x1c", b"\x1d", b"\x1e", b"\x1f")


class Prefilter:
    """All patterns in one Hyperscan database, compiled once per process (~0.2 s).

    Sound for ASCII input, where bytes and characters agree (``\\w``, counts, case; ``\\s`` but for
    ``\\x1c``-``\\x1f``, which only Python's accepts); other files, and those with such bytes, are scanned as
    their ASCII stand-in. A pattern for the lowered text is scanned case-insensitively over the original, which
    matches at least what it matches on the lowered text.
    """

    def __init__(self, standins_from: int = _STANDINS_FROM) -> None:
        if hyperscan is None:
            raise RuntimeError("hyperscan is not installed")
        expressions = [re.sub(r"\(\?P<\w+>", "(", pattern.pattern).encode() for pattern, _ in SCANNED]
        written = [(pattern.declared_flags, on_lower) for pattern, on_lower in SCANNED]
        key = hashlib.sha256(repr((hyperscan.__version__, expressions, written)).encode()).hexdigest()[:16]
        cache = user_cache_dir() / f"secret-prefilter-{key}.hsdb"
        self._standins: Standins | None = None  # worked out once ``standins_from`` files were not ASCII
        self._standins_from = standins_from
        self._other_files = 0
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

    def hits(self, data: bytes, text: str | None = None) -> Hits:
        """The ids of the patterns that may match the file ``data`` (``text``: its decoded text, if at hand).

        None (run them all) for a file that needs stand-ins before they are worked out (a one-file update does
        not pay for them), or with a character that has none.
        """
        a, b, c, d = _UNLIKE_BYTES  # (not a generator: one is made per file)
        if not data.isascii() or a in data or b in data or c in data or d in data:
            data = self._standin_of(data, text)  # type: ignore[assignment]
            if data is None:
                return None
        found: set[int] = set()
        self.database.scan(data, match_event_handler=_collect, context=found)
        return frozenset(found)

    def prepare(self) -> None:
        """Work out the stand-ins now (~20 ms), e.g. before worker processes fork, each of which would otherwise."""
        self._other_files = max(self._other_files, self._standins_from)
        self._standins_of_many()

    def _standin_of(self, data: bytes, text: str | None) -> bytes | None:
        self._other_files += 1
        self._standins_of_many()
        if self._standins is None:
            return None
        return self._standins.ascii_of(data.decode() if text is None else text)

    def _standins_of_many(self) -> None:
        """Work out the stand-ins once ``standins_from`` files needed them."""
        if self._standins is None and self._other_files >= self._standins_from:
            try:
                self._standins = Standins(SCANNED)
            except UnsupportedPattern:  # a newer detect-secrets with a construct the stand-ins cannot reason about
                self._standins_from = sys.maxsize


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
