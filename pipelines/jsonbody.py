"""Request bodies from the network, parsed so that hostile input is a clear 400, never a server error.

Both HTTP APIs (the completion server and the agent's) read JSON with :func:`parse_json`: strict UTF-8, no
NaN or Infinity, at most :data:`MAX_DEPTH` levels of nesting (a body of 100,000 ``[`` must not reach the
recursion limit), and no lone UTF-16 surrogate in any string (``"\\ud800"`` is valid JSON but no valid text:
it breaks tokenizers and encoders later).
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.errors import InputError

MAX_DEPTH = 32


class MalformedJson(InputError):
    """The body is not a JSON document the server accepts; the message says why and what to send."""

    title = "Invalid request"


def parse_json(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw``, or :class:`MalformedJson`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"The body is not UTF-8 (invalid byte at offset {exc.start}). Send UTF-8 JSON.") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedJson(f"The JSON body is nested too deeply (at most {max_depth} levels).") from None
    except ValueError as exc:
        raise MalformedJson(f"The body is not valid JSON: {exc}.") from None
    check_value(value, max_depth)
    return value


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``max_depth`` and strings that are not valid Unicode (without recursion)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "the body")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise MalformedJson(f"The JSON body is nested too deeply (at most {max_depth} levels).")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, f"a key of {where}")
                    stack.append((child, depth + 1, repr(key)[:40]))
            else:
                stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedJson(
            f"The string in {where} is not valid Unicode: a lone surrogate ({text[exc.start]!r}) at character "
            f"{exc.start}. Send the text as UTF-8, or escape characters outside the BMP as surrogate pairs."
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
