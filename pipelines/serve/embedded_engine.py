"""The embedded engine: a CodeGen model in this process (CPU or CUDA), batching concurrent requests.

One worker thread owns the model (``worker.py``): requests are prefilled one by one, reusing the longest
prompt prefix any earlier request left in the prefix cache (``prefix_cache.py``), and then decoded together,
a request joining between two tokens; a lone greedy request checks guessed tokens several at a time
(``speculation.py``). Every row samples with its own settings and generator, and stops on its own.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pipelines.errors import InputError
from pipelines.serve.engine import (
    CompletionRequest,
    Engine,
    EngineUnavailable,
    Finish,
    Health,
    Piece,
    Superseded,
    model_id_for,
)
from pipelines.serve.lookahead import next_line_prefix

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "int8")
DEFAULT_PREFIX_CACHE_MB = 2048
INLINE_TOKENIZE_CHARS = 256  # tokenized in well under a millisecond; longer prompts are tokenized in a thread


def check_model_dir(model_dir: Path) -> Path:
    """A folder holding a Hugging Face model, or an :class:`InputError` saying what is wrong."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise InputError(f"{path} is not a folder. Give the model folder, e.g. RUN_DIR/model from `repopilot train`.")
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json: it is not a Hugging Face model folder (save_pretrained).")
    return path


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (Intel AMX): there bf16 is several times faster than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return any(line.startswith("flags") and " amx_bf16" in line for line in info)
    except OSError:
        return False


