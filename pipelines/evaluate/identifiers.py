"""The repository's own identifiers: names defined in its files, and the lines that use them.

A model that learnt a team's code should complete calls to ``acme_fetch_ledger`` or ``LedgerClient``,
names no public model has seen. This module finds such names:

- Python files are parsed with ``ast``: functions, classes and methods, and names assigned at module or
  class level (also inside module-level ``if``/``try``/``with`` blocks). Locals and arguments are not
  definitions. A file that does not parse falls back to the rules below.
- Other languages use token rules: a name after a defining keyword (``function X``, ``func X``,
  ``func (r *T) X``, ``class X``, ``def X``, ``const|let|var|val X``, ``type X``, ``struct X``,
  ``interface X``, ``trait X``, ``enum X``, ``fn X``, ...), a method declared with a modifier
  (``public static int X(``), and ``X = `` at the start of an unindented line.

A name only counts when it is at least ``MIN_LENGTH`` characters long, is no keyword or builtin of a
common language, is not on a list of very common names (``main``, ``config``, ``value``, ...), is not a
dunder, and is not defined in more than ``COMMON_SHARE`` of the repository's files (names every module
defines, like ``logger``, say nothing about the repository).

A line *uses internal identifiers* when it contains a name (``[A-Za-z_$][\\w$]*``) that is defined in
another file of the repository's training data and that the line does not define itself (``def X``,
``class X``, ``X = ``, ``let X`` ... on that line).
"""

from __future__ import annotations

import ast
import bisect
import builtins
import keyword
import re
from collections.abc import Iterable, Iterator

MIN_LENGTH = 4
COMMON_SHARE = 0.25
COMMON_MIN_FILES = 3

_KEYWORDS = frozenset(
    set(keyword.kwlist)
    | set(keyword.softkwlist)
    | set(dir(builtins))
    | set(
        """
        abstract and any as assert async await auto bool boolean break byte case catch char chan class const
        constructor continue crate debugger default defer delete do double dyn elif else enum export extends
        extern false final finally float fn for foreach func function go goto if impl implements import in
        instanceof int interface internal let long loop map match mod module move mut namespace native new
        nil null object of override package private protected pub public range readonly ref register return
        select self Self short signed sizeof static string struct super switch synchronized template this
        throw throws trait transient true try type typedef typeof uint union unsafe unsigned use using val
        var virtual void volatile where while with yield undefined console window document require exports
        string str usize isize u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 int8 int16 int32 int64 uint8 uint16
        uint32 uint64 float32 float64 rune error Error Exception Object String Integer Boolean Number Array
        List Map Set Promise Optional Vec Box Option Result Some None Ok Err println printf fmt sprintf
        """.split()  # noqa: SIM905
    )
)

_COMMON = frozenset(
    """
    main init test tests setup setUp tearDown run get set data value values name names result results
    config conf settings self args kwargs item items key keys index path paths file files text size
    list dict start stop update create delete read write load save close open call apply process handle
    parse format options opts params logger log error errors message msg request response client server
    model models user users count total default output input buffer state status context event events
    callback util utils helper helpers version node nodes line lines type types kind info temp tmp
    cls obj objects func method module app application handler handlers exports props children element
    payload body headers query next prev
    this that other first last left right width height length number amount source target entry entries
    """.split()  # noqa: SIM905
)

_DEFINING = re.compile(
    r"\b(?:function\*?|func|def|class|struct|interface|trait|enum|type|typedef|fn|const|let|var|val|"
    r"object|record|protocol|module|macro|sub|proc)\s+\*?\s*([A-Za-z_$][\w$]*)"
)
_GO_METHOD = re.compile(r"\bfunc\s*\([^)]*\)\s*([A-Za-z_]\w*)")
_MODIFIED_METHOD = re.compile(
    r"^[ \t]*(?:(?:public|private|protected|internal|static|final|abstract|override|virtual|async|"
    r"synchronized|inline|export|default|suspend)\s+)+[\w<>\[\],.?*& ]*?\b([A-Za-z_]\w*)\s*\(",
    re.M,
)
_TOP_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_$][\w$]*)\s*(?::[^=\n]*)?=(?![=>])", re.M)
_ANY_ASSIGN = re.compile(r"^\s*((?:[A-Za-z_$][\w$]*\s*,\s*)*[A-Za-z_$][\w$]*)\s*(?::[^=\n]*)?(?::=|=(?![=>]))")
_NAME = re.compile(r"[A-Za-z_$][\w$]*")


def is_candidate(name: str) -> bool:
    """Whether a name is specific enough to say something about the repository."""
    return (
        len(name) >= MIN_LENGTH
        and name not in _KEYWORDS
        and name not in _COMMON
        and not (name.startswith("__") and name.endswith("__"))
        and name.strip("_$") != ""
        and not name.isdigit()
    )


