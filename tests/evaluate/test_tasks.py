"""Completion tasks: which lines, what prompt, how answers are normalised and scored."""

from __future__ import annotations

import random

from pipelines.evaluate.identifiers import DefinitionIndex
from pipelines.evaluate.samples import Sample
from pipelines.evaluate.tasks import (
    edit_similarity,
    eligible_lines,
    first_line,
    has_answer,
    is_comment_only,
    levenshtein,
    make_tasks,
)

SERVICE = '''"""Billing for fees."""

from acme.core import LedgerClient, acme_post_invoice

# Bill one account.
def bill_fees(account_id, amount):
    client = LedgerClient(account_id)

    invoice = acme_post_invoice(client, amount)
    return invoice["id"]
'''


def _reference_levenshtein(a: str, b: str) -> int:
    """The textbook full-matrix recurrence, to check the optimised one against."""
    rows = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        rows[i][0] = i
    for j in range(len(b) + 1):
        rows[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return rows[-1][-1]


def test_levenshtein_matches_the_textbook_recurrence() -> None:
    rng = random.Random(7)
    for _ in range(400):
        a = "".join(rng.choice("abc(d) ") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc(d) ") for _ in range(rng.randint(0, 12)))
        assert levenshtein(a, b) == _reference_levenshtein(a, b), (a, b)
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3


def test_edit_similarity_is_one_minus_normalised_distance() -> None:
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("", "abcd") == 0.0
    assert edit_similarity("client = Ledger(x)", "client = Ledger(y)") == 1 - 1 / 18


def test_comment_only_lines_depend_on_the_language() -> None:
    assert is_comment_only("    # note", "python")
    assert is_comment_only("  // note", "javascript") and is_comment_only(" * doc", "java")
    assert is_comment_only("-- note", "sql")
    assert not is_comment_only("#include <stdio.h>", "c")
    assert not is_comment_only("x = 1  # trailing comment", "python")
    assert not is_comment_only("return a // b", "python")


def test_eligible_lines_skip_blank_comment_and_first_lines() -> None:
    lines = SERVICE.split("\n")
    chosen = [lines[n] for n in eligible_lines(SERVICE, "python")]
    assert chosen == [
        "from acme.core import LedgerClient, acme_post_invoice",
        "def bill_fees(account_id, amount):",
        "    client = LedgerClient(account_id)",
        "    invoice = acme_post_invoice(client, amount)",
        '    return invoice["id"]',
    ]


def test_the_answer_is_the_first_non_blank_line_after_the_prompt_line() -> None:
    # The prompt ends on the previous line's last character, so a completion starts with a newline.
    assert first_line("\n    client = LedgerClient(account_id)   \n    invoice") == "client = LedgerClient(account_id)"
    assert first_line("\n\n\tinvoice = post()\n") == "invoice = post()"
    assert first_line(" # more of the previous line\n  next_line()\n") == "next_line()"
    assert first_line("no newline at all") == ""
    assert not has_answer("\n    client = Ledger")  # the line is not finished yet
    assert has_answer("\n    client = Ledger()\n")
    assert not has_answer("\n\n   \n")


def test_tasks_prompt_with_the_text_before_the_line_and_sample_internal_lines() -> None:
    index = DefinitionIndex()
    index.add("acme/core.py", "class LedgerClient:\n    pass\n\ndef acme_post_invoice(c, a):\n    return a\n", "python")
    sample = Sample("time", "ledger", "services/bill_fees.py", "python", "0" * 40, SERVICE)
    tasks = make_tasks([sample], {"ledger": index}, max_lines=10, seed=0)
    by_target = {t.target: t for t in tasks}
    task = by_target["client = LedgerClient(account_id)"]
    assert task.prompt == SERVICE[: SERVICE.index("    client =")].rstrip()
    assert task.prompt.endswith("def bill_fees(account_id, amount):")
    assert task.internal and task.uniform and task.names == ("LedgerClient",)
    assert by_target["invoice = acme_post_invoice(client, amount)"].prompt.endswith("client = LedgerClient(account_id)")
    assert not by_target['return invoice["id"]'].internal
    assert not by_target["def bill_fees(account_id, amount):"].internal


def test_line_sampling_is_capped_seeded_and_per_file() -> None:
    index = DefinitionIndex()
    index.add("acme/core.py", "def acme_call(x):\n    return x\n", "python")
    body = "\n".join(f"value_{i} = acme_call({i})" if i % 3 == 0 else f"value_{i} = {i}" for i in range(60))
    one = Sample("validation", "r", "a.py", "python", "1" * 40, body)
    two = Sample("validation", "r", "b.py", "python", "2" * 40, body)
    first = make_tasks([one, two], {"r": index}, max_lines=5, seed=3)
    again = make_tasks([one, two], {"r": index}, max_lines=5, seed=3)
    other = make_tasks([one, two], {"r": index}, max_lines=5, seed=4)
    alone = make_tasks([two], {"r": index}, max_lines=5, seed=3)
    assert first == again
    assert [t.line for t in first] != [t.line for t in other]
    for number in (0, 1):
        mine = [t for t in first if t.file == number]
        assert sum(t.uniform for t in mine) == 5 and sum(t.internal for t in mine) == 5
        assert all("acme_call" in t.target for t in mine if t.internal)
    # A file's lines do not depend on the other files sampled with it.
    assert [t.line for t in first if t.file == 1] == [t.line for t in alone]
