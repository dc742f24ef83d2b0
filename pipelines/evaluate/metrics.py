"""What one model scores on the held-out samples: loss over whole files, and next-line completions.

Loss: each file is tokenised on its own (no separator token is added), cut to ``max_loss_tokens``, and
scored in sliding windows of the model's context that overlap by half a context. Every token after the
file's first is scored exactly once, in the first window where it lies past the overlap, so each scored
token sees at least half a context of the file (or all of it). Per file the result is the sum of the
negative log-likelihoods (nats), the number of scored tokens and their UTF-8 bytes; the reported loss is
the token-weighted mean, and bits per byte (comparable across tokenizers) is ``nll / ln 2 / bytes``.

Completions: greedy decoding (no sampling) with the KV cache, ``max_new_tokens`` at most, a row stopping
as soon as it holds a finished answer line (see ``tasks``). The prompt is cut from the left to
``context - max_new_tokens`` tokens. Prompts are sorted by length and batched with left padding (the
attention mask hides the padding; CodeGen's rotary positions are relative, so a padded row decodes as it
would alone — a test checks this).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import InputError, RepopilotError
from pipelines.evaluate.samples import Sample
from pipelines.evaluate.tasks import IdentifierTask, Task, edit_similarity, first_line, has_answer, recalled
from pipelines.progress import Progress

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
_CHARS_PER_TOKEN = 16  # prompts are cut to this many characters per token before tokenising (then to tokens)


@dataclass(frozen=True)
class Settings:
    """How the metrics are computed (identical for every model of a comparison)."""

    max_new_tokens: int = 48
    max_loss_tokens: int = 8192
    batch_size: int = 16
    loss_tokens_per_batch: int = 4096
    device: str = "auto"
    threads: int | None = None


def check_model_dir(path: Path, role: str) -> Path:
    """Fail early, before torch is imported, when ``path`` cannot be a Hugging Face model folder."""
    path = Path(path).expanduser()
    what = "Pass the folder a fine-tune run wrote (config.json, weights and tokenizer files)."
    if not path.exists():
        raise InputError(f"--{role} {path} does not exist. {what}", title="Model not found")
    if not path.is_dir():
        raise InputError(f"--{role} {path} is a file, not a model folder. {what}", title="Model not found")
    names = {p.name for p in path.iterdir()}
    if "config.json" not in names and "adapter_config.json" in names:
        raise InputError(
            f"--{role} {path} holds a LoRA adapter only. Merge it into its base model first, then pass that folder.",
            title="Model not loadable",
        )
    missing = [
        label
        for label, wanted in (("config.json", ("config.json",)), ("weights", _WEIGHTS), ("tokenizer", _TOKENIZER))
        if not names.intersection(wanted)
    ]
    if missing:
        raise InputError(f"--{role} {path} has no {', '.join(missing)}. {what}", title="Model not loadable")
    return path.resolve()


SMALL_MODEL = 20_000_000  # parameters; below this, one thread beats several (the matrices are too small to share)


def choose_threads(requested: int | None, parameters: int) -> int:
    """CPU threads for torch: as asked, else 1 for a small model, else the CPUs this process may use.

    torch counts the host's cores, which in a container may be far more than it is allowed to use, and
    idle-spinning threads on a busy machine make small matrix products many times slower.
    """
    if requested:
        return requested
    if parameters < SMALL_MODEL:
        return 1
    import torch

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), available))


@dataclass
class LoadedModel:
    path: Path
    model: Any
    tokenizer: Any
    context: int
    device: str

    def describe(self) -> dict[str, Any]:
        vocab = json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode()
        return {
            "path": str(self.path),
            "architecture": type(self.model).__name__,
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "context": self.context,
            "tokenizer": hashlib.sha256(vocab).hexdigest()[:16],
            "device": self.device,
        }


def load_model(path: Path, device: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr; no second bar per load
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # a user's folder that transformers cannot read: say so, with its words
        raise RepopilotError(
            f"{path} could not be loaded ({str(exc).splitlines()[0]}). Check that it is a complete model folder.",
            title="Model not loadable",
        ) from None
    model.to(device).eval()
    config = model.config
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048
    return LoadedModel(Path(path), model, tokenizer, int(context), device)


def _windows(n_tokens: int, context: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a file of ``n_tokens`` tokens."""
    overlap = context // 2
    windows = []
    begin, scored = 0, 1
    while scored < n_tokens:
        end = min(begin + context, n_tokens)
        windows.append((begin, end, scored))
        scored = end
        begin = end - overlap
    return windows


@dataclass
class FileScores:
    """Per file: summed negative log-likelihood (nats), scored tokens and their UTF-8 bytes, and the same sums
    over the tokens of internal identifiers (``ident_*``) and over all other tokens (``other_*``)."""

    nll: np.ndarray
    tokens: np.ndarray
    bytes: np.ndarray
    ident_nll: np.ndarray
    ident_tokens: np.ndarray

    @property
    def other_nll(self) -> np.ndarray:
        return self.nll - self.ident_nll

    @property
    def other_tokens(self) -> np.ndarray:
        return self.tokens - self.ident_tokens