def _target_names(target: ast.expr) -> Iterator[tuple[str, int]]:
    if isinstance(target, ast.Name):
        yield target.id, target.lineno
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def _python_body(body: Iterable[ast.stmt]) -> Iterator[tuple[str, int]]:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno
        elif isinstance(node, ast.ClassDef):
            yield node.name, node.lineno
            yield from _python_body(node.body)  # methods and class attributes
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _target_names(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            yield from _target_names(node.target)
        elif type(node).__name__ == "TypeAlias":  # Python 3.12: type X = ...
            yield from _target_names(node.name)  # type: ignore[attr-defined]
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) or type(node).__name__ == "TryStar":
            for field in ("body", "orelse", "finalbody"):
                yield from _python_body(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                yield from _python_body(handler.body)


def python_sites(text: str) -> list[tuple[str, int]] | None:
    """(name, 0-based line) of what a Python module defines at module and class level; None when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return [(name, line - 1) for name, line in _python_body(tree.body)]


def python_definitions(text: str) -> set[str] | None:
    """Names a Python module defines at module and class level; None when it does not parse."""
    sites = python_sites(text)
    return None if sites is None else {name for name, _ in sites}


def regex_sites(text: str) -> list[tuple[str, int]]:
    """(name, 0-based line) of the names defined by the token rules (any language)."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    found = []
    for pattern in (_DEFINING, _GO_METHOD, _MODIFIED_METHOD, _TOP_ASSIGN):
        found += [(m.group(1), bisect.bisect_right(starts, m.start(1)) - 1) for m in pattern.finditer(text)]
    return found


def regex_definitions(text: str) -> set[str]:
    """Names defined by the token rules (any language)."""
    return {name for name, _ in regex_sites(text)}


def definition_sites(text: str, lang: str | None) -> list[tuple[str, int]]:
    """Where the candidate names of a file are defined: (name, 0-based line), in file order, first site per name."""
    sites = python_sites(text) if lang == "python" else None
    if sites is None:
        sites = regex_sites(text)
    first: dict[str, int] = {}
    for name, line in sites:
        if is_candidate(name) and (name not in first or line < first[name]):
            first[name] = line
    return sorted(first.items(), key=lambda item: (item[1], item[0]))


def definitions(text: str, lang: str | None) -> set[str]:
    """The candidate names a file defines (see the module docstring for the rules)."""
    names = python_definitions(text) if lang == "python" else None
    if names is None:
        names = regex_definitions(text)
    return {name for name in names if is_candidate(name)}


def defined_in_line(line: str) -> set[str]:
    """Names a single line defines itself: after a defining keyword, or assigned (``a, b = ...``)."""
    found = {
        match.group(1) for pattern in (_DEFINING, _GO_METHOD, _MODIFIED_METHOD) for match in pattern.finditer(line)
    }
    assigned = _ANY_ASSIGN.match(line)
    if assigned:
        found.update(part.strip() for part in assigned.group(1).split(","))
    return found


class DefinitionIndex:
    """Where each candidate name is defined, across the training files of one repository."""

    def __init__(self) -> None:
        self._where: dict[str, set[str]] = {}
        self._files = 0
        self._common: set[str] | None = None

    def add(self, path: str, text: str, lang: str | None) -> None:
        self._files += 1
        self._common = None
        for name in definitions(text, lang):
            self._where.setdefault(name, set()).add(path)

    @property
    def common(self) -> set[str]:
        """Names defined in too many files to tell anything (``COMMON_SHARE`` of them, and at least 3)."""
        if self._common is None:
            limit = max(COMMON_MIN_FILES, COMMON_SHARE * self._files)
            self._common = {name for name, paths in self._where.items() if len(paths) > limit}
        return self._common

    def names(self) -> set[str]:
        return set(self._where) - self.common

    def defined_elsewhere(self, name: str, path: str) -> bool:
        """Whether ``name`` is an internal identifier defined in a file other than ``path``."""
        paths = self._where.get(name)
        if not paths or name in self.common:
            return False
        return len(paths) > 1 or path not in paths

    def internal_names(self, line: str, path: str) -> list[str]:
        """The internal identifiers ``line`` (of the file at ``path``) uses, in order of appearance."""
        return list(dict.fromkeys(name for name, _ in self.occurrences(line, path)))

    def occurrences(self, line: str, path: str) -> list[tuple[str, int]]:
        """Every use of an internal identifier in ``line``: the name and the column where it starts."""
        own = None
        found: list[tuple[str, int]] = []
        for match in _NAME.finditer(line):
            name = match.group()
            if not self.defined_elsewhere(name, path):
                continue
            if own is None:
                own = defined_in_line(line)
            if name not in own:
                found.append((name, match.start()))
        return found

    def spans(self, text: str, path: str) -> list[tuple[int, int]]:
        """Character ranges ``[start, end)`` of every use of an internal identifier in a whole file."""
        found = []
        offset = 0
        for line in text.split("\n"):
            found += [(offset + col, offset + col + len(name)) for name, col in self.occurrences(line, path)]
            offset += len(line) + 1
        return found
