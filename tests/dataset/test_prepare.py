"""Analysing made ready before the workers fork: they inherit the prefilter's stand-ins and the compiled secret
patterns, and find the same secrets without working anything out again."""

from __future__ import annotations

import json
import subprocess
import sys

from pipelines.dataset.config import DatasetConfig
from pipelines.dataset.filters import analyze_texts
from pipelines.dataset.prefilter import Prefilter, hyperscan
from tests.dataset.test_secrets import SAMPLES

# Run in a new interpreter, whose modules have compiled nothing yet.
CHECK = r"""
import json, re, sys
from pipelines.dataset import analysis, standins
from pipelines.dataset.config import DatasetConfig
from pipelines.dataset.filters import analyze_texts
from pipelines.dataset.prefilter import shared_prefilter

analysis.prepare()

def refuse(*args, **kwargs):
    raise AssertionError("worked out after prepare()")

standins.Standins.__init__ = refuse  # no stand-ins worked out again
re.compile = refuse  # no pattern compiled again
datas = [text.encode() for text in json.load(sys.stdin)]
results, texts = analyze_texts(datas, DatasetConfig(), shared_prefilter())
print(json.dumps([[list(r.redactions) for r in results], texts]))
"""


def test_prepared_analysing_finds_the_same_secrets_and_compiles_nothing_more() -> None:
    texts = [f"# caf\u00e9 \u00fcber {i}\n{sample.text}\n" for i, sample in enumerate(SAMPLES)]  # not ASCII
    texts += [f"# plain {i}\n{sample.text}\n" for i, sample in enumerate(SAMPLES)]
    found = subprocess.run(
        [sys.executable, "-c", CHECK], input=json.dumps(texts), capture_output=True, text=True, check=False
    )
    assert found.returncode == 0, found.stderr
    redactions, redacted = json.loads(found.stdout)
    prefilter = Prefilter() if hyperscan is not None else None
    results, expected = analyze_texts([text.encode() for text in texts], DatasetConfig(), prefilter)
    assert redactions == [[list(r) for r in result.redactions] for result in results]
    assert redacted == expected
    assert sum(map(len, redactions)) >= len(texts)  # every planted secret was found
