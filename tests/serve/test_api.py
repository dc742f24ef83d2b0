"""The HTTP API through a real uvicorn server: the VS Code extension's request, the openai client, SSE, errors."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import httpx
import openai
import pytest

from pipelines.serve.app import create_app
from tests.serve.conftest import ServerThread, hf_greedy_ids, no_request_left, started_engine, tokens_made, worker_held

PROMPT = "def get_total(self, count):\n    value = self."

# Venthe/vscode-fauxpilot 1.2.0 through openai-node: exactly this body and these headers.
VSCODE_BODY = {"model": "fastertransformer", "prompt": PROMPT, "max_tokens": 200, "temperature": 0.1, "stop": ["\n"]}
VSCODE_HEADERS = {
    "Authorization": "Bearer dummy",
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "OpenAI/JS 4.28.0",
    "X-Stainless-Lang": "js",
    "X-Stainless-Package-Version": "4.28.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "node",
    "X-Stainless-Runtime-Version": "v18.17.1",
}


def post(url: str, body: dict, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json=body, timeout=timeout, **kwargs)


def sse_events(response: httpx.Response) -> list:
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def greedy_text(hf, prompt: str, max_tokens: int) -> str:
    return hf[1].decode(hf_greedy_ids(hf, prompt, max_tokens))


def test_the_vscode_extension_request_gets_a_json_completion(server: str) -> None:
    r = httpx.post(server + "/v1/engines/codegen/completions", content=json.dumps(VSCODE_BODY), headers=VSCODE_HEADERS)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    text = body["choices"][0]["text"]
    assert text.strip() and "\n" not in text
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    codex = httpx.post(
        server + "/v1/engines/copilot-codex/completions", json=VSCODE_BODY, headers={"Host": "localhost"}
    )
    assert codex.status_code == 200 and codex.json()["choices"][0]["text"].strip()


def test_the_openai_client_completes_streaming_and_not(server: str, hf) -> None:

    client = openai.OpenAI(base_url=server + "/v1", api_key="dummy", max_retries=0)
    done = client.completions.create(model="codegen", prompt=PROMPT, max_tokens=20, temperature=0)
    assert done.choices[0].text == greedy_text(hf, PROMPT, 20)
    assert done.usage.prompt_tokens == len(hf[1](PROMPT)["input_ids"])
    chunks = list(client.completions.create(model="codegen", prompt=PROMPT, max_tokens=20, temperature=0, stream=True))
    assert len(chunks) > 2  # token by token, not the whole text in one event
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-code"]


def test_stream_false_answers_json_and_stream_true_streams_tokens_then_done(server: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = post(server, {**body, "stream": False})
    assert plain.headers["content-type"] == "application/json"
    text = plain.json()["choices"][0]["text"]
    events = sse_events(post(server, {**body, "stream": True}))
    assert events[-1] == "[DONE]"
    pieces = events[:-1]
    assert len(pieces) >= 3
    assert "".join(e["choices"][0]["text"] for e in pieces) == text
    assert [e["choices"][0]["finish_reason"] for e in pieces][-1] == plain.json()["choices"][0]["finish_reason"]
    assert all(e["choices"][0]["finish_reason"] is None for e in pieces[:-1])
    with_usage = sse_events(post(server, {**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"] == plain.json()["usage"]


def test_stop_as_string_or_list_is_trimmed_wherever_it_occurs(server: str, hf) -> None:
    tokenizer = hf[1]
    ids = hf_greedy_ids(hf, PROMPT, 40)
    full = tokenizer.decode(ids)
    pieces = [tokenizer.decode([t]) for t in ids]
    k = next(i for i in range(2, len(pieces)) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[k][-1] + pieces[k + 1][0]  # spans two tokens, in the middle of the text
    cut = full.index(stop)
    needed = next(n for n in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:n]))
    for stops in (stop, [stop], ["never-there", stop]):
        for stream in (False, True):
            r = post(server, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stop": stops, "stream": stream})
            if stream:
                events = sse_events(r)[:-1]
                text = "".join(e["choices"][0]["text"] for e in events)
                finish = events[-1]["choices"][0]["finish_reason"]
            else:
                text, finish = r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]
                usage = r.json()["usage"]
                assert usage["completion_tokens"] == needed
                assert usage["total_tokens"] == usage["prompt_tokens"] + needed
            assert text == full[:cut] and stop not in text
            assert finish == "stop"


def test_finish_reason_length_and_exact_usage(server: str, hf) -> None:
    r = post(server, {"prompt": PROMPT, "max_tokens": 5, "temperature": 0}).json()
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["choices"][0]["text"] == greedy_text(hf, PROMPT, 5)
    prompt_tokens = len(hf[1](PROMPT)["input_ids"])
    assert r["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}
    ended = post(server, {"prompt": PROMPT, "max_tokens": 100, "temperature": 0}).json()
    ids = hf_greedy_ids(hf, PROMPT, 100)
    assert len(ids) < 100 and ended["choices"][0]["finish_reason"] == "stop"  # the model wrote end-of-text
    assert ended["usage"]["completion_tokens"] == len(ids)


def test_n_choices_have_distinct_indexes_and_usage_sums_them(server: str) -> None:
    no_end = {"0": -100}  # the tiny tokenizer's <|endoftext|> is id 0: every choice runs to max_tokens
    body = {"prompt": "def get_", "max_tokens": 10, "temperature": 1.2, "n": 3, "seed": 5, "logit_bias": no_end}
    r = post(server, body).json()
    assert sorted(c["index"] for c in r["choices"]) == [0, 1, 2]
    assert r["usage"]["completion_tokens"] == 30 and {c["finish_reason"] for c in r["choices"]} == {"length"}
    assert len({c["text"] for c in r["choices"]}) > 1
    again = post(server, body).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in r["choices"]]
    events = sse_events(post(server, {**body, "stream": True}))[:-1]
    assert {e["choices"][0]["index"] for e in events} == {0, 1, 2}
    joined = {i: "".join(e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i) for i in range(3)}
    assert joined == {c["index"]: c["text"] for c in r["choices"]}
    two = post(server, {"prompt": ["def get_", "    return"], "max_tokens": 4, "temperature": 0, "n": 2}).json()
    assert [c["index"] for c in two["choices"]] == [0, 1, 2, 3]


def test_temperature_zero_is_greedy_and_echo_and_unknown_fields(server: str, hf) -> None:
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "some_future_field": {"x": 1}, "best_of": 1}
    first, second = post(server, body).json(), post(server, body).json()
    assert first["choices"][0]["text"] == second["choices"][0]["text"] == greedy_text(hf, PROMPT, 16)
    echoed = post(server, {**body, "echo": True}).json()
    assert echoed["choices"][0]["text"] == PROMPT + first["choices"][0]["text"]


def test_over_long_prompt_gets_openai_400(server: str) -> None:
    r = post(server, {"prompt": "value = self.total\n" * 60, "max_tokens": 16})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "prompt"
    assert error["code"] == "context_length_exceeded" and "maximum context length is 256" in error["message"]
    streamed = post(server, {"prompt": "value = self.total\n" * 60, "max_tokens": 16, "stream": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["code"] == "context_length_exceeded"


def test_invalid_requests_get_openai_400(server: str) -> None:
    for body in ({"prompt": "x", "n": 0}, {"prompt": "x", "temperature": 3}, {"prompt": "x", "max_tokens": "lots"}):
        r = post(server, body)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["param"] == next(iter(k for k in body if k != "prompt"))
    raw = httpx.post(server + "/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and "JSON" in raw.json()["error"]["message"]


def test_routes_for_copilot_models_health_and_hosts(server: str) -> None:
    assert httpx.get(server + "/copilot_internal/v2/token").json() == {
        "token": "1",
        "expires_at": 2600000000,
        "refresh_in": 900,
    }
    for path in ("/health", "/healthz"):
        r = httpx.get(server + path)
        assert r.status_code == 200 and r.json()["status"] == "ok"
    assert httpx.get(server + "/v1/models").json()["data"][0]["context_length"] == 256
    rebinding = httpx.get(server + "/v1/models", headers={"Host": "attacker.example:5000"})
    assert rebinding.status_code == 403


def test_an_engine_that_is_down_answers_503_with_a_message(tiny_model, tmp_path) -> None:
    from pipelines.serve.embedded_engine import EmbeddedEngine
    from pipelines.serve.triton import TritonEngine
    from tests.serve.conftest import free_port

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "codegen"}')  # no weights, no tokenizer
    port = free_port()  # nothing listens there
    engines = [EmbeddedEngine(broken, device="cpu", dtype="float32"), TritonEngine(tiny_model, "127.0.0.1", port)]
    for engine in engines:
        with ServerThread(create_app(engine)) as srv:
            for stream in (False, True):
                r = post(srv.url, {"prompt": PROMPT, "max_tokens": 8, "stream": stream})
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "engine_unavailable" and error["message"]
            assert "choices" not in r.json()
            health = httpx.get(srv.url + "/health")
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert str(port) in error["message"]


def test_api_key_is_enforced_when_set(engine, hf) -> None:

    with ServerThread(create_app(engine, api_key="s3cret", manage_engine=False)) as srv:
        body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}
        assert post(srv.url, body).status_code == 401
        wrong = post(srv.url, body, headers={"Authorization": "Bearer dummy"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert post(srv.url, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="x", prompt=PROMPT, max_tokens=4, temperature=0).choices[0].text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).completions.create(
                model="x", prompt=PROMPT, max_tokens=4
            )


def test_eight_simultaneous_clients_are_batched_and_all_correct(tiny_model, hf) -> None:
    # the first request waits for the next to arrive (at most 2 s) rather than finishing alone before the others'
    # HTTP requests get through on a loaded machine
    engine = started_engine(tiny_model, max_batch=8, batch_window_s=2)
    prompts = [f"def get_{n}(self, " for n in ("total", "count", "price", "amount", "index", "offset", "width")]
    prompts.append(PROMPT)
    answers: dict[str, str] = {}
    barrier = threading.Barrier(len(prompts))

    def client(prompt: str) -> None:
        barrier.wait()
        r = post(srv.url, {"prompt": prompt, "max_tokens": 48, "temperature": 0})
        answers[prompt] = r.json()["choices"][0]["text"]

    with ServerThread(create_app(engine)) as srv:  # the app starts the engine again: a no-op, then closes it
        threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = engine.stats()
    for prompt in prompts:
        assert answers[prompt] == greedy_text(hf, prompt, 48), prompt
    assert stats["requests"] == 8 and stats["max_batch_rows"] > 1


def test_a_client_that_leaves_stops_its_generation(tiny_model) -> None:
    engine = started_engine(tiny_model, max_batch=16)
    body = {"prompt": "def get_", "max_tokens": 230, "n": 16, "temperature": 1.0, "logit_bias": {"0": -100}}
    with ServerThread(create_app(engine)) as srv:
        with worker_held(engine, no_request_left(engine), once=tokens_made(engine)):  # it leaves mid-answer
            with pytest.raises(httpx.TimeoutException):
                post(srv.url, body, timeout=0.15)
            deadline = time.monotonic() + 30
            while engine.stats()["rows"] and time.monotonic() < deadline:
                time.sleep(0.02)
            stats = engine.stats()
        assert post(srv.url, {"prompt": "def get_", "max_tokens": 3}).status_code == 200  # still serving
    assert stats["rows"] == 0 and stats["tokens"] < 16 * 230


def test_only_json_bodies_and_at_most_16_choices_per_request(server: str) -> None:
    url = server + "/v1/completions"
    plain = httpx.post(url, content=json.dumps({"prompt": "def "}), headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
    many = httpx.post(url, json={"prompt": ["def "] * 10, "n": 2, "max_tokens": 1})
    assert many.status_code == 400 and "more than 16 choices" in many.json()["error"]["message"]
    fine = httpx.post(url, json={"prompt": ["def "] * 8, "n": 2, "max_tokens": 1}, timeout=60)
    assert fine.status_code == 200 and len(fine.json()["choices"]) == 16


def test_extreme_sampling_settings_do_not_break_a_shared_batch(server: str) -> None:
    """temperature/top_p of 1e-300 are 0 in float32: such a request is greedy, and a stream decoded in the
    same batch carries on."""
    url = server + "/v1/completions"
    body = {"prompt": "def get_total(self, count):\n", "max_tokens": 24, "temperature": 0, "stream": True}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stream = pool.submit(lambda: httpx.post(url, json=body, timeout=60).text)
        hostile = [
            pool.submit(httpx.post, url, json={"prompt": "def ", "max_tokens": 8, **extreme}, timeout=60)
            for extreme in ({"temperature": 1e-300}, {"top_p": 1e-300}, {"temperature": 5e-324, "top_p": 5e-324})
        ]
        answers = [f.result() for f in hostile]
        events = stream.result()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert events.rstrip().endswith("data: [DONE]") and '"error"' not in events
