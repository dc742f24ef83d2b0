"""The interface every completion engine implements, its request and result types, errors and stop handling.

An engine turns one :class:`CompletionRequest` (a prompt, ``n`` choices, sampling settings, stop strings) into
choices, either all at once (:meth:`Engine.generate`) or as text pieces per token (:meth:`Engine.stream`). The
HTTP layer (``app.py``) only translates; engines never see HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import InputError, RepopilotError

MAX_STOPS = 32
MIN_TEMPERATURE = 1e-4


class EngineUnavailable(RepopilotError):
    """The engine cannot answer now (Triton down, model not loaded or failed); the API answers 503."""

    title = "Engine unavailable"


class BadRequest(InputError):
    """A request the engine cannot serve as asked; the API answers 400 naming ``param``."""

    title = "Invalid request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class PromptTooLong(BadRequest):
    """Prompt plus ``max_tokens`` exceed the model's context; the API answers 400 context_length_exceeded."""

    title = "Prompt too long"

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        super().__init__(
            f"This model's maximum context length is {context_length} tokens, however you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in your prompt; {max_tokens} for the completion). "
            "Please reduce your prompt or completion length.",
            param="prompt",
            code="context_length_exceeded",
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class Superseded(RepopilotError):
    """A newer request of the same client replaced this one; it ends early with the text it had."""

    title = "Superseded"


class Finish(str, enum.Enum):
    """Why a choice ended, as the OpenAI API names it."""

    STOP = "stop"  # a stop string or the end-of-text token
    LENGTH = "length"  # max_tokens (or the context) was reached


@dataclass(frozen=True)
class CompletionRequest:
    """What to complete and how; field meanings follow the OpenAI completions API."""

    prompt: str | tuple[int, ...]
    """The text to continue, or its token ids."""
    max_tokens: int = 16
    """Most tokens to generate per choice."""
    temperature: float = 1.0
    """0 means greedy (argmax); above 0, sampling at that temperature."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: off)."""
    n: int = 1
    """Number of choices."""
    stop: tuple[str, ...] = ()
    """Strings that end a choice; they are never part of the returned text."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit for each time it was already generated."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Added to the logits of these token ids (-100 bans a token)."""
    seed: int | None = None
    """Makes sampling reproducible: choice i samples from a generator seeded with seed + i."""
    context: str = ""
    """Text the server puts before a text prompt (repository context, ``pipelines/context``); not echoed."""
    client: str | None = None
    """Who asked (the API's ``user`` field, e.g. one id per editor): a newer prompt of the same client that
    continues this one supersedes it (the developer typed on), so the older one stops instead of queueing."""

    @property
    def model_input(self) -> str | tuple[int, ...]:
        """What the model continues: the context and the prompt (token ids are taken as they are)."""
        return self.context + self.prompt if isinstance(self.prompt, str) else self.prompt

    @property
    def greedy(self) -> bool:
        """Argmax decoding: temperature 0, or so close to it that sampling is argmax anyway (and dividing the
        logits by it would overflow to infinity), or top_k 1."""
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1

    def validate(self) -> None:
        """Reject settings no engine can honour (the API checks ranges first; this guards direct callers)."""
        if self.max_tokens < 0:
            raise BadRequest("max_tokens must be 0 or more.", param="max_tokens")
        if self.n < 1:
            raise BadRequest("n must be at least 1.", param="n")
        if self.temperature < 0:
            raise BadRequest("temperature must be 0 or more.", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise BadRequest("top_p must be in (0, 1].", param="top_p")
        if len(self.stop) > MAX_STOPS:
            raise BadRequest(f"At most {MAX_STOPS} stop strings are allowed.", param="stop")


@dataclass
class Choice:
    """One finished choice."""

    index: int
    text: str
    finish_reason: Finish
    tokens: int
    """Tokens generated for it, up to and including the one that completed a stop string."""


@dataclass
class Completion:
    """All choices of one request, with the token counts for ``usage``."""

    choices: list[Choice]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)


@dataclass
class Piece:
    """A streamed piece of one choice's text; the last piece of a choice carries its finish reason."""

    index: int
    text: str
    finish_reason: Finish | None = None
    tokens: int = 0
    """On the last piece: tokens generated for the choice (as :attr:`Choice.tokens`)."""


@dataclass
class Health:
    ok: bool
    detail: str


class StopTracker:
    """Follows the growing text of one choice: finds stop strings anywhere, holds back what could start one.

    Feed it the whole decoded text after every token. It returns the new text that is safe to show: never a
    stop string, never a tail that might still become one, never a trailing half UTF-8 character.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.emitted = 0
        self.stopped = False

    def update(self, text: str) -> str:
        """New safe text; sets :attr:`stopped` when a stop string appeared (the text before it is returned)."""
        if self.stopped:
            return ""
        cut = -1
        for stop in self.stops:
            at = text.find(stop, self.emitted)  # nothing emitted can start a stop: see _held_back
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut != -1:
            self.stopped = True
            return self._emit(text, cut)
        end = len(text)
        while end > self.emitted and text[end - 1] == "\ufffd":  # a multi-byte character still incomplete
            end -= 1
        return self._emit(text, end - self._held_back(text[:end]))

    def finish(self, text: str) -> str:
        """The rest of the text when generation ended without a stop string (or the part before one)."""
        piece = self.update(text)
        if self.stopped:
            return piece
        return piece + self._emit(text, len(text))

    def _emit(self, text: str, end: int) -> str:
        end = max(end, self.emitted)
        piece = text[self.emitted : end]
        self.emitted = end
        return piece

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of ``text`` (not yet emitted) that is a proper prefix of a stop string."""
        room = len(text) - self.emitted
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, room), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