def resolve_dtype(device: str, dtype: str) -> str:
    """The weights' type to serve with. ``auto``: int8 on a CPU (decoding one token reads every weight, so
    half the bytes of bf16 and a quarter of fp32 make it about twice as fast), bf16 on a GPU that has it,
    else fp16."""
    import torch

    if dtype != "auto":
        if dtype not in DTYPES:
            raise InputError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}.")
        if dtype == "int8" and device != "cpu":
            raise InputError("--dtype int8 (dynamic quantization) runs on the CPU only: add --device cpu.")
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "int8"


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every Linear layer (weights per output channel, activations per batch):
    about twice as fast per token on a CPU, where decoding is bound by reading the weights."""
    import torch

    with warnings.catch_warnings():  # torch marks torch.ao.quantization deprecated; it still works in 2.13
        warnings.simplefilter("ignore")
        try:
            from torch.ao import quantization

            spec = {torch.nn.Linear: quantization.per_channel_dynamic_qconfig}
            return quantization.quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8)
        except (ImportError, AttributeError, RuntimeError) as exc:
            raise InputError(
                f"This torch ({torch.__version__}) cannot quantize to int8 ({exc}). Use --dtype bfloat16 or float32."
            ) from None


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch sees no CUDA GPU. Use --device cpu or auto.")
    return device


class EmbeddedEngine(Engine):
    """Serves a CodeGen model folder with PyTorch in this process."""

    kind = "embedded"

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_batch: int = 8,
        batch_window_s: float = 0.0,
        dtype: str = "auto",
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        speculation: bool = True,
        window_lines: int = 150,
    ) -> None:
        from pipelines.serve.worker import WorkerSettings

        self.model_dir = Path(model_dir)
        self.model_id = model_id_for(self.model_dir)
        self.device_name = device
        self.dtype_name = dtype
        self.max_batch = max(1, max_batch)
        self.prefix_cache_bytes = int(max(0.0, prefix_cache_mb) * 2**20)
        self.settings = WorkerSettings(
            max_batch=self.max_batch, batch_window_s=batch_window_s, speculation=speculation, window_lines=window_lines
        )
        self.failure: str | None = "The model has not been loaded yet."
        self._worker: Any = None
        self._live: set[Any] = set()

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer and model and start the worker (blocking; once). Errors are kept for :meth:`health`."""
        if self._worker is not None and self._worker.alive:
            return
        try:
            worker = self._load()
        except InputError as exc:
            self.failure = exc.message
            return
        except Exception as exc:  # any load failure makes the engine unavailable, with the reason
            log.debug("loading %s failed", self.model_dir, exc_info=True)
            self.failure = (
                f"The model in {self.model_dir} could not be loaded ({type(exc).__name__}: {exc}). Give a complete "
                "model folder (config.json, weights and tokenizer files), such as RUN_DIR/model from `repopilot train`."
            )
            return
        self.failure = None
        self._worker = worker
        worker.start()

    def _load(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipelines.serve.batching import Decoder
        from pipelines.serve.prefix_cache import PrefixCache
        from pipelines.serve.runner import CodeGenRunner
        from pipelines.serve.worker import Worker

        check_model_dir(self.model_dir)
        device = resolve_device(self.device_name)
        dtype = resolve_dtype(device, self.dtype_name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        load_as = torch.float32 if dtype == "int8" else getattr(torch, dtype)  # int8: quantized after loading
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=load_as)
        model = model.to(device).eval()
        if dtype == "int8":
            model = quantize_int8(model)
        runner = CodeGenRunner(model)
        config = model.config
        self.context_length = int(
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048
        )
        self.tokenizer.model_max_length = self.context_length  # CodeGen's tokenizer says 1024, the model 2048
        self._vocab = int(config.vocab_size)
        usable = min(len(self.tokenizer), self._vocab)  # ids past the tokenizer decode to nothing
        eos = config.eos_token_id if config.eos_token_id is not None else self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.device, self.dtype = device, dtype
        decoder = Decoder(runner, PrefixCache(self.prefix_cache_bytes))
        return Worker(decoder, self.decode, eos_ids, usable, self.context_length, self.settings)

    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    async def close(self) -> None:
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop, 30)

    async def health(self) -> Health:
        if self.failure:
            return Health(False, self.failure)
        if self._worker is None or not self._worker.alive:
            detail = self._worker.failure if self._worker is not None else None
            return Health(False, detail or "The embedded engine's worker is not running; restart `repopilot serve`.")
        return Health(True, f"{self.model_id} on {self.device} ({self.dtype})")

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        if self.failure is None:
            info.update(device=self.device, dtype=self.dtype, max_batch=self.max_batch)
            info.update(prefix_cache_mb=self.prefix_cache_bytes // 2**20, speculation=self.settings.speculation)
        return info

    def stats(self) -> dict[str, Any]:
        """Counters since start, plus ``rows`` (being decoded now), ``waiting`` (requests queued) and the prefix
        cache's hits, reused tokens and size."""
        return self._worker.stats() if self._worker is not None else {}

    def vocab_rows(self) -> int:
        return self._vocab

    # ---- requests ------------------------------------------------------------------------------------------

    def _tokenize(self, request: CompletionRequest) -> tuple[list[int], list[int] | None]:
        """The prompt's ids (validated, see :meth:`prepare`) and those of the prompt the IDE will send after the
        cursor moves down a line, when this one is a sliding-window prompt."""
        ids = self.prepare(request)
        prompt, window = request.prompt, self.settings.window_lines
        ahead = next_line_prefix(prompt, window) if isinstance(prompt, str) and window > 1 else None
        return ids, self.encode(request.context + ahead) if ahead else None

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Piece]:
        from pipelines.serve.worker import Job

        if self.failure or self._worker is None:
            raise EngineUnavailable(self.failure or "The model has not been loaded yet.")
        # tokenizing takes CPU time in proportion to the prompt: a long one in a thread, never on the event loop or
        # the worker; a short one at once, so that concurrent requests keep their order (and prefix reuse)
        if isinstance(request.prompt, str) and len(request.prompt) > INLINE_TOKENIZE_CHARS:
            prompt_ids, lookahead_ids = await asyncio.to_thread(self._tokenize, request)
        else:
            prompt_ids, lookahead_ids = self._tokenize(request)
        if request.max_tokens == 0:
            for i in range(request.n):
                yield Piece(i, "", Finish.LENGTH, 0)
            return
        job = Job(request, prompt_ids, asyncio.get_running_loop(), asyncio.Queue(), lookahead_ids)
        self._worker.submit(job, list(self._live))
        self._live.add(job)
        open_choices = set(range(request.n))
        try:
            while open_choices:
                item = await job.queue.get()
                if isinstance(item, Superseded):  # end every open choice with what it had
                    for i in sorted(open_choices):
                        yield Piece(i, "", Finish.STOP, 0)
                    return
                if isinstance(item, BaseException):
                    raise item
                for piece in item:
                    if piece.finish_reason is not None:
                        open_choices.discard(piece.index)
                    yield piece
        finally:
            self._live.discard(job)
            job.cancelled = bool(open_choices)  # the client went away: free its rows
