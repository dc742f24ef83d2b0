"""How every bench ends: its result as indented JSON on stdout, and in ``--out FILE`` when given."""

from __future__ import annotations

import json
from pathlib import Path


def finish(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
