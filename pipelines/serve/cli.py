"""``repopilot serve MODEL_DIR [options]`` (also ``python -m pipelines.serve``): the completion API."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import sys
from pathlib import Path

from pipelines.cli_util import standalone_main
from pipelines.context.provider import ContextSettings
from pipelines.errors import InputError, RepopilotError
from pipelines.serve.app import DEFAULT_MAX_BODY, LOOPBACK_HOSTS, RepoContext, create_app
from pipelines.serve.embedded_engine import DEFAULT_PREFIX_CACHE_MB
from pipelines.serve.engine import Engine
from pipelines.serve.exposure import exposure_problem, is_loopback

API_KEY_ENV = "REPOPILOT_API_KEY"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve completions to the IDE (FauxPilot/OpenAI-compatible API)",
        description="Serve a model over FauxPilot's and OpenAI's completion API, in process (embedded) or "
        "through a Triton server running FauxPilot's fastertransformer model.",
    )
    p.add_argument("model_dir", type=Path, help="the model folder (RUN_DIR/model); for --engine triton, its tokenizer")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only); any other address needs an API key",
    )
    p.add_argument(
        "--insecure-no-key",
        action="store_true",
        help="listen beyond loopback without an API key: only where something else limits who can connect "
        "(the compose stack's API container, whose port Docker publishes on 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000, as FauxPilot)")
    p.add_argument("--engine", choices=("embedded", "triton"), default="embedded", help="default: embedded")
    p.add_argument("--triton-host", default="localhost", help="Triton's gRPC host (default localhost)")
    p.add_argument("--triton-port", type=int, default=8001, help="Triton's gRPC port (default 8001)")
    p.add_argument("--triton-model", default="fastertransformer", help="fastertransformer (default) or py-model")
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        help=f"require `Authorization: Bearer KEY`; other users see it in `ps`: prefer --api-key-file or {API_KEY_ENV}",
    )
    key.add_argument("--api-key-file", type=Path, help="read the API key from this file (first line)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="embedded engine: where to run")
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16", "int8"),
        default="auto",
        help="embedded engine: weights' type (auto: int8 dynamic quantization on a CPU, about 2x faster per token "
        "than bf16 and 4x less memory than float32; bf16 on a GPU that has it, else fp16)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="embedded engine: most sequences decoded together")
    p.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=DEFAULT_PREFIX_CACHE_MB,
        help="embedded engine: memory for the keys/values of recent prompts, so a keystroke's request prefills only "
        f"what changed (default {DEFAULT_PREFIX_CACHE_MB:g}; 0: off; CodeGen-350M needs about 0.16 MB a token)",
    )
    p.add_argument(
        "--speculation",
        choices=("on", "off"),
        default="on",
        help="embedded engine: a lone greedy request checks guessed tokens (text repeated from the prompt) "
        "several at a time; same output, fewer forward passes (default on)",
    )
    p.add_argument(
        "--window-lines",
        type=int,
        default=150,
        help="embedded engine: the IDE's sliding window (FauxPilot's maxLines, default 150); while idle, prefill "
        "what it will send once the cursor moves down a line (0: off)",
    )
    p.add_argument(
        "--max-body-kb",
        type=int,
        default=DEFAULT_MAX_BODY // 1024,
        help=f"refuse request bodies over this size (default {DEFAULT_MAX_BODY // 1024}; the IDE sends about 10)",
    )
    add_context_options(p)
    p.add_argument("--batch-window-ms", type=float, default=0.0, help="embedded engine: wait this long for more")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def add_context_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--context-dataset",
        type=Path,
        metavar="DIR",
        help="a dataset folder (`repopilot dataset build`): put definitions and similar code of its repositories "
        "before each prompt; re-read when the dataset changes (the agent passes its own)",
    )
    p.add_argument(
        "--context",
        choices=("on", "off"),
        default="on",
        help="with --context-dataset: add repository context unless a request says otherwise (its repo_context "
        "field); off: only for requests that ask (default on)",
    )
    p.add_argument(
        "--context-tokens",
        type=int,
        help=f"most tokens of repository context per prompt (default: {ContextSettings.max_tokens}, at most a quarter "
        "of the model's window); never more than the room the prompt and max_tokens leave",
    )


def read_api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise InputError(f"Cannot read the API key file {args.api_key_file}: {exc.strerror}.") from None
        if not key or not key[0].strip():
            raise InputError(f"The API key file {args.api_key_file} is empty. Put the key on its first line.")
        return key[0].strip()
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise InputError("The API key is empty. Give a non-empty --api-key or leave it out.")
    return key.strip() if key else None


def check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise InputError(f"--port {port} is not a port number (1-65535).")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"Cannot listen on {host}:{port} ({exc.strerror}). Another server may use that port: stop it or "
                "choose another with --port (and point the IDE's fauxpilot.server at it)."
            ) from None


def require_modules(engine: str, *modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"The {engine} engine needs {', '.join(missing)}, which this Python lacks. Install them "
            "(pip install 'repopilot[serve,train]')" + (" or use --engine triton." if engine == "embedded" else ".")
        )


def make_engine(args: argparse.Namespace) -> Engine:
    if args.max_batch < 1:
        raise InputError("--max-batch must be at least 1.")
    if args.max_body_kb < 1:
        raise InputError("--max-body-kb must be at least 1.")
    if args.prefix_cache_mb < 0 or args.window_lines < 0:
        raise InputError("--prefix-cache-mb and --window-lines must be 0 or more.")
    if args.engine == "triton":
        require_modules("triton", "transformers", "tritonclient")
    else:
        require_modules("embedded", "torch", "transformers")
    if args.engine == "triton":
        from pipelines.serve.triton import TritonEngine

        if not args.model_dir.is_dir():
            raise InputError(f"{args.model_dir} is not a folder. Give the model (or tokenizer) folder.")
        return TritonEngine(args.model_dir, args.triton_host, args.triton_port, args.triton_model)
    from pipelines.serve.embedded_engine import EmbeddedEngine, check_model_dir, resolve_device

    check_model_dir(args.model_dir)
    resolve_device(args.device)
    engine = EmbeddedEngine(
        args.model_dir,
        args.device,
        args.max_batch,
        args.batch_window_ms / 1000,
        args.dtype,
        prefix_cache_mb=args.prefix_cache_mb,
        speculation=args.speculation == "on",
        window_lines=args.window_lines,
    )
    print(f"Loading {args.model_dir} ...", file=sys.stderr, flush=True)
    engine.load()
    if engine.failure:
        raise RepopilotError(engine.failure, title="Model not loaded")
    return engine


def make_context(args: argparse.Namespace, engine: Engine) -> RepoContext | None:
    """The repository context of ``--context-dataset`` (None without one); its index builds in the background."""
    if args.context_dataset is None:
        return None
    if args.context_tokens is not None and args.context_tokens < 1:
        raise InputError("--context-tokens must be at least 1 (or leave out --context-dataset).")
    from pipelines.context.provider import ContextProvider
    from pipelines.context.source import DatasetIndex
    from pipelines.dataset.folder import read_manifest

    read_manifest(args.context_dataset)  # a clear error now for a folder that holds no dataset
    index = DatasetIndex(args.context_dataset)
    index.refresh()
    settings = ContextSettings() if args.context_tokens is None else ContextSettings(args.context_tokens, max_share=1.0)
    provider = ContextProvider(index, engine.count_tokens, engine.context_length, settings)
    return RepoContext(provider, default_on=args.context == "on", describe=index.stats)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    api_key = read_api_key(args)
    refusal = None if args.insecure_no_key else exposure_problem(args.host, api_key)
    if refusal:
        raise InputError(refusal, title="Exposed without an API key")
    check_port_free(args.host, args.port)
    if args.context_dataset is not None and not args.context_dataset.is_dir():
        raise InputError(f"--context-dataset {args.context_dataset} is not a folder. Give a dataset folder.")
    engine = make_engine(args)
    context = make_context(args, engine)
    local = is_loopback(args.host)
    embedded = engine.kind == "embedded"
    app = create_app(
        engine,
        api_key=api_key,
        allowed_hosts=(*LOOPBACK_HOSTS, args.host) if local else None,
        manage_engine=not embedded,  # the embedded model is already loaded
        max_body_bytes=args.max_body_kb * 1024,
        context=context,
    )
    url = f"http://{'localhost' if local else args.host}:{args.port}/v1"
    print(f"Serving {engine.model_id} ({engine.kind}) at {url} — VS Code: fauxpilot.server = {url}", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        if embedded:
            asyncio.run(engine.close())
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main("serve", "serve", add_parser, run, argv)
