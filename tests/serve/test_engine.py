"""Stop handling and the embedded engine called directly: batching, greedy equality with HF, sampling, cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipelines.serve.engine import BadRequest, CompletionRequest, Finish, PromptTooLong, StopTracker, model_id_for
from tests.serve.conftest import hf_greedy_ids, no_request_left, started_engine, tokens_made, worker_held


def feed(stops: list[str], texts: list[str]) -> tuple[list[str], bool]:
    tracker = StopTracker(stops)
    pieces = [tracker.update(t) for t in texts]
    return pieces, tracker.stopped


def test_stop_in_the_middle_is_trimmed_with_everything_after_it() -> None:
    pieces, stopped = feed(["END"], ["hello ", "hello EN", "hello END wor", "hello END world"])
    assert stopped
    assert "".join(pieces) == "hello "


def test_text_that_may_start_a_stop_string_is_held_back_until_resolved() -> None:
    tracker = StopTracker(["\ndef"])
    assert tracker.update("x = 1") == "x = 1"
    assert tracker.update("x = 1\n") == ""  # could be the start of "\ndef"
    assert tracker.update("x = 1\nde") == ""
    assert tracker.update("x = 1\ndx") == "\ndx"  # resolved: not a stop
    assert tracker.update("x = 1\ndx\ndef") == ""
    assert tracker.stopped


def test_earliest_of_several_stops_wins_and_finish_flushes_a_pending_prefix() -> None:
    pieces, stopped = feed(["world", "lo"], ["hello world"])
    assert stopped and pieces == ["hel"]
    tracker = StopTracker(["\n\n"])
    assert tracker.update("a\n") == "a"
    assert tracker.finish("a\n") == "\n"  # generation ended: the held-back newline was not a stop
    assert not tracker.stopped


def test_half_a_utf8_character_is_never_emitted_and_empty_stops_are_ignored() -> None:
    tracker = StopTracker(["", "Z"])
    assert tracker.update("caf\ufffd") == "caf"
    assert tracker.update("café") == "é"
    assert tracker.update("café Z") == " "
    assert tracker.stopped


def test_a_run_model_folder_is_named_after_its_run(tmp_path) -> None:
    assert model_id_for(tmp_path / "runs" / "v7" / "model") == "v7"
    assert model_id_for(tmp_path / "tiny-code") == "tiny-code"


def run(coro):
    return asyncio.run(coro)


def test_greedy_equals_plain_hf_generate_and_is_deterministic(engine, hf) -> None:
    prompt = "def get_price(self, limit):\n    value = self."
    first = run(engine.generate(CompletionRequest(prompt, max_tokens=30, temperature=0)))
    second = run(engine.generate(CompletionRequest(prompt, max_tokens=30, temperature=0)))
    expected_ids = hf_greedy_ids(hf, prompt, 30)
    assert first.choices[0].text == hf[1].decode(expected_ids)
    assert first.choices[0].tokens == len(expected_ids)
    assert first.choices[0].text.strip()
    assert first == second


def test_concurrent_requests_share_batches_and_each_matches_its_solo_answer(tiny_model, hf) -> None:
    engine = started_engine(tiny_model, max_batch=8)
    prompts = [f"def get_{name}(self, " for name in ("total", "count", "price", "amount", "index", "offset")]
    prompts += ["    value = self.", "    return"]

    async def first_then_the_rest_at_once():
        first = await engine.generate(CompletionRequest(prompts[0], max_tokens=24, temperature=0))
        rest = await asyncio.gather(
            *(engine.generate(CompletionRequest(p, max_tokens=24, temperature=0)) for p in prompts[1:])
        )
        return [first, *rest]

    try:
        results = run(first_then_the_rest_at_once())
        stats = engine.stats()
    finally:
        run(engine.close())
    for prompt, result in zip(prompts, results, strict=True):
        assert result.choices[0].text == hf[1].decode(hf_greedy_ids(hf, prompt, 24)), prompt
    assert stats["max_batch_rows"] > 1
    assert stats["prefills"] == len(prompts)  # each prompt is prefilled on its own ...
    # ... and the five other "def get_..." prompts reuse the "def get_" the first one left in the cache (prompts
    # that arrive together look up the cache before any of them is in it, so the first one is awaited alone)
    assert stats["prefix_cache"]["hits"] >= 5


def test_n_choices_with_a_seed_are_reproducible_and_distinct(engine) -> None:
    request = CompletionRequest("def get_", max_tokens=12, temperature=1.5, n=3, seed=11)
    first = run(engine.generate(request))
    again = run(engine.generate(request))
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert first == again
    assert len({c.text for c in first.choices}) > 1
    other = run(engine.generate(CompletionRequest("def get_", max_tokens=12, temperature=1.5, n=3, seed=12)))
    assert [c.text for c in other.choices] != [c.text for c in first.choices]


def test_logit_bias_bans_a_token_and_penalties_change_the_answer(engine, hf) -> None:
    prompt = "def get_total(self, count):\n    value = self."
    eos = hf[1].eos_token_id
    plain = run(engine.generate(CompletionRequest(prompt, max_tokens=20, temperature=0)))
    ids = hf_greedy_ids(hf, prompt, 20)
    banned = run(engine.generate(CompletionRequest(prompt, max_tokens=20, temperature=0, logit_bias={ids[0]: -100})))
    assert not hf[1].decode(ids[:1]) or banned.choices[0].text != plain.choices[0].text
    assert hf[1].convert_ids_to_tokens(ids[0]) not in hf[1].tokenize(banned.choices[0].text)[:1]
    long = CompletionRequest(prompt, max_tokens=60, temperature=0, logit_bias={eos: -100})  # no end: it repeats
    repeating = run(engine.generate(long)).choices[0]
    penalised = run(engine.generate(CompletionRequest(**{**long.__dict__, "frequency_penalty": 2.0}))).choices[0]
    present = run(engine.generate(CompletionRequest(**{**long.__dict__, "presence_penalty": 2.0}))).choices[0]
    assert repeating.tokens == 60 and repeating.finish_reason is Finish.LENGTH
    assert penalised.text != repeating.text and present.text != repeating.text


def test_prompt_checks(engine) -> None:
    with pytest.raises(PromptTooLong) as err:
        engine.prepare(CompletionRequest("x " * 300, max_tokens=16))
    assert err.value.context_length == 256
    with pytest.raises(BadRequest):
        engine.prepare(CompletionRequest("x", logit_bias={10**6: 1.0}))
    assert engine.prepare(CompletionRequest("", max_tokens=4)) == [engine.start_id()]
    done = run(engine.generate(CompletionRequest("x", max_tokens=0)))
    assert done.choices[0].text == "" and done.choices[0].finish_reason is Finish.LENGTH


def test_a_stream_closed_early_frees_its_rows(tiny_model) -> None:
    engine = started_engine(tiny_model, max_batch=4)

    async def read_one_then_leave():
        stream = engine.stream(CompletionRequest("def get_", max_tokens=200, temperature=1.0, logit_bias={0: -100}))
        first = await anext(stream)
        await stream.aclose()
        deadline = time.monotonic() + 30
        while engine.stats()["rows"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return first

    try:
        with worker_held(engine, no_request_left(engine), once=tokens_made(engine)):  # it leaves mid-answer
            first = run(read_one_then_leave())
        stats = engine.stats()
    finally:
        run(engine.close())
    assert first.finish_reason is None
    assert stats["rows"] == 0
    assert stats["tokens"] < 200


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_bfloat16_and_int8_weights_batch_and_finish_like_float32(tiny_model, dtype: str) -> None:
    from pipelines.serve.embedded_engine import EmbeddedEngine

    engine = EmbeddedEngine(tiny_model, device="cpu", dtype=dtype)
    engine.load()
    assert engine.failure is None, engine.failure
    prompts = ["def get_total(self, count):\n    value = self.", "def get_", "    return"]

    async def together():
        return await asyncio.gather(
            *(
                engine.generate(CompletionRequest(p, max_tokens=12, temperature=0, logit_bias={0: -100}))
                for p in prompts
            ),
        )

    try:
        results = run(together())
    finally:
        run(engine.close())
    assert engine.dtype == dtype
    assert all(r.choices[0].tokens == 12 and r.choices[0].finish_reason is Finish.LENGTH for r in results)
    assert results[0].choices[0].text.startswith("total")  # the trained model still answers sensibly
