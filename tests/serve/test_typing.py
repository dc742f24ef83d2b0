"""Typing in the IDE: prefix reuse, speculation and cancellation change nothing a developer reads, only the wait.

Two real servers over the same tiny CodeGen: one with the prefix cache and prompt-lookup speculation (the
defaults), one with both off. Every prompt of a typing session (growing by a few characters, re-tokenizing its
end, diverging in the middle, sliding its window as the cursor moves down, repeated, several typists at once)
must get byte-identical greedy completions from both, and the first must have reused cached tokens and
accepted guessed tokens while doing so.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import torch

from pipelines.serve.app import create_app
from pipelines.serve.engine import CompletionRequest
from tests.serve.conftest import ServerThread, corpus, no_request_left, started_engine, tokens_made, worker_held

DOCUMENT = "".join(corpus()[:12])


def complete(url: str, prompt: str, **extra) -> httpx.Response:
    body = {"model": "fastertransformer", "prompt": prompt, "max_tokens": 24, "temperature": 0, **extra}
    return httpx.post(url + "/v1/engines/codegen/completions", json=body, timeout=60)


def window(doc: str, first_line: int, lines: int) -> str:
    """Lines ``first_line..first_line+lines`` of ``doc``, as an editor's sliding window above the cursor."""
    return "".join(doc.splitlines(keepends=True)[first_line : first_line + lines])


def typing_session() -> list[str]:
    """Prompts as an editor sends them: keystrokes, an edit in the middle, the window sliding, a repeat."""
    prompts = [DOCUMENT[:n] for n in range(200, 236, 3)]  # typing on, 3 characters at a time
    prompts.append(DOCUMENT[:150] + "    value = self.width\n" + DOCUMENT[150:210])  # diverges in the middle
    prompts += [window(DOCUMENT, first, 9) for first in range(0, 4)]  # the cursor moves down a line at a time
    prompts.append(prompts[3])  # asked again: everything but the last token is cached
    return prompts


