"""ASCII stand-ins for the other characters of a file, so that the one-pass ASCII secret prefilter stays sound.

The prefilter scans bytes, as ASCII; the exact regexes run on characters. A file that is not ASCII (or holds one
of ``\\x1c``-``\\x1f``, which Python's ``\\s`` accepts and Hyperscan's does not) is scanned as a copy in which
each such character ``c`` is one ASCII byte ``b``, chosen so that for every one-character piece (a
literal, a class or ``.``) of every scanned pattern:

- where the piece accepts ``c`` (or ``c.lower()``, for a pattern run on the lowered text), it accepts ``b`` as the
  prefilter reads it (ASCII rules; case-insensitive for those patterns);
- ``b`` is a word character exactly when ``c`` is (``\\b``), and is not a newline (``^``, ``$``).

Lookarounds and back references are left out: in prefilter mode Hyperscan lets every lookaround pass and
approximates a back reference by a superset (a test holds it to that). Then a match on the text is, piece by piece,
a match on the copy, which has as many bytes as the text has characters, and the prefilter hits it. A character
without such a byte leaves the file to every regex, as before. The pieces are read with Python's own regex parser
and compiled by it, so they mean exactly what they mean in the patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

try:
    from re import _compiler, _constants, _parser  # type: ignore[attr-defined]  # Python 3.11+
except ImportError:  # Python 3.10
    import sre_compile as _compiler  # type: ignore[no-redef]
    import sre_constants as _constants  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

_PIECES = {_constants.LITERAL, _constants.NOT_LITERAL, _constants.IN, _constants.ANY}
_REPEATS = {_constants.MAX_REPEAT, _constants.MIN_REPEAT, getattr(_constants, "POSSESSIVE_REPEAT", None)} - {None}
_SKIPPED = {_constants.AT, _constants.ASSERT, _constants.ASSERT_NOT, _constants.GROUPREF}
_SKIPPED |= {getattr(_constants, "GROUPREF_IGNORE", None)} - {None}
_OTHER = re.compile(r"[^\x00-\x1b\x20-\x7f]+")  # not ASCII, and \x1c-\x1f: Python's \s takes them, Hyperscan's not
_WORD = re.compile(r"\w")
# Printable bytes first: the first byte that fits is taken. Never a newline.
_BYTES = [chr(b) for b in range(32, 127)] + [chr(b) for b in (*range(0, 10), *range(11, 32), 127)]


class UnsupportedPattern(ValueError):
    """A pattern uses a construct this module cannot reason about."""


class _NoStandin(Exception):
    """A character of the text has no stand-in."""


class Standins:
    """Stand-ins for the patterns ``scanned``: (pattern with ``.pattern`` and ``.declared_flags``, runs on the
    lowered text)."""

    def __init__(self, scanned: Iterable[tuple[Any, bool]]) -> None:
        found = pieces(scanned)
        self.scan_patterns = [_compiled(node, _ascii_flags(flags, caseless)) for node, flags, caseless, _ in found]
        # Each piece as Python reads it, once per distinct (node, flags): most pieces are ASCII letters or classes
        # of them, which a character that is not ASCII can only match case-insensitively (one test for them all).
        index: dict[tuple[str, int], int] = {}
        nodes: list[tuple[tuple, int]] = []
        of_piece = []  # (its distinct Python piece, its pattern runs on the lowered text) for each piece
        for node, flags, _, on_lower in found:
            if (repr(node), flags) not in index:
                index[repr(node), flags] = len(nodes)
                nodes.append((node, flags))
            of_piece.append((index[repr(node), flags], on_lower))
        # For each distinct Python piece: the pieces that must accept a stand-in when it accepts the character,
        # and those (of patterns run on the lowered text) when it accepts the lowered character.
        self._needs = [sum(1 << i for i, (d, _) in enumerate(of_piece) if d == k) for k in range(len(nodes))]
        self._needs_lowered = [
            sum(1 << i for i, (d, low) in enumerate(of_piece) if d == k and low) for k in range(len(nodes))
        ]
        self._python = [_compiled(node, flags) for node, flags in nodes]
        closed = [_ascii_only(node) for node, _ in nodes]
        self._open = [i for i, is_closed in enumerate(closed) if not is_closed]
        self._folding = [i for i, (_, flags) in enumerate(nodes) if closed[i] and flags & re.IGNORECASE]
        self._folds = _alternation([nodes[i][0] for i in self._folding]) if self._folding else None
        self._byte_masks = [(b, self._scan_mask(b)) for b in _BYTES]
        self._chosen: dict[str, str | None] = {}

    def ascii_of(self, text: str) -> bytes | None:
        """``text`` with each character that is not ASCII (or is one of ``\\x1c``-``\\x1f``) replaced by its
        stand-in; None where one has none."""
        try:
            return _OTHER.sub(self._run, text).encode("ascii")
        except _NoStandin:
            return None

    def standin(self, char: str) -> str | None:
        """The stand-in of one such character (None: it has none)."""
        if char not in self._chosen:
            self._chosen[char] = self._choose(char)
        return self._chosen[char]

    def _run(self, match: re.Match[str]) -> str:
        out = []
        for char in match.group():
            standin = self.standin(char)
            if standin is None:
                raise _NoStandin
            out.append(standin)
        return "".join(out)

    def _choose(self, char: str) -> str | None:
        lowered = char.lower()
        views = {char, lowered} if len(lowered) == 1 else {char}
        words = {bool(_WORD.match(v)) for v in views}
        if len(words) != 1:
            return None
        must = 0
        for k in self._accepting(char):
            must |= self._needs[k]
        for k in self._accepting(lowered) if len(lowered) == 1 else ():
            must |= self._needs_lowered[k]
        word = words.pop()
        for byte, mask in self._byte_masks:
            if mask & must == must and bool(_WORD.match(byte)) == word:
                return byte
        return None

    def _accepting(self, char: str) -> list[int]:
        """The distinct Python pieces that accept ``char``."""
        tested = range(len(self._python)) if char.isascii() else self._open
        if not char.isascii() and self._folds is not None and self._folds.fullmatch(char):
            tested = [*tested, *self._folding]  # it matches some ASCII letter case-insensitively: ask each
        return [k for k in tested if self._python[k].fullmatch(char) is not None]

    def _scan_mask(self, byte: str) -> int:
        return sum(1 << i for i, scan in enumerate(self.scan_patterns) if scan.fullmatch(byte) is not None)


def pieces(scanned: Iterable[tuple[Any, bool]]) -> list[tuple[tuple, int, bool, bool]]:
    """Every distinct one-character piece of the patterns ``scanned``, outside lookarounds: (its node from Python's
    regex parser, its flags, read case-insensitively by the prefilter, its pattern runs on the lowered text)."""
    found: dict[tuple[str, int, bool, bool], tuple[tuple, int, bool, bool]] = {}
    for pattern, on_lower in scanned:
        parsed = _parser.parse(pattern.pattern, pattern.declared_flags)
        caseless = on_lower or bool(parsed.state.flags & re.IGNORECASE)
        _collect(parsed, parsed.state.flags, on_lower, caseless, found)
    return list(found.values())


def _ascii_only(node: tuple) -> bool:
    """A literal, or a class of literals and ranges (not negated), all ASCII: it accepts no other character but
    by case-insensitive matching."""
    op, value = node
    if op is _constants.LITERAL:
        return value < 128
    if op is not _constants.IN:
        return False
    if any(kind not in (_constants.LITERAL, _constants.RANGE) for kind, _ in value):
        return False  # a category (\\w, \\s, \\d) or a negation
    return all((item[1] if kind is _constants.RANGE else item) < 128 for kind, item in value)


def _alternation(nodes: list[tuple]) -> re.Pattern[str]:
    """One pattern that fully matches a character when one of the pieces ``nodes`` does, case-insensitively."""
    state = _parser.State()
    state.flags = re.IGNORECASE | re.UNICODE
    branch = (_constants.BRANCH, (None, [_parser.SubPattern(state, [node]) for node in nodes]))
    return _compiler.compile(_parser.SubPattern(state, [branch]), state.flags)


def _ascii_flags(flags: int, caseless: bool) -> int:
    """A piece's flags as the prefilter reads it: ASCII classes, case-insensitive where scanned so."""
    return (flags & ~re.UNICODE) | re.ASCII | (re.IGNORECASE if caseless else 0)


