"""The OpenAI completions request body as FauxPilot clients send it, and the JSON shapes of the answers."""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.serve.engine import BadRequest, Choice, Completion, CompletionRequest, Piece

MAX_N = 16


class CompletionBody(BaseModel):
    """``POST /v1/completions`` (and FauxPilot's engine routes). Unknown fields are ignored; null means default."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | list[str] | list[int] | None = None
    suffix: str | None = None
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    n: int | None = Field(1, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    seed: int | None = None
    repo_context: bool | None = None
    """repopilot's own field: put repository context before the prompt (null: the server's setting)."""

    def prompts(self) -> list[str | tuple[int, ...]]:
        """One entry per prompt: text, or token ids."""
        if not self.prompt:  # as OpenAI: no prompt means the start of a new document
            return [""]
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(p, int) for p in self.prompt):
            return [tuple(self.prompt)]
        return list(self.prompt)

    def requests(self) -> list[CompletionRequest]:
        prompts = self.prompts()
        if len(prompts) * (self.n or 1) > MAX_N:  # every prompt gets n choices: the cap is on all of them
            raise BadRequest(
                f"{len(prompts)} prompts x n={self.n or 1} asks for more than {MAX_N} choices in one request; "
                "send fewer prompts per request.",
                param="prompt",
            )
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])  # a string is one stop word
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                bias[int(key)] = max(-100.0, min(100.0, float(value)))
            except ValueError:
                raise BadRequest(f"logit_bias keys must be token ids, not {key!r}.", param="logit_bias") from None
        common = dict(
            max_tokens=16 if self.max_tokens is None else self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            n=self.n or 1,
            stop=tuple(stop),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=bias,
            seed=self.seed,
            client=self.user or None,
        )
        return [CompletionRequest(prompt=p, **common) for p in prompts]

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def parse_body(data: Any) -> CompletionBody:
    """Validate a decoded JSON body; problems become one :class:`BadRequest` naming the first field."""
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object with the completion fields (prompt, max_tokens, ...).")
    try:
        return CompletionBody.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or len(err["loc"]) == 1)
            problems.append(f"{where}: {err['msg']}" if where else err["msg"])
        first = exc.errors()[0]["loc"]
        raise BadRequest("Invalid request: " + "; ".join(dict.fromkeys(problems)), param=str(first[0])) from None


def completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None, title: str = "") -> dict:
    """OpenAI's error shape (``type``, ``param``, ``code``) plus repopilot's ``title`` when there is one."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return {"error": {**error, "title": title} if title else error}


def completion_json(
    cid: str, model: str, completions: list[Completion], n: int, echoes: list[str] | None = None
) -> dict[str, Any]:
    """The non-streamed answer: choices of every prompt (index = prompt * n + choice), usage summed."""
    choices = []
    for p, completion in enumerate(completions):
        for choice in completion.choices:
            text = (echoes[p] if echoes else "") + choice.text
            choices.append(_choice(p * n + choice.index, text, choice))
    prompt_tokens = sum(c.prompt_tokens for c in completions)
    completion_tokens = sum(c.completion_tokens for c in completions)
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def _choice(index: int, text: str, choice: Choice) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": choice.finish_reason.value}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk_json(cid: str, model: str, created: int, index: int, piece: Piece | None, text: str = "") -> dict:
    """One streamed event: a piece of one choice (``piece`` None: only ``text``, e.g. the echoed prompt)."""
    finish = piece.finish_reason.value if piece is not None and piece.finish_reason is not None else None
    body = piece.text if piece is not None else text
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": body, "index": index, "logprobs": None, "finish_reason": finish}],
    }
