"""One model's metrics: sliding-window loss and batched greedy completion, on real tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipelines.errors import InputError, RepopilotError
from pipelines.evaluate.identifiers import DefinitionIndex
from pipelines.evaluate.metrics import (
    Settings,
    _windows,
    check_model_dir,
    complete,
    complete_identifiers,
    load_model,
    score_files,
)
from pipelines.evaluate.samples import Sample
from pipelines.evaluate.tasks import IdentifierTask, first_line, identifier_tasks, make_tasks, recalled
from pipelines.progress import Progress
from tests.evaluate.conftest import TEMPLATES, Models

QUIET = Progress("none")


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """As ``evaluate_model`` does for small models: one torch thread (see metrics.choose_threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("n_tokens", "context"), [(1, 8), (2, 8), (8, 8), (9, 8), (50, 8), (1000, 256), (7, 3)])
def test_windows_score_every_token_but_the_first_once_with_half_a_context(n_tokens: int, context: int) -> None:
    scored: list[int] = []
    for begin, end, first in _windows(n_tokens, context):
        assert 0 <= begin < first <= end <= n_tokens and end - begin <= context
        assert begin == 0 or first - begin >= context // 2  # at least half a context before each token
        scored.extend(range(first, end))
    assert scored == list(range(1, n_tokens))


def test_loss_of_a_short_file_equals_the_models_own_loss(models: Models) -> None:
    import torch

    lm = load_model(models.tuned, "cpu")
    text = TEMPLATES["audit"].format(e="royalties")
    scores = score_files(lm, [text], [[]], Settings(), QUIET)
    nll, tokens, nbytes = scores.nll, scores.tokens, scores.bytes
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        expected = float(lm.model(input_ids=ids, labels=ids).loss)
    assert tokens[0] == ids.shape[1] - 1
    assert math.isclose(nll[0] / tokens[0], expected, rel_tol=1e-5)
    assert nbytes[0] == len(text.encode()) - len(lm.tokenizer.decode(ids[0, :1]).encode())
    assert scores.ident_tokens[0] == 0 and scores.other_nll[0] == nll[0]


def test_long_files_are_scored_in_windows_and_capped(models: Models) -> None:
    lm = load_model(models.tuned, "cpu")
    text = "".join(TEMPLATES["sync"].format(e=e) for e in ("fees", "tips", "wages", "levies", "grants"))
    n = len(lm.tokenizer(text)["input_ids"])
    assert n > lm.context  # the file needs more than one window
    scores = score_files(lm, [text, text], [[], []], Settings(loss_tokens_per_batch=256), QUIET)
    nll, tokens = scores.nll, scores.tokens
    assert list(tokens) == [n - 1, n - 1] and nll[0] == pytest.approx(nll[1], rel=1e-6)
    capped = score_files(lm, [text], [[]], Settings(max_loss_tokens=100), QUIET)
    assert capped.tokens[0] == 99 and capped.nll[0] < nll[0]


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(models: Models) -> None:
    lm = load_model(models.tuned, "cpu")
    signatures, others = [], []
    for entity in ("royalties", "tips", "commissions"):
        for template in TEMPLATES.values():
            text = template.format(e=entity)
            signatures.append(text[: text.index("    client =")].rstrip())  # prompts of very different lengths
            others.append(text[: text.index("\n\n\ndef")].rstrip())
        others.append(f'"""Ledger sync for {entity}."""')
    prompts = signatures + others
    alone = complete(lm, prompts, Settings(batch_size=1), QUIET)
    batched = complete(lm, prompts, Settings(batch_size=8), QUIET)
    assert batched == alone
    # The tuned model learnt the internal library: after a service's signature comes the client.
    answers = [first_line(c) for c in alone[: len(signatures)]]
    assert answers.count("client = LedgerClient(account_id)") >= len(signatures) // 2, answers


def test_generation_stops_at_the_end_of_the_answer_line(models: Models) -> None:
    lm = load_model(models.tuned, "cpu")
    prompt = TEMPLATES["sync"].format(e="tips").split("    client =")[0].rstrip()
    (completion,) = complete(lm, [prompt], Settings(max_new_tokens=40), QUIET)
    # Stopped on the token that ends the answer line (it may carry the next line's indentation).
    _, answer, rest = completion.split("\n")
    assert answer.strip() and not rest.strip()
    with pytest.raises(InputError, match="max-new-tokens"):
        complete(lm, [prompt], Settings(max_new_tokens=lm.context), QUIET)