def _token_flags(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], length: int) -> np.ndarray:
    """Which tokens overlap a character span (an identifier's), from the tokenizer's character offsets."""
    marked = np.zeros(length + 1, dtype=np.int64)
    for start, end in spans:
        marked[start] += 1
        marked[end] -= 1
    inside = np.concatenate([[0], np.cumsum(np.cumsum(marked)[:-1] > 0)])  # prefix counts of marked characters
    return np.array([inside[min(e, length)] > inside[min(b, length)] for b, e in offsets], dtype=bool)


def score_files(
    lm: LoadedModel,
    texts: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int]]],
    settings: Settings,
    progress: Progress,
) -> FileScores:
    """Teacher-forced scores of every file (``spans``: its internal identifiers' character ranges)."""
    import torch

    n = len(texts)
    scores = FileScores(*(np.zeros(n) for _ in range(5)))
    jobs: list[tuple[int, list[int], int, np.ndarray]] = []  # (file, window ids, leading ids not scored, flags)
    for number, text in enumerate(texts):
        encoded = lm.tokenizer(text, verbose=False, return_offsets_mapping=True)
        ids = encoded["input_ids"][: settings.max_loss_tokens]
        flags = _token_flags(encoded["offset_mapping"][: len(ids)], spans[number], len(text))
        scores.tokens[number] = max(len(ids) - 1, 0)
        scores.ident_tokens[number] = int(flags[1:].sum())
        scores.bytes[number] = len(lm.tokenizer.decode(ids[1:], clean_up_tokenization_spaces=False).encode("utf-8"))
        for begin, end, scored in _windows(len(ids), lm.context):
            jobs.append((number, ids[begin:end], scored - begin, flags[begin:end]))
    rows = max(1, settings.loss_tokens_per_batch // lm.context)
    pad = lm.tokenizer.eos_token_id or 0
    progress.start(f"loss {lm.path.name}", len(jobs), unit="windows")
    with torch.inference_mode():
        for start in range(0, len(jobs), rows):
            batch = jobs[start : start + rows]
            width = max(len(ids) for _, ids, _, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (_, ids, skip, _) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
                labels[row, skip : len(ids)] = input_ids[row, skip : len(ids)]
            input_ids, mask, labels = input_ids.to(lm.device), mask.to(lm.device), labels.to(lm.device)
            logits = lm.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none"
            ).view(len(batch), -1)
            for row, (number, ids, _, flags) in enumerate(batch):
                row_losses = losses[row, : len(ids) - 1].double().cpu().numpy()  # predicting ids[1:]
                scores.nll[number] += float(row_losses.sum())
                scores.ident_nll[number] += float(row_losses[flags[1:]].sum())
            progress.advance(len(batch))
    progress.finish()
    return scores


def _newline_tokens(lm: LoadedModel) -> Any:
    """A boolean mask over the model's vocabulary rows: the tokens whose text holds a newline."""
    import torch

    rows = lm.model.get_output_embeddings().weight.shape[0]
    pieces = lm.tokenizer.batch_decode([[i] for i in range(min(rows, len(lm.tokenizer)))])
    newline = torch.zeros(rows, dtype=torch.bool)
    newline[: len(pieces)] = torch.tensor(["\n" in piece for piece in pieces])
    return newline


def _line_stop(lm: LoadedModel, newline: Any, start: int) -> Any:
    """A stopping criterion: a row of ``generate`` stops once its new text holds a finished answer line."""
    import torch
    from transformers import StoppingCriteria

    class LineStop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for row in torch.nonzero(newline[input_ids[:, -1].cpu()]).flatten().tolist():
                text = lm.tokenizer.decode(input_ids[row, start:], skip_special_tokens=True)
                done[row] = has_answer(text)
            return done

    return LineStop()


def _encode_prompts(
    lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int, blocks: Sequence[str] | None = None
) -> list[list[int]]:
    """Each prompt's ids, cut from the left to leave ``max_new_tokens`` of the context for the answer; with
    ``blocks``, each prompt's repository context first (its room taken from the prompt's start)."""
    budget = lm.context - max_new_tokens
    if budget < 1:
        raise InputError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
            f"{lm.context} tokens. Pass a smaller value."
        )
    encoded = []
    for i, prompt in enumerate(prompts):
        head = lm.tokenizer(blocks[i], verbose=False)["input_ids"][: budget - 1] if blocks and blocks[i] else []
        room = budget - len(head)
        encoded.append(head + lm.tokenizer(prompt[-room * _CHARS_PER_TOKEN :], verbose=False)["input_ids"][-room:])
    return encoded


def _greedy(lm: LoadedModel, encoded: list[list[int]], batch_size: int, label: str, progress: Progress, plan):
    """Greedy continuations (new text only) of ``encoded`` prompts, batched by length with left padding.
    ``plan(batch, width)`` gives a batch's token limit and its stopping criteria (or None)."""
    import torch
    from transformers import StoppingCriteriaList

    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    pad = lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else 0
    answers = [""] * len(encoded)
    progress.start(f"{label} {lm.path.name}", len(encoded), unit="prompts")
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[row, width - len(ids) :] = 1
            limit, stop = plan(batch, width)
            out = lm.model.generate(
                input_ids=input_ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                max_new_tokens=limit,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=lm.tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([stop] if stop else []),
                use_cache=True,
            )
            for row, i in enumerate(batch):
                answers[i] = lm.tokenizer.decode(out[row, width:], skip_special_tokens=True)
            progress.advance(len(batch))
    progress.finish()
    return answers


