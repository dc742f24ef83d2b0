"""A small real repository (Python and Java) and the dataset the real builder makes of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.dataset.builder import build
from pipelines.dataset.config import DatasetConfig, RepoSpec
from tests.dataset.conftest import Repo

LEDGER = '''"""The ledger store."""


class LedgerStore:
    """Where invoices live."""

    def __init__(self, path):
        self.path = path

    def append_entry(self, account, amount):
        return (account, amount)

    def close_period(self, month):
        return month


def settle_accounts(store, accounts):
    return [store.append_entry(a, 0) for a in accounts]
'''

JOBS = '''"""Nightly jobs."""

from billing.ledger import LedgerStore


def open_months(store):
    return [1, 2, 3]


def nightly_close(path):
    store = LedgerStore(path)
    for month in open_months(store):
        store.close_period(month)
        notify_finance_team(month)
'''

JAVA = """package acme.web;

public class InvoiceHandler {
    public String renderInvoiceTotals(int invoiceNumber) {
        return "invoice " + invoiceNumber;
    }
}
"""

FILLER = '''"""Module {i}."""


def helper_number_{i}(value):
    return value * {i}
'''


def count(text: str) -> int:
    """A deterministic stand-in for a tokenizer: words, punctuation and line breaks."""
    return len(re.findall(r"\w+|[^\w\s]|\n", text))


def billing_dataset(tmp_path: Path) -> tuple[Repo, Path]:
    """The repository (``billing/``: a ledger store, nightly jobs; a Java handler; filler modules) and its dataset."""
    repo = Repo(tmp_path / "billing")
    files = {"billing/ledger.py": LEDGER, "billing/jobs.py": JOBS, "web/InvoiceHandler.java": JAVA}
    files.update({f"misc/m{i}.py": FILLER.format(i=i) for i in range(8)})
    repo.commit(files)
    out = tmp_path / "dataset"
    build(out, [RepoSpec("billing", str(repo.path))], DatasetConfig(val_fraction=0.0))
    return repo, out


PROMPT = "from billing.ledger import LedgerStore\n\n\ndef month_end(path):\n    store = LedgerStore(path)\n"
PROMPT += "    for month in open_months(store):\n        store."


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Repo, Path]:
    return billing_dataset(tmp_path)
