"""The Triton engine: §B tensors and stop-word encoding, output decoding, a closed port, a gRPC round trip."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from pipelines.serve.engine import CompletionRequest, EngineUnavailable, Finish
from pipelines.serve.triton import TritonEngine, batch_word_list, build_inputs, decode_outputs, word_list
from tests.serve.conftest import free_port

SHARED_TOKENIZER = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "codegen-tokenizer"
SECTION_B = [
    "input_ids", "input_lengths", "request_output_len", "runtime_top_k", "runtime_top_p", "beam_width",
    "temperature", "len_penalty", "repetition_penalty", "random_seed", "is_return_log_probs", "start_id", "end_id",
    "bad_words_list", "stop_words_list",
]  # fmt: skip


def stop_words_of_row(row: np.ndarray) -> list[list[int]]:
    """Read one [2, L] row back the way FasterTransformer does."""
    ids, ends = row
    words, start = [], 0
    for end in ends:
        if end < 0:
            break
        words.append([int(t) for t in ids[start:end]])
        start = int(end)
    return words


def test_word_list_is_ids_padded_with_zero_then_cumulative_ends_padded_with_minus_one() -> None:
    words = word_list([[198], [628], [198, 4299]])
    assert words.dtype == np.int32
    assert words.tolist() == [[198, 628, 198, 4299], [1, 2, 4, -1]]
    assert word_list([]).tolist() == [[0], [-1]]
    assert word_list([[], [7, 8, 9]]).tolist() == [[7, 8, 9], [3, -1, -1]]
    batch = batch_word_list([[11, 12], [13]], 3)
    assert batch.shape == (3, 2, 3)
    assert all(row.tolist() == [[11, 12, 13], [2, 3, -1]] for row in batch)
    assert stop_words_of_row(batch[0]) == [[11, 12], [13]]


def test_greedy_request_becomes_fastertransformer_tensors() -> None:
    request = CompletionRequest("unused", max_tokens=7, temperature=0, n=2, stop=("\n",))
    t = build_inputs([5, 6, 7], request, stop_words=[[198], [628]])
    assert set(SECTION_B) <= set(t)
    for name in SECTION_B[1:-2]:
        assert t[name].shape == (2, 1), name
    assert t["input_ids"].dtype == np.uint32 and t["input_ids"].tolist() == [[5, 6, 7], [5, 6, 7]]
    assert t["input_lengths"].tolist() == [[3], [3]] and t["input_lengths"].dtype == np.uint32
    assert t["request_output_len"].tolist() == [[7], [7]]
    assert t["runtime_top_k"].tolist() == [[1], [1]] and t["temperature"].tolist() == [[1.0], [1.0]]
    assert t["beam_width"].tolist() == [[1], [1]] and t["repetition_penalty"].tolist() == [[1.0], [1.0]]
    assert t["start_id"].tolist() == t["end_id"].tolist() == [[50256], [50256]]
    assert t["is_return_log_probs"].dtype == np.bool_ and not t["is_return_log_probs"].any()
    assert t["stop_words_list"].shape == (2, 2, 2) and t["stop_words_list"][1].tolist() == [[198, 628], [1, 2]]
    assert t["bad_words_list"].tolist() == [[[0], [-1]], [[0], [-1]]]
    assert t["random_seed"].dtype == np.int32 and t["random_seed"][0, 0] != t["random_seed"][1, 0]


def test_sampling_settings_seeds_and_penalties_map_to_their_tensors() -> None:
    request = CompletionRequest(
        "x", max_tokens=3, temperature=0.7, top_p=0.9, n=3, seed=42, presence_penalty=0.25, frequency_penalty=0.25
    )
    t = build_inputs([1], request, end_id=2, bad_words=[[99]])
    assert t["runtime_top_k"].tolist() == [[0]] * 3
    assert np.allclose(t["runtime_top_p"], 0.9) and np.allclose(t["temperature"], 0.7)
    assert t["random_seed"].ravel().tolist() == [42, 43, 44]
    assert np.allclose(t["repetition_penalty"], 1.5)
    assert t["end_id"].ravel().tolist() == [2, 2, 2]
    assert t["bad_words_list"][2].tolist() == [[99], [1]]


def test_py_model_takes_int32_and_served_metadata_types_win() -> None:
    request = CompletionRequest("x", max_tokens=3, temperature=0)
    py = build_inputs([1, 2], request, model_name="py-model")
    assert py["input_ids"].dtype == np.int32 and py["request_output_len"].dtype == np.int32
    assert build_inputs([1], request, types={"random_seed": np.uint64})["random_seed"].dtype == np.uint64


@pytest.mark.skipif(not SHARED_TOKENIZER.exists(), reason="the shared CodeGen tokenizer is not present")
def test_stop_words_use_the_codegen_vocabulary_and_every_token_containing_them() -> None:
    engine = TritonEngine(SHARED_TOKENIZER)
    assert engine.end_id == 50256 and engine.context_length == 2048
    newline = engine.stop_word_ids(["\n"])
    assert newline[0] == [198] and [628] in newline  # "\n\n" is one token in CodeGen's vocabulary
    assert engine.stop_word_ids(["\ndef"])[0] == [198, 4299]
    tensors = build_inputs([1], CompletionRequest("x", stop=("\ndef",)), stop_words=engine.stop_word_ids(["\ndef"]))
    assert stop_words_of_row(tensors["stop_words_list"][0])[0] == [198, 4299]


def test_outputs_are_cut_by_sequence_length_end_id_and_stop_strings(tiny_model: Path) -> None:
    engine = TritonEngine(tiny_model)
    end = engine.end_id
    generated = engine.encode(" total + count\n    return value")
    prompt = [5, 6, 7]
    width = len(prompt) + len(generated) + 4
    output = np.full((2, 1, width), end, dtype=np.uint32)
    output[:, 0, :3] = prompt
    output[:, 0, 3 : 3 + len(generated)] = generated
    lengths = np.array([[3 + len(generated) + 1], [3 + 4]], dtype=np.uint32)  # row 0 ended, row 1 hit max_tokens
    request = CompletionRequest("x", max_tokens=4, stop=("\n",))
    (pieces0, choice0), (_, choice1) = decode_outputs(output, lengths, 3, request, engine.decode, end)
    assert choice0.text == " total + count" and choice0.finish_reason is Finish.STOP
    assert "".join(pieces0) == choice0.text and len(pieces0) > 1
    assert choice0.tokens == next(k for k in range(1, 99) if "\n" in engine.decode(generated[:k]))
    assert choice1.text == " total + count" and choice1.finish_reason is Finish.STOP
    no_stop = decode_outputs(output, lengths, 3, CompletionRequest("x", max_tokens=4), engine.decode, end)
    assert no_stop[0][1].text == " total + count\n    return value" and no_stop[0][1].finish_reason is Finish.STOP
    assert no_stop[1][1].text == engine.decode(generated[:4]) and no_stop[1][1].finish_reason is Finish.LENGTH
    assert no_stop[1][1].tokens == 4


def test_a_closed_port_reports_unavailable(tiny_model: Path) -> None:
    port = free_port()
    engine = TritonEngine(tiny_model, "127.0.0.1", port)

    async def check():
        health = await engine.health()
        with pytest.raises(EngineUnavailable) as err:
            await engine.generate(CompletionRequest("def get_", max_tokens=4))
        await engine.close()
        return health, err.value

    health, error = asyncio.run(check())
    assert not health.ok and str(port) in health.detail
    assert f"127.0.0.1:{port}" in error.message
