"""A tiny CodeGen trained for a few seconds on small Python functions, served by real uvicorn servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NAMES = ["total", "count", "price", "amount", "index", "offset", "width", "height", "limit", "score"]


def corpus() -> list[str]:
    """Small functions with a fixed shape, so a tiny model learns newlines, indentation and names."""
    texts = []
    for i, name in enumerate(NAMES * 6):
        other = NAMES[(i * 3 + 1) % len(NAMES)]
        texts.append(
            f"def get_{name}(self, {other}):\n    value = self.{name} + {other}\n    return value * {i % 7 + 2}\n\n\n"
        )
    return texts


def train_tiny(out: Path, steps: int = 100) -> Path:
    """``make_tiny_base`` plus a short plain torch training loop (a few seconds on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.finetune.tiny import make_tiny_base

    texts = corpus()
    base = make_tiny_base(texts, out / "base", vocab_size=400, context=256, n_embd=64, n_layer=2)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    ids = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    block = 64
    blocks = torch.tensor([ids[i : i + block] for i in range(0, len(ids) - block, block // 2)])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    final = out / "tiny-code"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    return final


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="session")
def hf(tiny_model: Path):
    """The same model and tokenizer through plain Hugging Face, for reference answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def hf_greedy_ids(hf, prompt: str, max_tokens: int) -> list[int]:
    """Plain ``generate`` with greedy decoding: the generated ids, without the end-of-text token."""
    import torch

    model, tokenizer = hf
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server on a free 127.0.0.1 port, in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def started_engine(model_dir: Path, **kwargs):
    from pipelines.serve.embedded_engine import EmbeddedEngine

    engine = EmbeddedEngine(model_dir, device="cpu", dtype="float32", **kwargs)
    engine.load()
    assert engine.failure is None, engine.failure
    return engine


@contextlib.contextmanager
def worker_held(engine, until: Callable[[], bool], once: Callable[[], bool], timeout: float = 30) -> Iterator[None]:
    """Hold the engine's worker before each step, once ``once()`` holds, until ``until()`` holds (at most ``timeout``
    seconds each time): what a test does meanwhile (closing a stream, sending a newer request) then lands at a known
    step, however slow the machine is, instead of racing a generation that may end first."""
    worker = engine._worker
    step = worker._step

    def held_step() -> None:
        if once():
            deadline = time.monotonic() + timeout
            while not until() and time.monotonic() < deadline:
                time.sleep(0.005)
        step()

    worker._step = held_step
    try:
        yield
    finally:
        del worker._step


def tokens_made(engine, at_least: int = 1) -> Callable[[], bool]:
    return lambda: engine.stats()["tokens"] >= at_least


def no_request_left(engine) -> Callable[[], bool]:
    """Every request's stream has ended (the engine's cleanup marks a left one cancelled right after)."""
    return lambda: not engine._live


@pytest.fixture(scope="session")
def engine(tiny_model: Path):
    engine = started_engine(tiny_model, max_batch=8)
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="session")
def server(engine) -> Iterator[str]:
    from pipelines.serve.app import LOOPBACK_HOSTS, create_app

    with ServerThread(create_app(engine, allowed_hosts=LOOPBACK_HOSTS, manage_engine=False)) as srv:
        yield srv.url
