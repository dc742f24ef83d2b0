"""Completion latency of the embedded engine for a model of CodeGen-350M's shape, direct and through the API.

    python bench/serve.py [--reps 6] [--prompt-tokens 200] [--skip-hf] [--out FILE]
    python bench/serve.py --mode typing [--dtype int8] [--requests 12] [--typists 8] [--ctranslate2] [--long 300]

A CodeGen with CodeGen-350M's shape (20 layers, 1024 wide, 16 heads, rotary 32, 51200 rows, context 2048) and
random weights, with the real CodeGen tokenizer (../shared/data/codegen-tokenizer) when present. The end-of-text
token is banned so every completion runs to its max_tokens. Measured: plain HF ``generate`` (the recipe's
baseline), p50/p95 for 32 and 128 new tokens on the engine, the latency the HTTP API adds (max_tokens 1 and 32,
through HTTP versus the engine directly), and p95 with 8 concurrent clients, all in float32; then in bfloat16
where the CPU has AMX, with int8 dynamic quantization (what ``--dtype auto`` picks on a CPU), and on the GPU
when ``torch.cuda.is_available()``.
Prints one JSON object; the load average is recorded since other work on the machine skews the figures.
``--mode typing`` replays keystroke requests as the VS Code extension sends them (bench/typing_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.report import finish  # noqa: E402
from pipelines.serve.embedded_engine import cpu_has_amx_bf16  # noqa: E402
from pipelines.serve.engine import CompletionRequest  # noqa: E402

SHARED_TOKENIZER = ROOT.parent / "shared" / "data" / "codegen-tokenizer"
SHAPE = dict(n_layer=20, n_embd=1024, n_head=16, rotary_dim=32, vocab_size=51200, n_positions=2048, n_ctx=2048)


def make_model(out: Path) -> tuple[Path, str]:
    """Save a random CodeGen-350M-shaped model with a tokenizer; returns the folder and the tokenizer's name."""
    import torch
    from transformers import AutoTokenizer, CodeGenConfig, CodeGenForCausalLM

    if SHARED_TOKENIZER.exists():
        tokenizer, which = AutoTokenizer.from_pretrained(SHARED_TOKENIZER), "codegen (real vocabulary)"
    else:
        from pipelines.finetune.tiny import train_tokenizer

        texts = [p.read_text(encoding="utf-8") for p in (ROOT / "pipelines").rglob("*.py")]
        tokenizer, which = train_tokenizer(texts, 4096), "tiny (trained on this repository)"
    eos = tokenizer.eos_token_id
    config = CodeGenConfig(**SHAPE, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = CodeGenForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, which


def prompt_text(tokenizer, tokens: int) -> str:
    """The start of a real source file, cut to about ``tokens`` tokens."""
    source = (ROOT / "pipelines" / "serve" / "embedded.py").read_text(encoding="utf-8")[: tokens * 8]
    ids = tokenizer(source)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(seconds: list[float], tokens: int | None = None) -> dict:
    out = {"n": len(seconds), "p50_s": round(statistics.median(seconds), 3), "p95_s": round(pct(seconds, 0.95), 3)}
    if tokens:
        out["tokens_per_s"] = round(tokens / statistics.median(seconds), 1)
    return out


def hf_generate(model_dir: Path, prompt: str, device: str, tokens: int, reps: int, dtype: str) -> dict:
    """Plain ``model.generate`` (KV cache, greedy): what the recipe's 12 s figure was measured with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    del model
    return summary(times, tokens)


async def engine_latency(engine, prompt: str, tokens: int, reps: int) -> list[float]:
    no_end = {engine.start_id(): -100.0}
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        result = await engine.generate(CompletionRequest(prompt, max_tokens=tokens, temperature=0, logit_bias=no_end))
        times.append(time.perf_counter() - started)
        assert result.choices[0].tokens == tokens, result.choices[0]
    return times


def http_latency(url: str, body: dict, reps: int) -> list[float]:
    import httpx

    times = []
    with httpx.Client(timeout=600) as client:
        for _ in range(reps):
            started = time.perf_counter()
            r = client.post(url + "/v1/engines/codegen/completions", json=body)
            times.append(time.perf_counter() - started)
            r.raise_for_status()
    return times


def concurrent_latency(url: str, body: dict, clients: int, rounds: int) -> tuple[list[float], float]:
    """``clients`` threads each sending ``rounds`` requests back to back; all latencies and the wall time."""
    times: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        barrier.wait()
        mine = http_latency(url, body, rounds)
        with lock:
            times.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, time.perf_counter() - started


class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a background thread (as `repopilot serve` runs it)."""

    def __init__(self, app) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def bench_device(model_dir: Path, device: str, dtype: str, args: argparse.Namespace, baseline: bool = True) -> dict:
    from pipelines.serve.app import create_app
    from pipelines.serve.embedded_engine import EmbeddedEngine

    engine = EmbeddedEngine(model_dir, device=device, max_batch=8, dtype=dtype)
    engine.load()
    if engine.failure:
        raise SystemExit(engine.failure)
    prompt = prompt_text(engine.tokenizer, args.prompt_tokens)
    result: dict = {"device": engine.device, "dtype": engine.dtype, "prompt_tokens": len(engine.encode(prompt))}
    result["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    reps = args.reps if device == "cpu" else args.reps * 3
    if baseline and not args.skip_hf:
        result["hf_generate_128"] = hf_generate(model_dir, prompt, engine.device, 128, max(1, reps // 3), engine.dtype)
    asyncio.run(engine_latency(engine, prompt, 4, 1))  # warm-up
    result["engine_32"] = summary(asyncio.run(engine_latency(engine, prompt, 32, reps)), 32)
    result["engine_128"] = summary(asyncio.run(engine_latency(engine, prompt, 128, max(2, reps // 2))), 128)
    no_end = {str(engine.start_id()): -100}
    with ServerThread(create_app(engine, manage_engine=False)) as srv:
        overhead = {}
        for tokens, n in [(1, reps * 3), (32, reps)] if baseline else [(1, reps * 3)]:
            body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "logit_bias": no_end}
            direct = asyncio.run(engine_latency(engine, prompt, tokens, n))
            http = http_latency(srv.url, body, n)
            overhead[f"max_tokens_{tokens}"] = {
                "engine_p50_s": round(statistics.median(direct), 4),
                "http_p50_s": round(statistics.median(http), 4),
                "added_ms": round((statistics.median(http) - statistics.median(direct)) * 1000, 1),
            }
        result["api_overhead"] = overhead
        body = {"prompt": prompt, "max_tokens": 32, "temperature": 0, "logit_bias": no_end}
        before = engine.stats()
        times, wall = concurrent_latency(srv.url, body, clients=8, rounds=args.rounds)
        stats = engine.stats()
        result["concurrent_8_clients_32"] = {
            **summary(times),
            "requests": len(times),
            "total_tokens_per_s": round(len(times) * 32 / wall, 1),
            "largest_batch": stats["max_batch_rows"],
            "decode_steps": stats["steps"] - before["steps"],
        }
    asyncio.run(engine.close())
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="repetitions of a 32-token completion (128: half)")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client in the concurrency test")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--skip-hf", action="store_true", help="skip the plain HF generate baseline")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--mode",
        choices=("latency", "typing"),
        default="latency",
        help="latency: the figures above; typing: keystroke requests as VS Code sends them",
    )
    typing = parser.add_argument_group("typing mode")
    typing.add_argument("--dtype", default="int8", help="weights' type for the typing mode (default int8)")
    typing.add_argument("--requests", type=int, default=12, help="keystroke requests per typist (default 12)")
    typing.add_argument("--think-ms", type=float, default=300, help="typing time between an answer and the next")
    typing.add_argument("--typists", type=int, default=8, help="developers typing at once (default 8)")
    typing.add_argument("--prefix-cache-mb", type=float, default=4096, help="the engines' prefix cache (MB)")
    typing.add_argument(
        "--pause-ms", type=float, default=8000, help="also measure a line change after this pause in typing (0: skip)"
    )
    typing.add_argument("--exact-requests", type=int, default=6, help="requests compared in float32 (default 6)")
    typing.add_argument("--ctranslate2", action="store_true", help="also replay the trace on CTranslate2")
    typing.add_argument("--context", action="store_true", help="also replay it with repository context (stdlib)")
    typing.add_argument("--context-only", action="store_true", help="only the default engine without and with it")
    typing.add_argument("--long", type=int, default=0, help="also replay this many requests with a small cache")
    typing.add_argument("--long-cache-mb", type=float, default=512, help="the prefix cache of the long replay")
    args = parser.parse_args()

    import torch

    result: dict = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "model": {"shape": SHAPE, "weights": "random; end-of-text banned so every completion has max_tokens tokens"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model_dir, which = make_model(Path(tmp) / "codegen-350M-shape")
        result["model"].update(tokenizer=which, made_in_s=round(time.perf_counter() - started, 1))
        if args.mode == "typing":
            from typing_bench import run_typing

            result["typing"] = run_typing(model_dir, args)
            return finish(result, args.out)
        result["cpu_float32"] = bench_device(model_dir, "cpu", "float32", args)
        if cpu_has_amx_bf16():  # bf16 is fast only where the CPU multiplies it natively
            result["cpu_bfloat16_amx"] = bench_device(model_dir, "cpu", "bfloat16", args, baseline=False)
        result["cpu_int8_dynamic"] = bench_device(model_dir, "cpu", "int8", args, baseline=False)
        if torch.cuda.is_available():
            result["gpu"] = bench_device(model_dir, "cuda", "auto", args)
            result["gpu"]["name"] = torch.cuda.get_device_name(0)
        else:
            result["gpu"] = "not measured: torch sees no CUDA GPU on this machine"
    finish(result, args.out)


if __name__ == "__main__":
    main()
