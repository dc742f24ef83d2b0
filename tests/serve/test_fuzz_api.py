"""The completion API under hostile input, against a real `repopilot serve` process (embedded engine, tiny model).

Hypothesis sends random and hostile bodies (types, sizes, encodings, nesting) to every completion route;
every answer must be a non-5xx with an OpenAI-shaped error where it is one, within a bound, and the server
must still complete a normal prompt afterwards. The probes of the hardening issue are tests of their own.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import FUZZ, JSON, NUMBERS, RESPONSE_BOUND_S, TEXT, bodies
from tests.services import start_api, stop

ROUTES = ("/v1/engines/codegen/completions", "/v1/engines/copilot-codex/completions", "/v1/completions")
FIELDS = {
    "prompt": st.one_of(TEXT, st.lists(st.one_of(TEXT, NUMBERS), max_size=4)),
    "max_tokens": NUMBERS,
    "temperature": NUMBERS,
    "top_p": NUMBERS,
    "top_k": NUMBERS,
    "n": NUMBERS,
    "stream": st.one_of(st.booleans(), JSON),
    "stream_options": JSON,
    "logprobs": NUMBERS,
    "echo": st.booleans(),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=40)),
    "presence_penalty": NUMBERS,
    "frequency_penalty": NUMBERS,
    "logit_bias": st.dictionaries(st.one_of(TEXT, NUMBERS.map(str)), NUMBERS, max_size=4),
    "seed": NUMBERS,
    "user": TEXT,
    "suffix": TEXT,
}


@pytest.fixture(scope="module")
def api(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("fuzz-serve") / "serve.log"
    proc, port = start_api(tiny_model, log, "--device", "cpu", "--dtype", "float32", "--max-body-kb", "1024")
    yield f"http://127.0.0.1:{port}"
    stop(proc)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


def post(api: str, route: str, body: bytes, timeout: float = RESPONSE_BOUND_S) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return httpx.post(api + route, content=body, headers=headers, timeout=timeout)


def assert_answered(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"


def still_serving(api: str) -> None:
    body = json.dumps({"prompt": "def get_total(self, count):\n", "max_tokens": 4, "temperature": 0}).encode()
    answer = post(api, ROUTES[0], body)
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] in ("stop", "length")


@FUZZ
@given(route=st.sampled_from(ROUTES), body=bodies(FIELDS))
def test_hostile_bodies_get_4xx_or_an_answer_never_5xx(api: str, route: str, body: bytes) -> None:
    started = time.monotonic()
    response = post(api, route, body)
    assert time.monotonic() - started < RESPONSE_BOUND_S
    assert_answered(response)


def test_the_server_still_answers_after_the_fuzzing(api: str) -> None:
    still_serving(api)


@pytest.mark.parametrize(
    "body",
    [b'{"prompt": "\\ud800", "max_tokens": 2}', b'{"prompt": "ok", "stop": ["\\udfff"]}', b"[" * 100_000,
     b'{"prompt": ' + b"[" * 100_000, b'{"prompt": "x", "max_tokens": 1e999}', b"\xff\xfe"],
)  # fmt: skip
def test_malformed_bodies_are_400_with_a_reason(api: str, body: bytes) -> None:
    response = post(api, ROUTES[2], body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_an_oversized_request_does_not_hold_up_the_others(api: str) -> None:
    """A 20 MB body is refused at once (413); a prompt longer than the context could hold is refused before
    tokenizing (400); and a small request sent meanwhile is answered as fast as alone."""
    small = json.dumps({"prompt": "def get_count(self, total):\n", "max_tokens": 2, "temperature": 0}).encode()
    alone = time.monotonic()
    assert post(api, ROUTES[2], small).status_code == 200
    alone = time.monotonic() - alone
    huge = json.dumps({"prompt": "x = 1\n" * 3_500_000, "max_tokens": 2}).encode()  # 21 MB
    long = json.dumps({"prompt": "value = count + total\n" * 40_000, "max_tokens": 2}).encode()  # 880 KB
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        big = pool.submit(post, api, ROUTES[2], huge)
        over = pool.submit(post, api, ROUTES[2], long)
        time.sleep(0.05)
        meanwhile = time.monotonic()
        assert post(api, ROUTES[2], small).status_code == 200
        meanwhile = time.monotonic() - meanwhile
        refused, too_long = big.result(), over.result()
    assert refused.status_code == 413 and "larger than this server accepts" in refused.json()["error"]["message"]
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in too_long.json()["error"]["message"]
    assert meanwhile < alone + 1.0, (alone, meanwhile)