def test_model_folders_are_checked_before_anything_is_loaded(models: Models, tmp_path: Path) -> None:
    assert check_model_dir(models.base, "baseline") == models.base.resolve()
    with pytest.raises(InputError, match=r"--candidate .* does not exist"):
        check_model_dir(tmp_path / "nope", "candidate")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no config\.json, weights, tokenizer"):
        check_model_dir(tmp_path / "empty", "model")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (broken / name).write_text("not what it should be")
    check_model_dir(broken, "candidate")  # looks like a model folder, but is not one
    with pytest.raises(RepopilotError, match="could not be loaded") as caught:
        load_model(broken, "cpu")
    assert caught.value.title == "Model not loadable"
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="LoRA adapter"):
        check_model_dir(tmp_path / "adapter", "candidate")


def test_identifier_loss_is_the_mean_nll_of_the_identifiers_tokens_computed_by_hand(models: Models) -> None:
    import torch

    lm = load_model(models.tuned, "cpu")
    text = TEMPLATES["bill"].format(e="tips")
    start = text.index("LedgerClient(account_id)")
    spans = [(start, start + len("LedgerClient"))]
    scores = score_files(lm, [text], [spans], Settings(), QUIET)
    encoded = lm.tokenizer(text, return_offsets_mapping=True)
    ids = torch.tensor([encoded["input_ids"]])
    with torch.inference_mode():
        logprobs = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    by_hand = [  # every token that overlaps the name, given the real text before it
        -float(logprobs[i - 1, ids[0, i]])
        for i, (b, e) in enumerate(encoded["offset_mapping"])
        if i > 0 and b < spans[0][1] and e > spans[0][0]
    ]
    assert by_hand and scores.ident_tokens[0] == len(by_hand)
    assert scores.ident_nll[0] == pytest.approx(sum(by_hand), rel=1e-5)
    assert scores.other_tokens[0] == scores.tokens[0] - len(by_hand)


def test_an_identifier_the_tuned_model_must_and_must_not_reproduce(models: Models) -> None:
    lm = load_model(models.tuned, "cpu")
    text = TEMPLATES["sync"].format(e="tips")
    known = IdentifierTask(0, 6, "LedgerClient", text[: text.index("LedgerClient(account_id)")].rstrip(" "))
    unknown_text = text.replace("LedgerClient(account_id)", "ZorblaxTurbine(account_id)")
    unknown = IdentifierTask(0, 6, "ZorblaxTurbine", unknown_text[: unknown_text.index("ZorblaxTurbine(")].rstrip())
    hits = complete_identifiers(lm, [known, unknown], Settings(), QUIET)
    assert list(hits) == [1.0, 0.0]  # it learnt the team's client class; it cannot know a name it never saw
    base = load_model(models.base, "cpu")
    assert list(complete_identifiers(base, [known], Settings(), QUIET)) == [0.0]  # the untrained base does not


def test_recall_needs_the_whole_name_and_only_it() -> None:
    assert recalled(" LedgerClient(account_id)", "LedgerClient")
    assert recalled("\n    acme_post_invoice(client", "acme_post_invoice")
    assert not recalled(" LedgerClientFactory(", "LedgerClient")  # a longer name is another name
    assert not recalled(" Ledger", "LedgerClient")
    assert recalled("LedgerClient", "LedgerClient")  # the answer may end right after it


def test_identifier_prompts_stop_at_a_token_boundary_before_each_name() -> None:
    text = "import acme\n\ndef run():\n    client = LedgerClient(1)\n    acme_post_invoice(client, 2)\n"
    index = DefinitionIndex()
    index.add("acme/core.py", "class LedgerClient:\n    pass\n\ndef acme_post_invoice(c, t):\n    pass\n", "python")
    sample = Sample("time", "repo", "svc.py", "python", "0" * 40, text)
    line_tasks = make_tasks([sample], {"repo": index}, max_lines=10, seed=0)
    found = {t.name: t.prompt for t in identifier_tasks([sample], {"repo": index}, line_tasks)}
    assert found["LedgerClient"] == "import acme\n\ndef run():\n    client ="  # no trailing space
    assert found["acme_post_invoice"] == "import acme\n\ndef run():\n    client = LedgerClient(1)"  # nor newline
