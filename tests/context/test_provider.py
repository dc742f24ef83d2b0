"""The context provider on a real small repository: a real git repo, a dataset built by the real builder."""

from __future__ import annotations

from pathlib import Path

from pipelines.context.provider import ContextProvider, ContextSettings, choose, fit
from pipelines.context.source import DatasetIndex, load_index
from pipelines.dataset.builder import update
from tests.context.conftest import JOBS, PROMPT, count


def with_context(index, prompt: str, settings: ContextSettings, budget: int, count, **where) -> str:
    """The block for one prompt without the server's per-file memory (as the eval chooses it)."""
    items, lang = choose(index, prompt, settings, **where)
    return fit(items, lang, budget, count)[0]


def block_for(out: Path, prompt: str, budget: int = 400, **kwargs) -> str:
    return with_context(load_index(out), prompt, ContextSettings(), budget, count, **kwargs)


def test_an_identifier_defined_in_another_file_reaches_the_prompt(dataset) -> None:
    _, out = dataset
    block = block_for(out, PROMPT)
    assert "# billing/ledger.py\n" in block
    assert "# class LedgerStore:" in block and "#     def close_period(self, month):" in block  # its members
    assert all(line.startswith("#") for line in block.splitlines())  # comments of the prompt's language


def test_code_like_the_last_lines_comes_from_other_files(dataset) -> None:
    _, out = dataset
    block = block_for(out, PROMPT)
    assert "# billing/jobs.py\n" in block and "notify_finance_team(month)" in block


def test_a_definition_in_the_prompt_is_not_repeated(dataset) -> None:
    _, out = dataset
    prompt = "def settle_accounts(store, accounts):\n    return []\n\n\nsettle_accounts(LedgerStore('x'), [])\n"
    block = block_for(out, prompt)
    assert "class LedgerStore" in block  # used, defined elsewhere
    assert "def settle_accounts" not in block  # the prompt defines it


def test_other_languages_get_their_own_comments(dataset) -> None:
    _, out = dataset
    prompt = "package acme.web;\n\npublic class Totals {\n    String show(InvoiceHandler handler) {\n"
    prompt += "        return handler.renderInvoiceTotals(3);\n    }\n"
    block = block_for(out, prompt)
    assert "// web/InvoiceHandler.java\n" in block and "// public class InvoiceHandler {" in block
    assert not any(line.startswith("#") for line in block.splitlines())


def test_the_budget_holds_and_the_whole_prompt_still_fits_the_window(dataset) -> None:
    _, out = dataset
    index = load_index(out)
    full = count(block_for(out, PROMPT))
    for budget in (10, 30, 60, full - 1, full, 1000):
        assert count(with_context(index, PROMPT, ContextSettings(), budget, count)) <= budget
    window = 512
    provider = ContextProvider(lambda: index, count, window, ContextSettings(max_tokens=400, max_share=1.0))
    for max_tokens in (16, 200, 400, 440):
        block = provider.block(PROMPT, max_tokens)
        assert count(block) + count(PROMPT) + max_tokens <= window
    assert provider.block(PROMPT, window - count(PROMPT)) == ""  # no room: no context
    assert provider.stats()["no_room"] == 1


def test_the_block_stays_while_typing_and_changes_when_a_new_name_needs_a_definition(dataset) -> None:
    _, out = dataset
    index = load_index(out)
    provider = ContextProvider(lambda: index, count, 2048)
    typed = PROMPT + "close_period(month)\n        "
    blocks = {provider.block(typed + "notify"[:i], 64, client="dev") for i in range(7)}
    assert len(blocks) == 1  # the same text before every keystroke's prompt: the engine reuses its prefix
    assert provider.stats()["kept"] == 6
    (first,) = blocks
    assert "helper_number_3" not in first
    changed = provider.block(typed + "helper_number_3(", 64, client="dev")
    assert changed != first and "# def helper_number_3(value):" in changed


def test_the_held_out_file_itself_is_never_context(dataset) -> None:
    _, out = dataset
    index = load_index(out)
    prompt = JOBS[: JOBS.index("        store.close_period")]
    items, _ = choose(index, prompt, ContextSettings(), repo="billing", skip_path="billing/jobs.py")
    assert items and all(item.path != "billing/jobs.py" for item in items)
    items, _ = choose(index, prompt, ContextSettings(), repo="billing")
    assert any(item.path == "billing/jobs.py" for item in items)  # the saved version: what the server may use


def test_a_dataset_update_is_picked_up_without_a_restart(dataset) -> None:
    repo, out = dataset
    live = DatasetIndex(out, poll_s=0.0)
    provider = ContextProvider(live, count, 2048)
    prompt = "from billing.keys import rotate_ledger_keys\n\nrotate_ledger_keys("
    assert live.wait() is not None
    before = provider.block(prompt, 64)
    assert "def rotate_ledger_keys" not in before
    repo.commit({"billing/keys.py": '"""Keys."""\n\n\ndef rotate_ledger_keys(store, every_days=30):\n    return 1\n'})
    update(out)
    live()  # the next request notices the new manifest and rebuilds in the background
    live.wait()
    assert live.stats()["builds"] == 2 and live.stats()["files"] == 12
    assert "# def rotate_ledger_keys(store, every_days=30):" in provider.block(prompt, 64)
