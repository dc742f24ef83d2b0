"""The Triton engine: FauxPilot's ``fastertransformer`` (uint32 ids) or ``py-model`` (int32) over tritonclient gRPC.

The request becomes the tensors of CONTRACTS §B (``build_inputs``), batch first, one row per choice; the answer
``output_ids [n, beam, total_len]`` (prompt included) is cut with ``sequence_length`` and decoded token by
token through the same stop handling as the embedded engine (``decode_outputs``). Tokenization happens here,
with the tokenizer of the model folder.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import InputError
from pipelines.serve.engine import (
    Choice,
    Completion,
    CompletionRequest,
    Engine,
    EngineUnavailable,
    Finish,
    Health,
    Piece,
    StopTracker,
    model_id_for,
)

CODEGEN_END_ID = 50256
MAX_STOP_WORD_TOKENS = 1024  # length L of stop_words_list: FT checks every entry at every step
MAX_CACHED_STOPS = 4096  # stop strings whose matching tokens are remembered

# Input datatypes of FauxPilot's model configs, used until the server's model metadata has been read.
_INT_INPUTS = ("input_ids", "input_lengths", "request_output_len", "runtime_top_k", "beam_width", "start_id", "end_id")
_FLOAT_INPUTS = ("runtime_top_p", "beam_search_diversity_rate", "temperature", "len_penalty", "repetition_penalty")
_ID_TYPES = {"fastertransformer": np.uint32, "py-model": np.int32}


def default_types(model_name: str) -> dict[str, type]:
    """Numpy types of every §B input for ``model_name`` (``py-*`` models take int32, FT takes uint32)."""
    ints = np.int32 if model_name.startswith("py-") else _ID_TYPES.get(model_name, np.uint32)
    types: dict[str, type] = {name: ints for name in _INT_INPUTS}
    types.update({name: np.float32 for name in _FLOAT_INPUTS})
    types.update(random_seed=np.int32, is_return_log_probs=np.bool_)  # FauxPilot declares INT32 seeds
    types.update(bad_words_list=np.int32, stop_words_list=np.int32)
    return types


def word_list(words: Sequence[Sequence[int]]) -> np.ndarray:
    """FT's ``[2, L]`` word list: the words' token ids back to back padded with 0, then the cumulative end
    offset of each word padded with -1. No words gives ``[[0], [-1]]``."""
    words = [list(w) for w in words if len(w)]
    flat = [t for w in words for t in w]
    width = max(1, len(flat))
    out = np.zeros((2, width), dtype=np.int32)
    out[1, :] = -1
    out[0, : len(flat)] = flat
    ends = np.cumsum([len(w) for w in words], dtype=np.int64)
    out[1, : len(ends)] = ends
    return out


def batch_word_list(words: Sequence[Sequence[int]], rows: int) -> np.ndarray:
    """``[rows, 2, L]``: the same word list for every row."""
    return np.repeat(word_list(words)[None], rows, axis=0)


def repetition_penalty(request: CompletionRequest) -> float:
    """FT's multiplicative penalty (1.0 = off) standing for OpenAI's additive presence and frequency penalties."""
    return float(min(4.0, max(0.25, 1.0 + request.presence_penalty + request.frequency_penalty)))


def build_inputs(
    prompt_ids: Sequence[int],
    request: CompletionRequest,
    *,
    model_name: str = "fastertransformer",
    end_id: int = CODEGEN_END_ID,
    stop_words: Sequence[Sequence[int]] = (),
    bad_words: Sequence[Sequence[int]] = (),
    types: dict[str, type] | None = None,
) -> dict[str, np.ndarray]:
    """Every §B input tensor for ``request``, batch first with one row per choice."""
    n = request.n
    types = {**default_types(model_name), **(types or {})}

    def column(value: float | int, name: str) -> np.ndarray:
        return np.full((n, 1), value, dtype=types[name])

    if request.greedy:  # FauxPilot's convention: temperature 0 means top_k 1 at temperature 1
        top_k, top_p, temperature = 1, 1.0, 1.0
    else:
        top_k, top_p, temperature = request.top_k, request.top_p, request.temperature
    if request.seed is not None:
        seeds = [(request.seed + i) % 2**31 for i in range(n)]
    else:
        seeds = [secrets.randbelow(2**31 - 1) for _ in range(n)]
    ids = np.asarray(prompt_ids, dtype=np.int64)
    return {
        "input_ids": np.repeat(ids[None, :], n, axis=0).astype(types["input_ids"]),
        "input_lengths": column(len(ids), "input_lengths"),
        "request_output_len": column(request.max_tokens, "request_output_len"),
        "runtime_top_k": column(top_k, "runtime_top_k"),
        "runtime_top_p": column(top_p, "runtime_top_p"),
        "beam_search_diversity_rate": column(0.0, "beam_search_diversity_rate"),
        "temperature": column(temperature, "temperature"),
        "len_penalty": column(1.0, "len_penalty"),
        "repetition_penalty": column(repetition_penalty(request), "repetition_penalty"),
        "random_seed": np.asarray(seeds, dtype=types["random_seed"]).reshape(n, 1),
        "is_return_log_probs": column(False, "is_return_log_probs"),
        "beam_width": column(1, "beam_width"),
        "start_id": column(end_id, "start_id"),
        "end_id": column(end_id, "end_id"),
        "bad_words_list": batch_word_list(bad_words, n).astype(types["bad_words_list"]),
        "stop_words_list": batch_word_list(stop_words, n).astype(types["stop_words_list"]),
    }


def decode_outputs(
    output_ids: np.ndarray,
    sequence_length: np.ndarray,
    prompt_len: int,
    request: CompletionRequest,
    decode: Callable[[Sequence[int]], str],
    end_id: int = CODEGEN_END_ID,
) -> list[tuple[list[str], Choice]]:
    """Per choice: the text pieces token by token and the finished choice, stop strings trimmed."""
    results = []
    for i in range(output_ids.shape[0]):
        total = int(np.asarray(sequence_length)[i].reshape(-1)[0])
        generated = [int(t) for t in output_ids[i, 0, prompt_len:total]]
        ended = end_id in generated
        if ended:
            generated = generated[: generated.index(end_id)]
        tracker, pieces, used = StopTracker(request.stop), [], len(generated)
        for k in range(len(generated)):
            pieces.append(tracker.update(decode(generated[: k + 1])))
            if tracker.stopped:
                used = k + 1
                break
        if tracker.stopped or ended:
            finish = Finish.STOP
        else:
            pieces.append(tracker.finish(decode(generated)))
            finish = Finish.LENGTH if len(generated) >= request.max_tokens else Finish.STOP
        results.append(([p for p in pieces if p], Choice(i, "".join(pieces), finish, used)))
    return results


class TritonEngine(Engine):
    """Completions from a Triton server serving FauxPilot's model (``host:port`` is its gRPC endpoint)."""

    kind = "triton"

    def __init__(
        self,
        tokenizer_dir: str | Path,
        host: str = "localhost",
        port: int = 8001,
        model: str = "fastertransformer",
        end_id: int | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.tokenizer_dir = Path(tokenizer_dir)
        self.url = f"{host}:{port}"
        self.triton_model = model
        self.model_id = model_id_for(self.tokenizer_dir)
        self.timeout_s = timeout_s
        self._end_id = end_id
        self._client: Any = None
        self._types: dict[str, type] | None = None
        self._texts: list[str] | None = None
        self._containing: dict[str, tuple[int, ...]] = {}
        self.load_tokenizer()

    def load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        except Exception as exc:
            raise InputError(
                f"No tokenizer could be read from {self.tokenizer_dir} ({type(exc).__name__}). Give the model folder "
                "(or a folder with the CodeGen tokenizer files) that the Triton model was converted from."
            ) from None
        config = self._read_config()
        self.context_length = int(config.get("n_positions") or config.get("max_position_embeddings") or 2048)
        self.tokenizer.model_max_length = self.context_length
        self._vocab = int(config.get("vocab_size") or len(self.tokenizer))
        if self._end_id is None:
            eos = self.tokenizer.eos_token_id
            self._end_id = CODEGEN_END_ID if eos is None else int(eos)
        self.end_id = self._end_id

    def _read_config(self) -> dict[str, Any]:
        try:
            return json.loads((self.tokenizer_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def vocab_rows(self) -> int:
        return self._vocab

    def model_info(self) -> dict[str, Any]:
        return {**super().model_info(), "triton": self.url, "triton_model": self.triton_model}

    async def start(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._client = grpcclient.InferenceServerClient(url=self.url)
        if self._texts is None:  # for stop words: every token's text, once (a fraction of a second)
            self._texts = await asyncio.to_thread(self._decode_vocabulary)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _down(self, exc: BaseException) -> EngineUnavailable:
        message = getattr(exc, "message", None)
        detail = (message() if callable(message) else message) or str(exc) or type(exc).__name__
        return EngineUnavailable(
            f"Triton at {self.url} (model {self.triton_model!r}) did not answer: {detail}. Check that the Triton "
            "container is running and the model is loaded (`docker compose ps`, its logs), then retry."
        )

    async def health(self) -> Health:
        if self._client is None:
            await self.start()
        try:
            ready = await self._client.is_model_ready(self.triton_model, client_timeout=3.0)
        except Exception as exc:
            return Health(False, self._down(exc).message)
        if not ready:
            return Health(False, f"Triton at {self.url} is up but model {self.triton_model!r} is not ready (yet).")
        return Health(True, f"{self.triton_model} on Triton at {self.url}")

    async def _input_types(self) -> dict[str, type]:
        """The datatypes the served model declares (read once); only declared inputs are sent."""
        if self._types is None:
            from tritonclient.utils import triton_to_np_dtype

            meta = await self._client.get_model_metadata(self.triton_model, as_json=True, client_timeout=10.0)
            self._types = {i["name"]: triton_to_np_dtype(i["datatype"]) for i in meta.get("inputs", [])}
        return self._types

    def _encode_request(self, request: CompletionRequest) -> tuple[list[int], list[list[int]]]:
        return self.prepare(request), self.stop_word_ids(request.stop)

    def stop_word_ids(self, stops: Sequence[str]) -> list[list[int]]:
        """Each stop string's own encoding, plus every single token whose text contains it, so FT stops early
        however the model spells it; the text-level trimming decides what is returned."""
        words: list[list[int]] = []
        for stop in stops:
            words.append(self.encode(stop))
            words.extend([t] for t in self._tokens_containing(stop) if [t] != words[-1])
        while sum(len(w) for w in words) > MAX_STOP_WORD_TOKENS:
            words.pop()
        return [w for w in words if w]

    def _decode_vocabulary(self) -> list[str]:
        return self.tokenizer.batch_decode(
            [[i] for i in range(len(self.tokenizer))], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _tokens_containing(self, stop: str) -> tuple[int, ...]:
        if self._texts is None:
            self._texts = self._decode_vocabulary()
        if stop not in self._containing:
            if len(self._containing) >= MAX_CACHED_STOPS:  # clients choose the strings: bound what is kept
                self._containing.clear()
            self._containing[stop] = tuple(i for i, text in enumerate(self._texts) if stop in text)
        return self._containing[stop]

    async def generate(self, request: CompletionRequest) -> Completion:
        return (await self._run(request))[0]

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Piece]:
        _, results = await self._run(request)
        for pieces, choice in results:  # FT answers whole sequences: replay them token by token
            for text in pieces[:-1]:
                yield Piece(choice.index, text)
            yield Piece(choice.index, pieces[-1] if pieces else "", choice.finish_reason, choice.tokens)

    async def _run(self, request: CompletionRequest) -> tuple[Completion, list[tuple[list[str], Choice]]]:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        # tokenizing (and matching stop strings against the vocabulary) costs CPU: in a thread, not on the loop
        prompt_ids, stop_words = await asyncio.to_thread(self._encode_request, request)
        if request.max_tokens == 0:
            results = [([], Choice(i, "", Finish.LENGTH, 0)) for i in range(request.n)]
            return Completion([c for _, c in results], len(prompt_ids)), results
        if self._client is None:
            await self.start()
        bad = [[t] for t, bias in request.logit_bias.items() if bias <= -100]
        try:
            types = await self._input_types()
            tensors = build_inputs(
                prompt_ids,
                request,
                model_name=self.triton_model,
                end_id=self.end_id,
                stop_words=stop_words,
                bad_words=bad,
                types=types,
            )
            inputs = []
            for name, array in tensors.items():
                if types and name not in types:
                    continue  # the served model does not take it
                tensor = InferInput(name, list(array.shape), _triton_type(array.dtype))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            outputs = [InferRequestedOutput("output_ids"), InferRequestedOutput("sequence_length")]
            result = await self._client.infer(self.triton_model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            output_ids, lengths = result.as_numpy("output_ids"), result.as_numpy("sequence_length")
        except Exception as exc:  # connection refused, model missing or failing: all the client can do is retry
            raise self._down(exc) from None
        if output_ids is None or lengths is None:
            raise EngineUnavailable(f"Triton model {self.triton_model!r} answered without output_ids/sequence_length.")
        results = decode_outputs(output_ids, lengths, len(prompt_ids), request, self.decode, self.end_id)
        return Completion([c for _, c in results], len(prompt_ids)), results


def _triton_type(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(dtype)
