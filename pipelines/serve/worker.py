"""The embedded engine's model thread: it takes requests, prefills them, decodes the batch and reports pieces.

Requests wait in a queue. Each loop the worker (1) starts the waiting requests that fit next to the rows
being decoded, looking up the longest cached prefix of each prompt, (2) runs one chunk of the oldest prompt
still prefilling (small chunks while other rows decode, so they keep going) and merges it into the batch
when complete, and (3) decodes one token for every row — or, for a lone greedy row, checks a guessed
continuation in the same forward (prompt-lookup speculation). Rows whose client left are dropped before
every forward, so a cancelled request stops within one step, and a newer request of the same client that
continues a running prompt supersedes it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipelines.serve.batching import Decoder, Prefill, Row, adjust_logits, choose_tokens
from pipelines.serve.engine import CompletionRequest, EngineUnavailable, Finish, Piece, StopTracker, Superseded
from pipelines.serve.speculation import NgramDrafter

log = logging.getLogger(__name__)

SPECULATION_MARGIN = 16  # cache columns kept free past max_tokens for guessed tokens
MAX_GUESSED_PER_STEP = 48  # guessed tokens checked in one forward, over all rows


@dataclass(eq=False)
class Job:
    """One request inside the worker: its rows report back through ``queue`` on the caller's event loop."""

    request: CompletionRequest
    prompt_ids: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    lookahead_ids: list[int] | None = None
    """What the IDE will send after the cursor moves down a line (``lookahead.py``), tokenized by the caller:
    no tokenizing on this thread, which every request waits for."""
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    decoding: float = 0.0
    reused: int = 0
    remaining: int = 0
    tokens: int = 0

    def send(self, item: list[Piece] | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is gone: nobody is listening
            self.cancelled = True


@dataclass
class WorkerSettings:
    max_batch: int = 8
    batch_window_s: float = 0.0
    speculation: bool = True
    prefill_chunk: int = 256
    """Prompt tokens per forward while nothing else decodes; a quarter of it while rows are decoding."""
    window_lines: int = 150
    """The IDE's sliding window (FauxPilot's maxLines): while idle, prefill what it sends after the cursor
    moves down a line (``lookahead.py``). 0: never."""
    lookahead_chunk: int = 32
    """Tokens per forward of that background prefill (a request waits at most one such forward)."""
    lookahead_idle_s: float = 1.0
    """It starts once no request came for this long (a pause in typing), so it never slows a burst of keystrokes."""


class Worker:
    def __init__(
        self,
        decoder: Decoder,
        decode: Callable[[Sequence[int]], str],
        eos_ids: set[int],
        usable: int,
        context_length: int,
        settings: WorkerSettings,
    ) -> None:
        self.decoder, self.decode, self.eos_ids = decoder, decode, eos_ids
        self.usable, self.context_length, self.settings = usable, context_length, settings
        self.failure: str | None = None
        self._pending: collections.deque[Job] = collections.deque()
        self._prefills: list[Prefill] = []
        self._rows: list[Row] = []
        self._lookahead: Prefill | None = None
        self._lookahead_ids: list[int] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rows_now = 0
        self._stats = dict.fromkeys(("requests", "prefills", "steps", "max_batch_rows", "tokens", "superseded"), 0)
        self._stats.update(dict.fromkeys(("speculated_steps", "draft_tokens", "accepted_tokens", "cancelled"), 0))
        self._stats.update(queue_wait_s=0.0, prefill_s=0.0, prefill_tokens=0, lookahead_tokens=0)

    # ---- lifecycle and requests (any thread) ----------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="embedded-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job, live: Sequence[Job]) -> None:
        """Queue ``job``; ``live`` are the requests still running, which it may supersede."""
        job.remaining = job.request.n
        with self._cond:
            if not self.alive:
                raise EngineUnavailable(self.failure or "The embedded engine's worker is not running.")
            self._pending.append(job)
            self._stats["requests"] += 1
            self._cond.notify()
        for older in live:
            if older is not job and _continues(older, job):
                older.cancelled = True
                self._stats["superseded"] += 1
                older.send(Superseded("A newer request of the same client continued this prompt."))

    def stats(self) -> dict:
        prefix = self.decoder.prefix
        cache = {**prefix.stats, "bytes": prefix.bytes, "capacity_bytes": prefix.capacity}
        return {
            **self._stats,
            "rows": self._rows_now,
            "waiting": len(self._pending),
            "lookahead_pending": self._lookahead is not None,
            "prefix_cache": cache,
        }

    # ---- the thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        """Serve until stopped; if the loop itself breaks, mark the engine failed and answer every waiting job."""
        import torch

        try:
            with torch.inference_mode():
                self._serve()
        except Exception as exc:
            log.exception("embedded engine worker stopped")
            self.failure = f"The embedded engine stopped ({type(exc).__name__}: {exc}). Restart `repopilot serve`."
        with self._cond:
            jobs = self._jobs_inside() | set(self._pending)
            self._pending.clear()
        error = EngineUnavailable(self.failure or "The server is shutting down.")
        for job in jobs:
            job.send(error)
        self._rows, self._prefills, self._rows_now = [], [], 0

    def _serve(self) -> None:
        quiet_since = time.perf_counter()
        while not self._stopping:
            busy = bool(self._rows) or bool(self._prefills)
            wait = None  # while idle, block until a request comes (or until it is time to look ahead)
            if not busy and self._lookahead is not None:
                wait = max(0.0, quiet_since + self.settings.lookahead_idle_s - time.perf_counter())
            jobs = self._take(busy, wait)
            if self._stopping:
                self._pending.extendleft(reversed(jobs))
                break
            try:
                for job in jobs:
                    self._prefills.append(self._begin(job))
                if self._rows or self._prefills:
                    self._step()
                    quiet_since = time.perf_counter()
                elif wait is not None and time.perf_counter() >= quiet_since + self.settings.lookahead_idle_s:
                    self._look_ahead()
            except Exception as exc:  # a failed forward fails the requests it held, not the server
                log.exception("embedded engine step failed")
                error = EngineUnavailable(f"The embedded engine failed on this request ({type(exc).__name__}: {exc}).")
                for job in self._jobs_inside() | set(jobs):
                    job.send(error)
                self._rows, self._prefills = [], []
            self._rows_now = len(self._rows)

    def _jobs_inside(self) -> set[Job]:
        return {row.job for row in self._rows} | {p.job for p in self._prefills}

    def _take(self, busy: bool, wait: float | None = None) -> list[Job]:
        """Waiting jobs that fit next to the rows in work; while idle, blocks until one comes (at most ``wait``)."""
        with self._cond:
            if not busy and not self._pending and not self._stopping:
                self._cond.wait_for(lambda: self._pending or self._stopping, timeout=wait)
            if (
                not busy
                and self._pending
                and self.settings.batch_window_s > 0
                and len(self._pending) < self.settings.max_batch
            ):
                self._cond.wait(self.settings.batch_window_s)  # let simultaneous requests arrive together
            rows = len(self._rows) + sum(len(p.rows) for p in self._prefills)
            jobs = []
            while self._pending:
                job = self._pending[0]
                if job.cancelled:
                    self._pending.popleft()
                    continue
                if rows and rows + job.request.n > self.settings.max_batch:
                    break
                jobs.append(self._pending.popleft())
                rows += job.request.n
            return jobs

    def _begin(self, job: Job) -> Prefill:
        import torch

        job.started = time.perf_counter()
        self._stats["queue_wait_s"] += job.started - job.enqueued
        req = job.request
        rows = []
        for i in range(req.n):
            generator = None
            if not req.greedy:
                seed = req.seed + i if req.seed is not None else secrets.randbits(62)
                generator = torch.Generator().manual_seed(seed % (2**63))
            speculates = (
                self.settings.speculation and req.greedy and not (req.presence_penalty or req.frequency_penalty)
            )
            drafter = NgramDrafter(job.prompt_ids) if speculates else None
            rows.append(Row(job, i, req, StopTracker(req.stop), generator, drafter=drafter))
        prefill = self.decoder.start(job.prompt_ids, rows, room=req.max_tokens + SPECULATION_MARGIN, job=job)
        job.reused = prefill.reused
        return prefill

    # ---- one step: every row one token (or a verified guess), and a chunk of the oldest prompt -------------

    def _step(self) -> None:
        self._drop_cancelled()
        out: dict[Job, list[Piece]] = {}
        plan = self._choose(out)
        self._send(out)  # the chosen tokens reach the clients before the forward runs
        self._rows = [row for row, _ in plan]  # rows that just finished leave
        chunk = max(16, self.settings.prefill_chunk // (4 if plan else 1))
        prefills = self._next_prefills(chunk)
        if not plan and not prefills:
            return
        started, before = time.perf_counter(), sum(p.cache.length for p in prefills)
        results = self.decoder.run(plan, prefills, chunk)
        self._stats["steps"] += 1
        self._stats["max_batch_rows"] = max(self._stats["max_batch_rows"], len(plan))
        out = {}
        for (row, fed), logits in zip(plan, results, strict=True):
            self._settle(row, fed, logits, out)
        self._send(out)
        self._rows = [row for row, _ in plan if not row.done]
        if not plan:
            self._stats["prefill_s"] += time.perf_counter() - started
        self._stats["prefill_tokens"] += sum(p.cache.length for p in prefills) - before
        for prefill in prefills:
            if prefill.done:
                self._prefills.remove(prefill)
                self._stats["prefills"] += 1
                prefill.job.decoding = time.perf_counter()
                self._rows += self.decoder.finish(prefill)

    def _next_prefills(self, chunk: int) -> list[Prefill]:
        """The prompts to advance this step: every one that finishes within a chunk (a keystroke's few new
        tokens never wait behind a long prompt), and a chunk of the oldest long one."""
        short = [p for p in self._prefills if len(p.ids) - p.cache.length <= chunk]
        long = [p for p in self._prefills if len(p.ids) - p.cache.length > chunk]
        return short + long[:1]

    def _drop_cancelled(self) -> None:
        """Requests whose client left (or that were superseded) stop here, before the next forward."""
        gone = [p for p in self._prefills if p.job.cancelled]
        for prefill in gone:
            self._prefills.remove(prefill)
        self._stats["cancelled"] += len(gone) + len({r.job for r in self._rows if r.job.cancelled})
        self._rows = [row for row in self._rows if not row.job.cancelled]

    def _choose(self, out: dict[Job, list[Piece]]) -> list[tuple[Row, list[int]]]:
        """Each row's next token (reported), plus a guess of the tokens after it for rows that speculate."""
        if not self._rows:
            return []
        import torch

        logits = torch.stack([row.logits for row in self._rows])[:, : self.usable]
        plan, budget = [], MAX_GUESSED_PER_STEP
        for row, token in zip(self._rows, choose_tokens(logits, self._rows), strict=True):
            if not self._add(row, token, out):
                continue
            guess: list[int] = []
            if row.drafter is not None and budget > 0:
                room = min(row.request.max_tokens - len(row.generated), self.context_length - row.length - 3)
                guess = row.drafter.draft(min(row.draft.value, room, budget))
                budget -= len(guess)
            plan.append((row, [token, *guess]))
        return plan

    def _settle(self, row: Row, fed: list[int], logits, out: dict[Job, list[Piece]]) -> None:
        """After the forward: keep the longest run of guessed tokens the model itself would have chosen greedily
        (the same tokens plain decoding gives, one by one) and report them."""
        if len(fed) == 1:
            row.logits = logits
            return
        guess = fed[1:]
        chosen = adjust_logits(logits[:, : self.usable], [row] * len(fed)).argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(guess) and chosen[accepted] == guess[accepted]:
            accepted += 1
        row.cache.truncate(row.cache.length - len(guess) + accepted)
        row.logits = logits[accepted]
        row.draft.update(len(guess), accepted)
        self._stats["speculated_steps"] += 1
        self._stats["draft_tokens"] += len(guess)
        self._stats["accepted_tokens"] += accepted
        for token in guess[:accepted]:
            if not self._add(row, token, out):
                return

    def _add(self, row: Row, token: int, out: dict[Job, list[Piece]]) -> bool:
        """Append ``token`` to ``row`` and queue the text it makes; False when the row has finished."""
        finish = None
        if token in self.eos_ids:
            piece, finish = row.tracker.finish(row.text), Finish.STOP
        else:
            row.generated.append(token)
            if row.drafter is not None:
                row.drafter.extend([token])
            self._stats["tokens"] += 1
            row.text = self.decode(row.generated)
            piece = row.tracker.update(row.text)
            if row.tracker.stopped:
                finish = Finish.STOP
            elif len(row.generated) >= row.request.max_tokens or row.length + 1 >= self.context_length:
                piece, finish = piece + row.tracker.finish(row.text), Finish.LENGTH
        if piece or finish:
            out.setdefault(row.job, []).append(Piece(row.index, piece, finish, len(row.generated) if finish else 0))
        if finish is not None:
            self._finished(row)
        return finish is None

    def _finished(self, row: Row) -> None:
        row.done = True
        row.cache = None  # its memory goes back now, not when the batch changes
        job = row.job
        job.remaining -= 1
        job.tokens += len(row.generated)
        if job.remaining:
            return
        self._plan_lookahead(job.lookahead_ids)
        log.info(
            "completion: %d prompt tokens (%d reused from the prefix cache), prefill %.2f s, %d tokens in %.2f s",
            len(job.prompt_ids),
            job.reused,
            job.decoding - job.started,
            job.tokens,
            time.perf_counter() - job.decoding,
        )

    # ---- background prefill of the next line's prompt ------------------------------------------------------

    def _plan_lookahead(self, ids: list[int] | None) -> None:
        """After a request, start (while idle) the prefix the IDE will send once the cursor moves down a line."""
        if not ids or self.settings.window_lines <= 1:
            return
        if ids == self._lookahead_ids or len(ids) + 2 > self.context_length:
            return
        self._lookahead_ids = ids
        self._lookahead = self.decoder.start(ids, [], room=1)

    def _look_ahead(self) -> None:
        """One small chunk of the expected prompt, kept in the prefix cache as it grows; a request that arrives
        meanwhile waits at most this chunk."""
        prefill = self._lookahead
        if prefill is not None and not prefill.done:
            before = prefill.cache.length
            self.decoder.run([], [prefill], self.settings.lookahead_chunk)
            self.decoder.remember(prefill)
            self._stats["lookahead_tokens"] += prefill.cache.length - before
        if prefill is None or prefill.done:
            self._lookahead = None

    @staticmethod
    def _send(out: dict[Job, list[Piece]]) -> None:
        for job, pieces in out.items():
            job.send(pieces)


def _continues(older: Job, newer: Job) -> bool:
    """Whether ``newer`` (same client) carries on ``older``'s prompt: different, sharing at least half of it."""
    client = older.request.client
    if not client or client != newer.request.client or older.prompt_ids == newer.prompt_ids:
        return False
    shared = 0
    for a, b in zip(older.prompt_ids, newer.prompt_ids, strict=False):
        if a != b:
            break
        shared += 1
    return shared * 2 >= len(older.prompt_ids)