def _compiled(node: tuple, flags: int) -> re.Pattern[str]:
    state = _parser.State()
    state.flags = flags
    return _compiler.compile(_parser.SubPattern(state, [node]), flags)


def _collect(
    parsed: Iterable[tuple],
    flags: int,
    on_lower: bool,
    caseless: bool,
    found: dict[tuple[str, int, bool, bool], tuple[tuple, int, bool, bool]],
) -> None:
    """Every one-character piece of ``parsed`` outside lookarounds, with its flags and whether the prefilter
    reads it case-insensitively."""
    for op, av in parsed:
        if op in _PIECES:
            found.setdefault((repr((op, av)), flags, caseless, on_lower), ((op, av), flags, caseless, on_lower))
        elif op in _SKIPPED:
            continue  # anchors (see the word rule), lookarounds and back references (see above)
        elif op is _constants.BRANCH:
            for branch in av[1]:
                _collect(branch, flags, on_lower, caseless, found)
        elif op is _constants.SUBPATTERN:
            _, add, remove, body = av
            inner_caseless = (caseless or bool(add & re.IGNORECASE)) and not remove & re.IGNORECASE
            _collect(body, (flags | add) & ~remove, on_lower, inner_caseless, found)
        elif op in _REPEATS:
            _collect(av[2], flags, on_lower, caseless, found)
        elif op is getattr(_constants, "ATOMIC_GROUP", None):
            _collect(av, flags, on_lower, caseless, found)
        else:
            raise UnsupportedPattern(f"no stand-in rule for regex construct {op}")
