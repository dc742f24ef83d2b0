"""The language allow-list: which file names count as code, and in which language."""

from __future__ import annotations

#: Extension (lower case, with the dot) -> language.
LANGUAGES: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyx": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".java": "java", ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala", ".groovy": "groovy",
    ".gradle": "groovy",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".cu": "cuda", ".cuh": "cuda",
    ".cs": "csharp", ".fs": "fsharp", ".vb": "visualbasic",
    ".go": "go", ".rs": "rust", ".swift": "swift", ".m": "objective-c", ".mm": "objective-c",
    ".rb": "ruby", ".php": "php", ".pl": "perl", ".pm": "perl", ".lua": "lua", ".r": "r",
    ".jl": "julia", ".dart": "dart", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang",
    ".hs": "haskell", ".ml": "ocaml", ".mli": "ocaml", ".clj": "clojure", ".zig": "zig", ".nim": "nim",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell", ".ps1": "powershell",
    ".sql": "sql", ".proto": "protobuf", ".graphql": "graphql",
    ".html": "html", ".htm": "html", ".css": "css", ".scss": "css", ".less": "css", ".vue": "vue",
    ".svelte": "svelte",
    ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini",
    ".xml": "xml", ".md": "markdown", ".rst": "restructuredtext", ".tex": "tex",
    ".tf": "terraform", ".hcl": "terraform", ".cmake": "cmake",
}  # fmt: skip

#: Whole file names that are code without a telling extension.
FILENAMES: dict[str, str] = {
    "Dockerfile": "dockerfile",
    "Containerfile": "dockerfile",
    "Makefile": "makefile",
    "GNUmakefile": "makefile",
    "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy",
    "Rakefile": "ruby",
    "Gemfile": "ruby",
    "BUILD": "starlark",
    "BUILD.bazel": "starlark",
    "WORKSPACE": "starlark",
}


KNOWN_LANGUAGES: frozenset[str] = frozenset(LANGUAGES.values()) | frozenset(FILENAMES.values())


def language_of(path: str, extra: dict[str, str] | None = None) -> str | None:
    """The language of a path by its name, or None when it is not on the allow-list."""
    name = path.rpartition("/")[2]
    if name in FILENAMES:
        return FILENAMES[name]
    if name.startswith("Dockerfile."):
        return "dockerfile"
    dot = name.rfind(".")
    suffix = name[dot:].lower() if 0 < dot < len(name) - 1 else ""  # as PurePosixPath(name).suffix
    if extra and suffix in extra:
        return extra[suffix]
    return LANGUAGES.get(suffix)


#: Languages whose line comments start with ``#``, and with ``--``; the C family uses ``//``.
HASH_COMMENT_LANGS: frozenset[str] = frozenset(
    {
        "python", "shell", "ruby", "perl", "r", "yaml", "toml", "julia", "elixir", "makefile",
        "dockerfile", "cmake", "powershell", "nim", "starlark", "terraform", "ini", "graphql",
    }
)  # fmt: skip
DASH_COMMENT_LANGS: frozenset[str] = frozenset({"sql", "lua", "haskell"})
_NO_LINE_COMMENT = frozenset({"json", "markdown", "restructuredtext", "html", "css", "xml", "vue", "svelte"})


def line_comment(lang: str | None) -> str | None:
    """What starts a line comment in ``lang`` (``#``, ``--``, ``//``, ``%`` for TeX), or None when it has none."""
    if lang in HASH_COMMENT_LANGS:
        return "#"
    if lang in DASH_COMMENT_LANGS:
        return "--"
    if lang == "tex":
        return "%"
    if lang in _NO_LINE_COMMENT:
        return None
    return "//"
