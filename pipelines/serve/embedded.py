"""The embedded engine: a Hugging Face causal LM in this process (CPU or CUDA), batching concurrent requests.

One worker thread owns the model. Requests wait in a queue; between two decode steps the worker prefills
whatever is waiting (one padded forward) and merges it into the running batch, so a request never waits
for another to finish. Every row samples with its own settings and generator, and stops on its own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
    StopTracker,
    model_id_for,
)

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "int8")


@dataclass(eq=False)
class _Job:
    """One request inside the worker: its rows report back through ``queue`` on the caller's event loop."""

    request: CompletionRequest
    prompt_ids: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)

    def send(self, item: list[Piece] | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is gone: nobody is listening
            self.cancelled = True


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


def resolve_dtype(device: str, dtype: str) -> Any:
    """``auto``: bf16 on a GPU that has it (else fp16), bf16 on a CPU with AMX, else fp32."""
    import torch

    if dtype != "auto":
        if dtype not in DTYPES:
            raise InputError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}.")
        if dtype == "int8":
            if device != "cpu":
                raise InputError("--dtype int8 (dynamic quantization) runs on the CPU only: add --device cpu.")
            return torch.float32  # loaded as float32, then quantized
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_amx_bf16() else torch.float32


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
    """Serves a Hugging Face causal LM folder with PyTorch in this process."""

    kind = "embedded"

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_batch: int = 8,
        batch_window_s: float = 0.0,
        dtype: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model_id = model_id_for(self.model_dir)
        self.device_name = device
        self.dtype_name = dtype
        self.max_batch = max(1, max_batch)
        self.batch_window_s = batch_window_s
        self.failure: str | None = "The model has not been loaded yet."
        self._model: Any = None
        self._forward: Any = None
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stats = {"requests": 0, "prefills": 0, "max_prefill_requests": 0, "steps": 0, "max_batch_rows": 0}
        self._stats.update({"tokens": 0, "queue_wait_s": 0.0})
        self._rows_now = 0
        self._batch: Any = None

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer and model and start the worker (blocking; once). Errors are kept for :meth:`health`."""
        if self._thread is not None and self._thread.is_alive():
            return
        try:
            self._load()
        except Exception as exc:  # any load failure makes the engine unavailable, with the reason
            log.debug("loading %s failed", self.model_dir, exc_info=True)
            self.failure = (
                f"The model in {self.model_dir} could not be loaded ({type(exc).__name__}: {exc}). Give a complete "
                "model folder (config.json, weights and tokenizer files), such as RUN_DIR/model from `repopilot train`."
            )
            return
        self.failure = None
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name="embedded-engine", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipelines.serve.batching import Forward

        check_model_dir(self.model_dir)
        device = resolve_device(self.device_name)
        dtype = resolve_dtype(device, self.dtype_name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        model = model.to(device).eval()
        if self.dtype_name == "int8":
            model, dtype = quantize_int8(model), "int8"
        config = model.config
        self.context_length = int(
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048
        )
        self.tokenizer.model_max_length = self.context_length  # CodeGen's tokenizer says 1024, the model 2048
        self._vocab = int(config.vocab_size)
        self.usable = min(len(self.tokenizer), self._vocab)  # ids past the tokenizer decode to nothing
        eos = config.eos_token_id if config.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self._model = model
        self._forward = Forward(model, pad)
        self.device, self.dtype = device, str(dtype).removeprefix("torch.")

    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    async def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    async def health(self) -> Health:
        if self.failure:
            return Health(False, self.failure)
        if self._thread is None or not self._thread.is_alive():
            return Health(False, "The embedded engine's worker is not running; restart `repopilot serve`.")
        return Health(True, f"{self.model_id} on {self.device} ({self.dtype})")

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        if self.failure is None:
            info.update(device=self.device, dtype=self.dtype, max_batch=self.max_batch)
        return info

    def stats(self) -> dict[str, Any]:
        """Counters since start, plus ``rows`` (being decoded now) and ``waiting`` (requests queued)."""
        return {**self._stats, "rows": self._rows_now, "waiting": len(self._pending)}

    def vocab_rows(self) -> int:
        return self._vocab

    # ---- requests ------------------------------------------------------------------------------------------

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Piece]:
        if self.failure:
            raise EngineUnavailable(self.failure)
        prompt_ids = self.prepare(request)
        if request.max_tokens == 0:
            for i in range(request.n):
                yield Piece(i, "", Finish.LENGTH, 0)
            return
        job = _Job(request, prompt_ids, asyncio.get_running_loop(), asyncio.Queue())
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                raise EngineUnavailable(self.failure or "The embedded engine's worker is not running.")
            self._pending.append(job)
            self._stats["requests"] += 1
            self._cond.notify()
        finished = 0
        try:
            while finished < request.n:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise item
                for piece in item:
                    finished += piece.finish_reason is not None
                    yield piece
        finally:
            job.cancelled = finished < request.n  # the client went away: free its rows

    # ---- the worker ----------------------------------------------------------------------------------------

    def _take(self, busy: bool) -> list[_Job]:
        """Waiting jobs that fit next to ``busy`` rows (blocks while idle)."""
        with self._cond:
            while not busy and not self._pending and not self._stopping:
                self._cond.wait()
            if not busy and self.batch_window_s > 0 and len(self._pending) < self.max_batch:
                self._cond.wait(self.batch_window_s)  # let simultaneous requests arrive together
            jobs, rows = [], self._rows_now
            while self._pending:
                job = self._pending[0]
                if job.cancelled:
                    self._pending.popleft()
                    continue
                if rows and rows + job.request.n > self.max_batch:
                    break
                jobs.append(self._pending.popleft())
                rows += job.request.n
            return jobs

    def _worker(self) -> None:
        """Serve until closed; if the loop itself breaks, mark the engine failed and answer every waiting job."""
        try:
            self._serve()
        except Exception as exc:
            log.exception("embedded engine worker stopped")
            self.failure = f"The embedded engine stopped ({type(exc).__name__}: {exc}). Restart `repopilot serve`."
        with self._cond:
            jobs = {row.job for row in (self._batch.rows if self._batch else [])} | set(self._pending)
            self._pending.clear()
        error = EngineUnavailable(self.failure or "The server is shutting down.")
        for job in jobs:
            job.send(error)
        self._batch, self._rows_now = None, 0

    def _serve(self) -> None:
        import torch

        with torch.inference_mode():
            self._serve_loop()

    def _serve_loop(self) -> None:
        while not self._stopping:
            jobs = self._take(busy=bool(self._batch))
            if self._stopping:
                self._pending.extendleft(reversed(jobs))
                break
            try:
                if jobs:
                    self._batch = self._admit(self._batch, jobs)
                if self._batch:
                    self._step(self._batch)
                self._rows_now = len(self._batch) if self._batch else 0
            except Exception as exc:  # a failed forward fails the requests it held, not the server
                log.exception("embedded engine step failed")
                error = EngineUnavailable(f"The embedded engine failed on this request ({type(exc).__name__}: {exc}).")
                for job in {row.job for row in (self._batch.rows if self._batch else [])} | set(jobs):
                    job.send(error)
                self._batch, self._rows_now = None, 0

    def _admit(self, batch: Any, jobs: list[_Job]) -> Any:
        import torch

        from pipelines.serve.batching import Row

        now = time.perf_counter()
        groups = []
        for job in jobs:
            self._stats["queue_wait_s"] += now - job.enqueued
            req = job.request
            group = []
            for i in range(req.n):
                generator = None
                if not req.greedy:
                    seed = req.seed + i if req.seed is not None else secrets.randbits(62)
                    generator = torch.Generator().manual_seed(seed % (2**63))
                group.append(Row(job, i, req, StopTracker(req.stop), generator, len(job.prompt_ids)))
            groups.append(group)
        fresh = self._forward.prefill([job.prompt_ids for job in jobs], groups)
        self._stats["prefills"] += 1
        self._stats["max_prefill_requests"] = max(self._stats["max_prefill_requests"], len(jobs))
        if batch is None or not batch:
            return fresh
        batch.merge(fresh)
        return batch

    def _step(self, batch: Any) -> None:
        """Choose every row's next token, report text and finished rows, then feed the tokens back."""
        from pipelines.serve.batching import choose_tokens

        alive = [i for i, row in enumerate(batch.rows) if not row.job.cancelled]
        batch.keep(alive)
        if not batch:
            return
        self._stats["steps"] += 1
        self._stats["max_batch_rows"] = max(self._stats["max_batch_rows"], len(batch))
        tokens = choose_tokens(batch.logits[:, : self.usable], batch.rows)
        out: dict[_Job, list[Piece]] = {}
        keep = []
        for pos, (row, token) in enumerate(zip(batch.rows, tokens, strict=True)):
            finish = None
            if token in self.eos_ids:
                piece, finish = row.tracker.finish(row.text), Finish.STOP
            else:
                row.generated.append(token)
                self._stats["tokens"] += 1
                row.text = self.decode(row.generated)
                piece = row.tracker.update(row.text)
                if row.tracker.stopped:
                    finish = Finish.STOP
                elif len(row.generated) >= row.request.max_tokens or row.length + 1 >= self.context_length:
                    piece, finish = piece + row.tracker.finish(row.text), Finish.LENGTH
            if piece or finish:
                tokens_used = len(row.generated) if finish else 0
                out.setdefault(row.job, []).append(Piece(row.index, piece, finish, tokens_used))
            if finish is None:
                keep.append(pos)
        for job, pieces in out.items():
            job.send(pieces)
        batch.keep(keep)
        if batch:
            self._forward.step(batch, [row.generated[-1] for row in batch.rows])