def test_runner_matches_hugging_face_in_chunks_and_beside_other_sequences(tiny_model, hf) -> None:
    from pipelines.serve.runner import CodeGenRunner, Feed

    model, tokenizer = hf
    runner = CodeGenRunner(model)
    ids = tokenizer(DOCUMENT[:300])["input_ids"]
    short = ids[-25:]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
        alone = model(torch.tensor([short])).logits[0, -1]
    whole = runner.new_cache()
    (got,) = runner.forward([Feed(whole, ids)])
    torch.testing.assert_close(got, expected[-1], atol=1e-4, rtol=1e-4)
    chunked = runner.new_cache()
    runner.forward([Feed(chunked, ids[:40])])
    (every,) = runner.forward([Feed(chunked, ids[40:], every=True)])
    torch.testing.assert_close(every, expected[40:], atol=1e-4, rtol=1e-4)
    assert chunked.length == len(ids)
    first, second = runner.new_cache(), runner.new_cache()  # two sequences of other lengths in one forward
    runner.forward([Feed(first, ids[:-1])])
    both = runner.forward([Feed(first, ids[-1:]), Feed(second, short)])
    torch.testing.assert_close(both[0], expected[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both[1], alone, atol=1e-4, rtol=1e-4)


def test_cache_and_speculation_give_byte_identical_completions_while_typing(tiny_model) -> None:
    fast = started_engine(tiny_model, max_batch=8)
    plain = started_engine(tiny_model, max_batch=8, prefix_cache_mb=0, speculation=False)
    try:
        with ServerThread(create_app(fast)) as a, ServerThread(create_app(plain)) as b:
            for prompt in typing_session():
                got, want = complete(a.url, prompt), complete(b.url, prompt)
                assert got.status_code == want.status_code == 200
                assert got.json()["choices"][0]["text"] == want.json()["choices"][0]["text"], prompt
                assert got.json()["usage"] == want.json()["usage"]
            stats = fast.stats()
    finally:
        asyncio.run(fast.close())
        asyncio.run(plain.close())
    cache = stats["prefix_cache"]
    assert cache["hits"] >= len(typing_session()) - 3  # all but the windows that start on a line never seen
    assert cache["reused_tokens"] > 0.6 * cache["prompt_tokens"]
    assert stats["accepted_tokens"] > 0 and stats["speculated_steps"] > 0
    assert plain.stats()["prefix_cache"]["reused_tokens"] == 0 and plain.stats()["accepted_tokens"] == 0


def test_four_typists_at_once_each_get_their_solo_completion(tiny_model) -> None:
    files = ["".join(corpus()[i : i + 6]) for i in (0, 12, 24, 36)]
    sessions = [[doc[:n] for n in range(180, 212, 4)] for doc in files]
    plain = started_engine(tiny_model, prefix_cache_mb=0, speculation=False)
    try:
        solo = [[run_one(plain, p) for p in session] for session in sessions]
    finally:
        asyncio.run(plain.close())
    fast = started_engine(tiny_model, max_batch=8)
    answers: dict[int, list[str]] = {}
    with ServerThread(create_app(fast)) as srv:
        barrier = threading.Barrier(len(sessions))

        def typist(i: int) -> None:
            barrier.wait()
            answers[i] = [complete(srv.url, p).json()["choices"][0]["text"] for p in sessions[i]]

        threads = [threading.Thread(target=typist, args=(i,)) for i in range(len(sessions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = fast.stats()
    assert [answers[i] for i in range(len(sessions))] == solo
    assert stats["max_batch_rows"] > 1  # they were decoded together ...
    assert stats["prefix_cache"]["hits"] >= sum(len(s) - 1 for s in sessions)  # ... each reusing its own file


def run_one(engine, prompt: str) -> str:
    return asyncio.run(engine.generate(CompletionRequest(prompt, max_tokens=24, temperature=0))).choices[0].text


def test_a_closed_stream_stops_within_a_step_and_frees_its_row(tiny_model) -> None:
    engine = started_engine(tiny_model, max_batch=4)
    body = {"prompt": DOCUMENT[:200], "max_tokens": 180, "temperature": 0, "stream": True, "logit_bias": {"0": -100}}
    with ServerThread(create_app(engine)) as srv:
        with worker_held(engine, no_request_left(engine), once=tokens_made(engine)):  # the close lands mid-answer
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as response:
                first = next(response.iter_lines())
                assert first.startswith("data: ")
            deadline = time.monotonic() + 30
            while engine.stats()["rows"] and time.monotonic() < deadline:
                time.sleep(0.01)
            stats = engine.stats()
        assert complete(srv.url, "def get_").status_code == 200
    asyncio.run(engine.close())
    assert stats["rows"] == 0
    assert stats["tokens"] < 150  # it did not run on to max_tokens


def test_a_newer_prompt_of_the_same_user_supersedes_the_running_one(tiny_model) -> None:
    engine = started_engine(tiny_model, max_batch=4, speculation=False)  # one token per step: time to supersede
    long = {"max_tokens": 180, "temperature": 0, "logit_bias": {"0": -100}, "user": "editor-1"}
    results: dict[str, httpx.Response] = {}

    def superseded() -> bool:
        return engine.stats()["superseded"] >= 1

    with ServerThread(create_app(engine)) as srv, worker_held(engine, superseded, once=tokens_made(engine, 3)):
        older = threading.Thread(target=lambda: results.update(old=complete(srv.url, DOCUMENT[:200], **long)))
        older.start()
        deadline = time.monotonic() + 30
        while engine.stats()["tokens"] < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        results["new"] = complete(srv.url, DOCUMENT[:204], max_tokens=8, user="editor-1")
        older.join(30)
        other = complete(srv.url, DOCUMENT[:200], max_tokens=8, user="editor-2")  # another user is left alone
        stats = engine.stats()
    asyncio.run(engine.close())
    assert results["old"].status_code == 200 and results["new"].status_code == 200
    assert results["old"].json()["choices"][0]["finish_reason"] == "stop"
    assert stats["superseded"] == 1 and stats["tokens"] < 180, str(
        stats
    )  # the old one stopped long before its 180 tokens
    assert results["new"].json()["choices"][0]["text"] and other.json()["choices"][0]["text"]


def editor_prompt(lines: list[str], line: int, col: int, max_lines: int) -> str:
    """The FauxPilot extension's prompt for a document longer than ``max_lines`` (its leading lines + window)."""
    leading = int(0.15 * max_lines)
    head = "".join(f"{text}\n" for text in lines[:leading])
    return head + "".join(f"{text}\n" for text in lines[line - (max_lines - leading) : line]) + lines[line][:col]


def test_next_line_prefix_is_what_the_extension_sends_after_the_cursor_moves_down() -> None:
    from pipelines.serve.lookahead import next_line_prefix

    lines = DOCUMENT.splitlines()
    now, then = editor_prompt(lines, 20, 6, 8), editor_prompt(lines, 21, 3, 8)
    expected = next_line_prefix(now, window_lines=8)
    assert expected and then.startswith(expected)
    assert len(expected) > len(then) - len(lines[20]) - 8  # all of it but the line being typed
    assert next_line_prefix(DOCUMENT[:300], window_lines=8) is None  # a short document does not slide
    assert next_line_prefix(now, window_lines=0) is None


def test_while_idle_the_engine_prefills_the_window_the_next_line_will_send(tiny_model) -> None:
    lines = DOCUMENT.splitlines()
    before, after = editor_prompt(lines, 20, 6, 12), editor_prompt(lines, 21, 4, 12)
    reused = {}
    for window_lines in (12, 0):
        engine = started_engine(tiny_model, window_lines=window_lines)
        try:
            run_one(engine, before)
            planned = engine.stats()
            assert (planned["lookahead_pending"] or planned["lookahead_tokens"] > 0) == (window_lines > 0)
            deadline = time.monotonic() + 60  # a pause in typing: the engine looks ahead once idle for a second
            while engine.stats()["lookahead_pending"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not engine.stats()["lookahead_pending"]
            start = engine.stats()["prefix_cache"]["reused_tokens"]
            reused[window_lines] = (run_one(engine, after), engine.stats()["prefix_cache"]["reused_tokens"] - start)
        finally:
            asyncio.run(engine.close())
    plain = started_engine(tiny_model, prefix_cache_mb=0, speculation=False, window_lines=0)
    try:
        expected = run_one(plain, after)
    finally:
        asyncio.run(plain.close())
    tokens = len(plain.encode(after))
    assert reused[12][0] == reused[0][0] == expected
    assert reused[12][1] >= tokens - len(plain.encode(lines[20])) - 4  # only the finished line was left to run
    assert reused[0][1] < tokens / 4  # without looking ahead only the leading lines were reusable