def complete(
    lm: LoadedModel, prompts: Sequence[str], settings: Settings, progress: Progress, blocks: Sequence[str] | None = None
) -> list[str]:
    """The greedy continuation (new text only) of each prompt, stopping once it holds a finished line."""
    encoded = _encode_prompts(lm, prompts, settings.max_new_tokens, blocks)
    newline = _newline_tokens(lm)
    return _greedy(
        lm, encoded, settings.batch_size, "completions", progress,
        lambda batch, width: (settings.max_new_tokens, _line_stop(lm, newline, width)),
    )  # fmt: skip


def complete_identifiers(
    lm: LoadedModel,
    items: Sequence[IdentifierTask],
    settings: Settings,
    progress: Progress,
    blocks: Sequence[str] | None = None,
):
    """Whether each identifier is recalled: the greedy continuation of the text before it, a few tokens more
    than the name (with the space or line break before it) takes, starts with it (``tasks.recalled``)."""
    room = [len(lm.tokenizer(" " + t.name, verbose=False)["input_ids"]) + 3 for t in items]
    encoded = _encode_prompts(lm, [t.prompt for t in items], max(room, default=1), blocks)
    answers = _greedy(
        lm, encoded, settings.batch_size, "identifiers", progress, lambda batch, _: (max(room[i] for i in batch), None)
    )
    return np.array([float(recalled(a, t.name)) for a, t in zip(answers, items, strict=True)])


@dataclass
class ModelResult:
    """One model's scores: per file (loss) and per task (completions, identifiers), aligned with the samples
    and tasks."""

    info: dict[str, Any]
    files: FileScores
    answers: list[str]
    exact: np.ndarray
    edit: np.ndarray
    recalled: np.ndarray
    seconds: float
    with_context: ModelResult | None = None
    """The same model with repository context before each completion prompt (the losses are the same)."""


@dataclass(frozen=True)
class ContextWork:
    """Repository context for every prompt of a workload: what was chosen (model-independent) and the budget
    (``fit`` counts it in each model's tokens)."""

    tasks: Sequence[tuple[list, str | None]]
    identifiers: Sequence[tuple[list, str | None]]
    settings: Any

    def blocks(self, lm: LoadedModel, max_new_tokens: int) -> tuple[list[str], list[str]]:
        from pipelines.context.provider import fit

        budget = min(self.settings.max_tokens, int(self.settings.max_share * lm.context), lm.context - max_new_tokens)

        def count(text: str) -> int:
            return len(lm.tokenizer(text, verbose=False)["input_ids"])

        return (
            [fit(items, lang, budget, count)[0] for items, lang in self.tasks],
            [fit(items, lang, budget, count)[0] for items, lang in self.identifiers],
        )


@dataclass
class Workload:
    """What every model of an evaluation is scored on."""

    samples: Sequence[Sample]
    spans: Sequence[Sequence[tuple[int, int]]]
    """Per sample: the character ranges of its internal identifiers (for the identifier loss)."""
    tasks: Sequence[Task]
    identifiers: Sequence[IdentifierTask]
    context: ContextWork | None = None


def _completion_scores(lm: LoadedModel, work: Workload, settings: Settings, progress: Progress, blocks=(None, None)):
    """(answers, exact, edit, recalled) of the completion tasks, with the given context blocks (or none)."""
    completions = complete(lm, [t.prompt for t in work.tasks], settings, progress, blocks[0])
    recall = complete_identifiers(lm, work.identifiers, settings, progress, blocks[1])
    answers = [first_line(c) for c in completions]
    exact = np.array([float(a == t.target) for a, t in zip(answers, work.tasks, strict=True)])
    edit = np.array([edit_similarity(a, t.target) for a, t in zip(answers, work.tasks, strict=True)])
    return answers, exact, edit, recall


def evaluate_model(path: Path, work: Workload, settings: Settings, progress: Progress) -> ModelResult:
    import torch

    started = time.monotonic()
    lm = load_model(path, settings.device)
    info = lm.describe()
    info["threads"] = choose_threads(settings.threads, info["parameters"])
    previous = torch.get_num_threads()
    torch.set_num_threads(info["threads"])
    try:
        files = score_files(lm, [s.text for s in work.samples], work.spans, settings, progress)
        scores = _completion_scores(lm, work, settings, progress)
        with_context = None
        if work.context is not None:
            blocks = work.context.blocks(lm, settings.max_new_tokens)
            with_context = _completion_scores(lm, work, settings, progress, blocks)
    finally:
        torch.set_num_threads(previous)
    del lm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next model gets the whole device
    seconds = time.monotonic() - started
    result = ModelResult(info, files, *scores, seconds)
    if with_context is not None:
        result.with_context = ModelResult(info, files, *with_context, seconds)
    return result