def model_id_for(path: Path) -> str:
    """What /v1/models calls a model folder: its name, or its run's name for ``RUN_DIR/model``."""
    path = Path(path).expanduser().resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name or "model"


class Engine(ABC):
    """A completion backend. Subclasses set ``kind``, ``model_id``, ``context_length`` and ``tokenizer``."""

    kind: str = "engine"
    model_id: str = "model"
    context_length: int = 2048
    tokenizer: Any = None

    async def start(self) -> None:
        """Load or connect; called once before serving."""
        return None

    async def close(self) -> None:
        """Release what :meth:`start` took."""
        return None

    @abstractmethod
    async def health(self) -> Health:
        """Whether a completion can be served right now, and why not."""

    @abstractmethod
    def stream(self, request: CompletionRequest) -> AsyncIterator[Piece]:
        """Pieces of every choice as they are generated; each choice ends with a piece holding finish_reason."""

    def model_info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` shows about the model."""
        return {"id": self.model_id, "engine": self.kind, "context_length": self.context_length}

    def stats(self) -> dict[str, Any]:
        """Counters for benchmarks and tests (requests, batches, tokens)."""
        return {}

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def count_tokens(self, prompt: str | Sequence[int]) -> int:
        if not isinstance(prompt, str):
            return max(1, len(prompt))
        self._check_length(prompt)
        return max(1, len(self.encode(prompt)))

    def prepare(self, request: CompletionRequest) -> list[int]:
        """Validate ``request`` and return its prompt ids; raises :class:`BadRequest` or :class:`PromptTooLong`."""
        request.validate()
        if isinstance(request.prompt, str):
            self._check_length(request.model_input)
            ids = self.encode(request.model_input)
        else:
            ids = list(request.prompt)
            vocab = self.vocab_rows()
            if any(not 0 <= t < vocab for t in ids):
                raise BadRequest(f"Token ids in the prompt must lie in [0, {vocab}).", param="prompt")
        if not ids:  # as OpenAI: an empty prompt is the start of a new document
            ids = [self.start_id()]
        if len(ids) + request.max_tokens > self.context_length:
            raise PromptTooLong(len(ids), request.max_tokens, self.context_length)
        vocab = self.vocab_rows()
        bad = [t for t in request.logit_bias if not 0 <= t < vocab]
        if bad:
            raise BadRequest(f"logit_bias names token ids outside [0, {vocab}): {bad[:5]}.", param="logit_bias")
        return ids

    @functools.cached_property
    def max_prompt_chars(self) -> int:
        """No prompt longer than this fits the context: a token spells at most as many characters as its longest
        entry in the vocabulary has bytes. Checked before tokenizing, which costs time in proportion."""
        longest = max((len(token) for token in self.tokenizer.get_vocab()), default=1)
        return self.context_length * max(1, longest)

    def _check_length(self, prompt: str) -> None:
        if len(prompt) > self.max_prompt_chars:
            raise BadRequest(
                f"The prompt has {len(prompt):,} characters, more than this model's {self.context_length}-token "
                f"context can hold (at most {self.max_prompt_chars:,}). Send the end of the document only (VS Code "
                "FauxPilot: a lower fauxpilot.maxLines).",
                param="prompt",
                code="context_length_exceeded",
            )

    def start_id(self) -> int:
        """The token that starts a document (CodeGen: <|endoftext|>), used for an empty prompt."""
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return int(start or 0)

    def vocab_rows(self) -> int:
        """How many token ids the model accepts."""
        return len(self.tokenizer)

    async def generate(self, request: CompletionRequest) -> Completion:
        """All choices at once (collects :meth:`stream`)."""
        texts: dict[int, list[str]] = {i: [] for i in range(request.n)}
        done: dict[int, Choice] = {}
        async with contextlib.aclosing(self.stream(request)) as pieces:  # a cancelled caller frees its rows at once
            async for piece in pieces:
                texts[piece.index].append(piece.text)
                if piece.finish_reason is not None:
                    text = "".join(texts[piece.index])
                    done[piece.index] = Choice(piece.index, text, piece.finish_reason, piece.tokens)
        # counted after the stream started it, so concurrent requests reach the engine in the order they came
        prompt_tokens = await asyncio.to_thread(self.count_tokens, request.model_input)  # CPU work: off the event loop
        missing = [i for i in range(request.n) if i not in done]
        if missing:
            raise EngineUnavailable(f"The {self.kind} engine ended without finishing choices {missing}.")
        return Completion([done[i] for i in range(request.n)], prompt_tokens)
