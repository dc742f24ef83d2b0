"""``python bench/serve.py --mode typing``: keystroke latency of the embedded engine as a developer types in VS Code.

Replays bench/typing_trace.py's FauxPilot-extension requests (real source files of the Python standard library
this runs on, so every machine has them; cursor from line 151, a request every 3 typed characters, 32 new
tokens, the extension's route, headers and body with temperature 0 and the end-of-text token banned so every
answer has 32 tokens) against real HTTP servers over a CodeGen-350M-shaped model, side by side in one run:

- ``plain``: no prefix cache, no speculation (every request prefills its whole prompt, as before);
- ``prefix_cache``: the prefix cache alone;
- ``default``: prefix cache and prompt-lookup speculation (what `repopilot serve` does).

It reports the cold first request, p50/p95 per keystroke-request, reused tokens per request, whether the
default's completions are byte-identical to plain's, 8 simultaneous typists (each in a file of its own), a
128-token completion, memory with the cache full, and optionally CTranslate2 on the same trace and a long
replay that checks memory stays bounded.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import sysconfig
import time
from pathlib import Path

import psutil
from typing_trace import latency_summary, replay, replay_together, typing_trace

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = [  # prompts of 1,300-1,600 CodeGen tokens from line 151 on; the first one moves down a line on its way
    "subprocess.py",
    "argparse.py",
    "threading.py",
    "logging/__init__.py",
    "shutil.py",
    "tempfile.py",
    "zipfile.py",
    "http/client.py",
]
CONFIGS = {
    "plain": {"prefix_cache_mb": 0, "speculation": False, "window_lines": 0},
    "prefix_cache": {"speculation": False, "window_lines": 0},
    "default": {},
}


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


class Served:
    """An embedded engine behind a real HTTP server (uvicorn on 127.0.0.1), closed on exit."""

    def __init__(self, model_dir: Path, dtype: str, context_index=None, **settings) -> None:
        from serve import ServerThread

        from pipelines.context.provider import ContextProvider
        from pipelines.serve.app import RepoContext, create_app
        from pipelines.serve.embedded_engine import EmbeddedEngine

        self.engine = EmbeddedEngine(model_dir, device="cpu", max_batch=8, dtype=dtype, **settings)
        self.engine.load()
        if self.engine.failure:
            raise SystemExit(self.engine.failure)
        self.context = None
        if context_index is not None:
            provider = ContextProvider(lambda: context_index, self.engine.count_tokens, self.engine.context_length)
            self.context = RepoContext(provider)
        self.server = ServerThread(create_app(self.engine, manage_engine=False, context=self.context))

    def __enter__(self) -> Served:
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)
        asyncio.run(self.engine.close())


def one_typist(srv: Served, trace, args, extra: dict) -> dict:
    answers = replay(srv.server.url, trace[:1], 32, 0, extra)
    before = srv.engine.stats()
    time.sleep(args.think_ms / 1000)
    answers += replay(srv.server.url, trace[1:], 32, args.think_ms / 1000, extra)
    stats = srv.engine.stats()
    cache = stats["prefix_cache"]
    keystrokes = answers[1:]
    out = {
        "cold_first_request_s": round(answers[0].seconds, 3),
        "keystroke": latency_summary([a.seconds for a in keystrokes]),
        "keystroke_s": [round(a.seconds, 3) for a in keystrokes],
        "keystroke_after_a_line_change_s": [round(a.seconds, 3) for a, k in zip(answers, trace, strict=True) if k.slid],
        "prompt_tokens_per_request": round(sum(a.prompt_tokens for a in answers) / len(answers)),
        "reused_tokens_per_keystroke_request": round(
            (cache["reused_tokens"] - before["prefix_cache"]["reused_tokens"]) / len(keystrokes), 1
        ),
        "completion_tokens": sorted({a.completion_tokens for a in answers}),
    }
    if stats["draft_tokens"]:
        out["speculation"] = {
            "guessed_tokens": stats["draft_tokens"] - before["draft_tokens"],
            "accepted_tokens": stats["accepted_tokens"] - before["accepted_tokens"],
            "forwards_saved": stats["accepted_tokens"] - before["accepted_tokens"],
        }
    out["texts"] = [a.text for a in answers]
    return out


def eight_typists(srv: Served, args, extra: dict) -> dict:
    """Several developers, each in a file of their own: first everyone's first request at once (cold), then
    everyone typing at once (steady state, each typist's requests one after another)."""
    traces = [typing_trace(STDLIB / f, args.requests) for f in FILES[: args.typists]]
    firsts = replay_together(srv.server.url, [t[:1] for t in traces], 32, 0, extra)
    before = srv.engine.stats()
    started = time.perf_counter()
    answers = replay_together(srv.server.url, [t[1:] for t in traces], 32, args.think_ms / 1000, extra)
    wall = time.perf_counter() - started
    stats = srv.engine.stats()
    requests = sum(len(a) for a in answers)
    return {
        "typists": len(traces),
        "first_requests_cold": latency_summary([a[0].seconds for a in firsts]),
        "keystroke": latency_summary([x.seconds for a in answers for x in a]),
        "keystroke_without_line_changes": latency_summary(
            [
                x.seconds
                for a, t in zip(answers, traces, strict=True)
                for x, k in zip(a, t[1:], strict=True)
                if not k.slid
            ]
        ),
        "line_changes": sum(k.slid for t in traces for k in t[1:]),
        "reused_tokens_per_request": round(
            (stats["prefix_cache"]["reused_tokens"] - before["prefix_cache"]["reused_tokens"]) / requests, 1
        ),
        "largest_batch": stats["max_batch_rows"],
        "completion_tokens_per_s": round(sum(x.completion_tokens for a in answers for x in a) / wall, 1),
        "wall_s": round(wall, 1),
        "prefix_cache_mb_used": round(stats["prefix_cache"]["bytes"] / 2**20, 1),
    }


def exactness(model_dir: Path, trace, args, extra: dict) -> dict:
    """The default engine against plain decoding in float32 (the reference numerics) on the first requests."""
    texts = {}
    for name in ("plain", "default"):
        settings = {"prefix_cache_mb": args.prefix_cache_mb, **CONFIGS[name]}
        with Served(model_dir, "float32", **settings) as srv:
            texts[name] = [a.text for a in replay(srv.server.url, trace, 32, args.think_ms / 1000, extra)]
    same = sum(a == b for a, b in zip(texts["default"], texts["plain"], strict=True))
    return {"dtype": "float32", "identical_completions_default_vs_plain": f"{same}/{len(trace)}"}


def line_change(model_dir: Path, args, extra: dict) -> dict:
    """Typing on a line, a pause, then the cursor moves down a line (the prompt's start changes): the first
    request on the new line, with and without prefilling the next window while idle."""
    trace = typing_trace(STDLIB / FILES[0], 10**6)
    moved = next(i for i, key in enumerate(trace) if key.slid and i >= 2)
    out = {"pause_s": args.pause_ms / 1000}
    for name, window in (("with_lookahead", 150), ("without", 0)):
        with Served(model_dir, args.dtype, prefix_cache_mb=args.prefix_cache_mb, window_lines=window) as srv:
            replay(srv.server.url, trace[moved - 2 : moved], 32, args.think_ms / 1000, extra)
            time.sleep(args.pause_ms / 1000)
            before = srv.engine.stats()["prefix_cache"]["reused_tokens"]
            answer = replay(srv.server.url, trace[moved : moved + 1], 32, 0, extra)[0]
            reused = srv.engine.stats()["prefix_cache"]["reused_tokens"] - before
        out[name] = {
            "first_request_on_the_new_line_s": round(answer.seconds, 3),
            "reused_tokens": reused,
            "prompt_tokens": answer.prompt_tokens,
        }
    return out


def long_replay(model_dir: Path, dtype: str, args, extra: dict) -> dict:
    """Many requests with a small cache: resident memory must level off at model + cache + working buffers."""
    trace = [k for f in FILES for k in typing_trace(STDLIB / f, 10**6)][: args.long]
    samples = []
    with Served(model_dir, dtype, prefix_cache_mb=args.long_cache_mb) as srv:
        loaded = rss_mb()
        for start in range(0, len(trace), 25):
            replay(srv.server.url, trace[start : start + 25], 32, 0, extra)
            samples.append(rss_mb())
        cache = srv.engine.stats()["prefix_cache"]
    return {
        "requests": len(trace),
        "line_changes": sum(k.slid for k in trace),
        "prefix_cache_mb": args.long_cache_mb,
        "rss_after_load_mb": loaded,
        "rss_every_25_requests_mb": samples,
        "rss_growth_mb": round(max(samples) - loaded, 1),
        "cache_mb_at_end": round(cache["bytes"] / 2**20, 1),
        "evicted_tokens": cache["evicted_tokens"],
    }


def ctranslate2_side_by_side(model_dir: Path, trace, args) -> dict | str:
    """The same trace on CTranslate2 (int8), which has no cache of arbitrary prompt prefixes."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
        from transformers import AutoTokenizer
    except ImportError:
        return "not measured: pip install ctranslate2 to compare"
    out_dir = model_dir.parent / "ct2-int8"
    if not out_dir.exists():
        TransformersConverter(str(model_dir)).convert(str(out_dir), quantization="int8")
    generator = ctranslate2.Generator(str(out_dir), device="cpu", compute_type="int8", intra_threads=os.cpu_count())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    seconds = []
    for key in trace:
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(key.prompt)["input_ids"])
        started = time.perf_counter()
        generator.generate_batch(
            [tokens], max_length=32, min_length=32, sampling_topk=1, include_prompt_in_result=False
        )
        seconds.append(time.perf_counter() - started)
    return {
        "version": ctranslate2.__version__,
        "cold_first_request_s": round(seconds[0], 3),
        "keystroke": latency_summary(seconds[1:]),
    }


def stdlib_index():
    """Repository context for the trace: the index of the standard library the trace's files come from (the file
    being typed included, as the server's index holds the saved version of the file being edited)."""
    from pipelines.context.index import IndexedFile, RepoIndex
    from pipelines.finetune.data import public_files

    files = []
    for path in public_files(STDLIB):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        record = {"repo": "stdlib", "path": str(path.relative_to(STDLIB)), "text": text, "lang": "python"}
        files.append(IndexedFile.from_record(record))
    return RepoIndex(files, "stdlib")


def with_context(model_dir: Path, trace, args, extra: dict) -> dict:
    """The default engine with repository context before every prompt, on the same trace."""
    started = time.perf_counter()
    index = stdlib_index()
    indexed_s = time.perf_counter() - started
    settings = {"prefix_cache_mb": args.prefix_cache_mb}
    with Served(model_dir, args.dtype, context_index=index, **settings) as srv:
        out = one_typist(srv, trace, args, extra)
        out.pop("texts")
        out["context"] = {**srv.context.stats(), **index.stats(), "index_build_s": round(indexed_s, 1)}
    return out


def run_typing(model_dir: Path, args) -> dict:
    extra = {"logit_bias": {"50256": -100}}  # no end-of-text: every answer has 32 tokens
    trace = typing_trace(STDLIB / FILES[0], args.requests)
    result: dict = {
        "dtype": args.dtype,
        "trace": {
            "file": f"Python {sys.version.split()[0]} standard library: {FILES[0]}",
            "requests": len(trace),
            "from_line": trace[0].line + 1,
            "line_changes": sum(k.slid for k in trace),
            "think_ms_between_requests": args.think_ms,
        },
        "rss_before_engines_mb": rss_mb(),
    }
    if args.context_only:  # #14's side by side: the default engine without and with repository context
        with Served(model_dir, args.dtype, prefix_cache_mb=args.prefix_cache_mb) as srv:
            result["default"] = one_typist(srv, trace, args, extra)
            result["default"].pop("texts")
        result["default+context"] = with_context(model_dir, trace, args, extra)
        result["goal"] = {name: result[name]["keystroke"]["p50_s"] for name in ("default", "default+context")}
        return result
    texts = {}
    for name, settings in CONFIGS.items():
        settings = {"prefix_cache_mb": args.prefix_cache_mb, **settings}
        with Served(model_dir, args.dtype, **settings) as srv:
            result[name] = one_typist(srv, trace, args, extra)
            texts[name] = result[name].pop("texts")
            if name == "default":
                warm = replay(srv.server.url, trace[-1:], 128, 0, extra)[0]
                result["default"]["tokens_128_warm_s"] = round(warm.seconds, 3)
                result["eight_typists"] = eight_typists(srv, args, extra)
                result["rss_with_cache_filled_mb"] = rss_mb()
        gc.collect()
    same = sum(a == b for a, b in zip(texts["default"], texts["plain"], strict=True))
    result["identical_completions_default_vs_plain"] = f"{same}/{len(trace)}"
    if args.context:
        result["default+context"] = with_context(model_dir, trace, args, extra)
    single = result["default"]["keystroke"]["p50_s"]
    result["goal"] = {
        "single_typist_p50_s": single,
        "single_typist_with_context_p50_s": result.get("default+context", {}).get("keystroke", {}).get("p50_s"),
        "eight_typists_p95_s": result["eight_typists"]["keystroke"]["p95_s"],
        "eight_typists_p95_over_single_p50": round(result["eight_typists"]["keystroke"]["p95_s"] / single, 2),
    }
    result["exactness"] = exactness(model_dir, trace[: args.exact_requests], args, extra)
    if args.pause_ms:
        result["line_change"] = line_change(model_dir, args, extra)
    if args.ctranslate2:
        result["ctranslate2"] = ctranslate2_side_by_side(model_dir, trace, args)
    if args.long:
        result["long_replay"] = long_replay(model_dir, args.dtype, args, extra)
    return result
