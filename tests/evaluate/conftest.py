"""A team repo with an internal library, a dataset of an old commit of it, and two tiny models.

The repo has ``acme/core.py`` (``LedgerClient``, ``acme_fetch_ledger``, ``acme_post_invoice``) and many
small service modules that use it in a few fixed ways. The dataset indexes the first commit; later
commits add new services (the time split) plus traps: an exact copy of a training file, a near copy,
a copy that differs from a training file only in a redacted password, a vendored file, and a new file
with a planted password. ``base`` is an untrained tiny CodeGen; ``tuned`` is that model trained for a
150 steps on the training records (``models``, a separate fixture: it takes ~5 s).
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.dataset.builder import build
from pipelines.dataset.config import DatasetConfig, RepoSpec
from tests.dataset.conftest import Repo

ENTITIES = [
    "invoices", "payments", "refunds", "orders", "credits", "debits", "transfers", "payouts", "charges",
    "disputes", "coupons", "balances", "receipts", "deposits", "loans", "fees", "grants", "rebates",
    "taxes", "wages", "bonuses", "pensions", "tickets", "vouchers", "rentals", "leases", "tolls",
    "fines", "tuition", "premiums",
]  # fmt: skip
NEW_ENTITIES = ["royalties", "stipends", "dividends", "commissions", "tariffs", "bounties", "tips", "levies"]

CORE = '''"""Acme ledger core: the team's internal client library."""

import json


class LedgerClient:
    def __init__(self, account_id):
        self.account_id = account_id

    def open_session(self):
        return {"account": self.account_id}


def acme_fetch_ledger(client, table):
    session = client.open_session()
    return json.loads(json.dumps([{"table": table, "amount": 1, "session": session}]))


def acme_post_invoice(client, total):
    session = client.open_session()
    return {"id": hash((session["account"], total)), "total": total}


ACME_DEFAULT_CURRENCY = "EUR"
'''

TEMPLATES = {
    "sync": '''"""Ledger sync for {e}."""

from acme.core import LedgerClient, acme_fetch_ledger, acme_post_invoice


def sync_{e}(account_id):
    client = LedgerClient(account_id)
    ledger = acme_fetch_ledger(client, "{e}")
    total = sum(row["amount"] for row in ledger)
    return acme_post_invoice(client, total)
''',
    "audit": '''"""Audit of {e} entries."""

from acme.core import LedgerClient, acme_fetch_ledger


def audit_{e}(account_id, limit):
    client = LedgerClient(account_id)
    ledger = acme_fetch_ledger(client, "{e}")
    return [row for row in ledger if row["amount"] > limit]
''',
    "bill": '''"""Billing for {e}."""

from acme.core import LedgerClient, acme_post_invoice


def bill_{e}(account_id, amount):
    client = LedgerClient(account_id)
    invoice = acme_post_invoice(client, amount)
    return invoice["id"]
''',
}


def reports_module() -> str:
    """A long module (well over the near-duplicate minimum of 50 words), unlike the services."""
    lines = ['"""Monthly reports over every ledger table."""', "", "from acme.core import acme_fetch_ledger", ""]
    for i, entity in enumerate(ENTITIES[:12]):
        lines += [
            f"def report_{entity}(client, month_{i}):",
            f'    rows = acme_fetch_ledger(client, "{entity}")',
            f"    return [row for row in rows if row.get('month') == month_{i} and row['amount'] > {i * 7}]",
            "",
        ]
    return "\n".join(lines)


def planted_password(seed: int) -> str:
    """A random password built at run time, so that this file holds nothing a scanner would flag."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(20))


def db_settings(password: str) -> str:
    return (
        '"""Database settings for the ledger service."""\n\n'
        'DB_HOST = "ledger-db.internal"\n'
        f'DB_PASSWORD = "{password}"\n'
        "DB_POOL_SIZE = 12\n"
    )


def services(entities: list[str]) -> dict[str, str]:
    return {
        f"services/{kind}_{entity}.py": template.format(e=entity)
        for entity in entities
        for kind, template in TEMPLATES.items()
    }


@dataclass
class World:
    root: Path
    repo: Repo
    dataset: Path
    indexed: str  # the commit the dataset indexed
    head: str  # the newest commit (the time split's end)
    secret: str  # planted in a file of the time split
    training_secret: str  # planted in a training file

    def records(self, split: str = "train") -> list[dict]:
        return dataset_records(self.dataset, split)


def dataset_records(dataset: Path, split: str) -> list[dict]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    rows = []
    for shard in manifest["shards"][split]:
        with open(dataset / shard["file"], encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle)
    return rows


def fine_tune(base: Path, texts: list[str], out: Path, steps: int = 150, seed: int = 0) -> Path:
    """A plain AdamW loop over blocks of the concatenated texts: enough for a tiny model to learn them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and immune to a busy machine
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    block = 128
    blocks = torch.tensor(stream[: len(stream) // block * block]).view(-1, block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (8,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    torch.set_num_threads(threads)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@dataclass
class Models:
    base: Path  # an untrained tiny CodeGen with a tokenizer trained on the training records
    tuned: Path  # the same, fine-tuned on the training records


def make_world(root: Path) -> World:
    repo = Repo(root / "ledger")
    training_secret = planted_password(1)
    repo.commit(
        {
            "acme/__init__.py": '"""Acme internal library."""\n',
            "acme/core.py": CORE,
            "acme/reports.py": reports_module(),
            "settings/db.py": db_settings(training_secret),
            **services(ENTITIES),
        },
        message="ledger services",
    )
    indexed = repo.head()
    dataset = root / "dataset"
    build(dataset, [RepoSpec("ledger", str(repo.path))], DatasetConfig(val_fraction=0.1))

    secret = planted_password(2)
    reports = reports_module()
    trained = {r["path"]: r["text"] for r in dataset_records(dataset, "train")}
    # The traps below copy these files: they must be training records (the split is a stable hash of the path).
    assert {"acme/core.py", "acme/reports.py", "settings/db.py"} <= set(trained)
    copied = next(path for path in sorted(trained) if path.startswith("services/sync_"))
    repo.commit(services(NEW_ENTITIES[:4]), message="more services")
    repo.commit(
        {
            **services(NEW_ENTITIES[4:]),
            "services/copy_of_training_file.py": trained[copied],  # exact copy
            "acme/reports_copy.py": reports.replace("month_3 and", "month_3 or"),  # near copy
            "settings/db_copy.py": db_settings(planted_password(3)),  # equal to settings/db.py once redacted
            "node_modules/acme/index.js": "module.exports = function acmeFetchLedger() { return 1; };\n",
            "settings/vault.py": '"""Vault access."""\n\nfrom acme.core import LedgerClient\n\n'
            f'VAULT_PASSWORD = "{secret}"\nVAULT_CLIENT = LedgerClient("vault")\n',
        },
        message="even more services",
    )
    return World(root, repo, dataset, indexed, repo.head(), secret, training_secret)


def make_models(world: World) -> Models:
    from pipelines.finetune.tiny import make_tiny_base

    texts = [r["text"] for r in world.records("train")]
    base = make_tiny_base(texts, world.root / "base", vocab_size=1024, context=256)
    return Models(base, fine_tune(base, texts, world.root / "tuned"))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="session")
def models(world: World) -> Models:
    return make_models(world)


def run_eval(*args: str | Path) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=300,
    )
