"""``repopilot train``: prepare a run folder, launch the ranks, follow their progress, finish the model.

setup() resolves the base model, block size, precision and launcher and writes the run's config;
launch() runs the ranks (through the deepspeed launcher or as one process) and renders progress;
finish() merges LoRA, checks the embedding kept its rows, saves ``model/`` atomically and smoke-tests it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from pipelines.dataset.folder import read_manifest
from pipelines.errors import InputError, RepopilotError
from pipelines.finetune import recipe
from pipelines.finetune.args import TINY, TrainArgs
from pipelines.finetune.context_samples import pack_context
from pipelines.finetune.data import iter_records, pack, pack_public
from pipelines.finetune.dsconfig import deepspeed_config, launch_command, launch_env, resolve_precision
from pipelines.finetune.layout import RunLayout, append_event, read_events
from pipelines.fsutil import write_json_atomic


class TrainingError(RepopilotError):
    title = "Training failed"


def train(args: TrainArgs, stream: TextIO | None = None) -> dict[str, Any]:
    """Run (or resume) a fine-tuning run end to end; returns the content of ``result.json``."""
    stream = stream or sys.stderr
    layout = RunLayout(Path(args.output))
    if args.resume and layout.config.exists():
        saved = json.loads(layout.config.read_text())
        args = TrainArgs.from_json({**saved["args"], "resume": True})
    args.validate()
    layout.root.mkdir(parents=True, exist_ok=True)
    with _locked(layout):
        if layout.result.exists() and args.resume:
            return json.loads(layout.result.read_text())
        resolved = setup(args, layout, stream)
        status = launch(args, resolved, layout, stream)
        if status == "stopped":
            return {"status": "stopped", "run_dir": str(layout.root)}
        return finish(args, resolved, layout, stream)


@contextlib.contextmanager
def _locked(layout: RunLayout) -> Iterator[None]:
    with open(layout.root / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"Another training run is using {layout.root}.") from None
        yield


def _public_blocks(args: TrainArgs, tokenizer, block: int, cache_dir: Path, facts: dict, stream) -> int:
    """Pack (and cache, for the worker) the public code mixed in; how many tokens of it the worker should take."""
    public_tokens = round(args.public_share / (1 - args.public_share) * facts["train"]["tokens"])
    if public_tokens:
        mixed, facts["public"] = pack_public(args.public_mix, tokenizer, block, cache_dir, public_tokens)
        if mixed is not None:
            print(f"public code mixed in: {mixed.files} files, {args.public_share:.0%} of the blocks", file=stream)
    return public_tokens


def _context_blocks(args: TrainArgs, dataset: Path, tokenizer, block: int, cache_dir: Path, facts: dict, stream) -> int:
    """Build (and cache, for the worker) the blocks behind repository context; how many the worker should take."""
    wanted = round(args.context_share * -(-facts["train"]["tokens"] // block))
    samples, facts["context"] = pack_context(dataset, tokenizer, block, cache_dir, wanted)
    if samples is None:
        return 0
    print(f"repository context: {samples.count} blocks behind the block the server would add", file=stream)
    return wanted


def setup(args: TrainArgs, layout: RunLayout, stream: TextIO) -> dict[str, Any]:
    """Resolve everything once and write config.json (reused as is on --resume)."""
    if args.resume and layout.config.exists():
        layout.stop_request.unlink(missing_ok=True)
        return json.loads(layout.config.read_text())["resolved"]
    import torch
    from transformers import AutoConfig, AutoTokenizer

    dataset = Path(args.dataset)
    if args.base_model == TINY:
        print("making a tiny CodeGen base model and a tokenizer trained on the dataset", file=stream)
        from pipelines.finetune.tiny import make_tiny_base

        texts = _sample_texts(dataset, limit_bytes=32_000_000)
        model_path = str(
            make_tiny_base(texts, layout.base, args.tiny_vocab, args.tiny_context, args.tiny_width, args.tiny_layers)
        )
    else:
        model_path = str(Path(args.base_model).expanduser()) if Path(args.base_model).exists() else args.base_model
    try:
        config = AutoConfig.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"Cannot load base model {args.base_model!r} ({str(exc).splitlines()[0]}). Give a local model folder, "
            "a hub name on a machine with network, or --base-model tiny."
        ) from None
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048
    block = args.block_size or context
    if block > context:
        raise InputError(f"--block-size {block} exceeds the model's context of {context} tokens.")
    rows = int(config.vocab_size)  # the worker checks the weights have exactly these rows
    cuda = torch.cuda.is_available()
    precision = resolve_precision(args.precision, cuda, cuda and torch.cuda.is_bf16_supported())
    if precision == "fp16" and not cuda:
        raise InputError("fp16 does not train on a CPU. Use --precision bf16 or fp32.")
    use_deepspeed = args.launcher == "deepspeed" or (args.launcher == "auto" and _has_deepspeed())
    if args.launcher == "deepspeed" and not _has_deepspeed():
        raise InputError("--launcher deepspeed needs DeepSpeed: pip install 'repopilot[train]'.")
    cache_dir = str(Path(args.cache_dir) if args.cache_dir else dataset / "cache" / "tokens")
    facts = {}
    for split in ("train", "validation"):
        packed, facts[split] = pack(dataset, split, tokenizer, block, Path(cache_dir), args.tokenizer_workers)
        state = "cached" if facts[split]["cached"] else f"{facts[split]['mb_per_s']} MB/s"
        print(
            f"{split}: {packed.files} files, {len(packed.tokens)} tokens, {packed.blocks} blocks ({state})", file=stream
        )
    if not facts["train"]["tokens"]:
        raise InputError(f"The dataset {dataset} has no training records. Add repositories with code in them.")
    public_tokens = _public_blocks(args, tokenizer, block, Path(cache_dir), facts, stream)
    context_samples = _context_blocks(args, dataset, tokenizer, block, Path(cache_dir), facts, stream)
    world = _world_size(args) if use_deepspeed else 1
    parameters = recipe.parameters_of(config)
    resolved = {
        "parameters": parameters,
        "public_tokens": public_tokens,
        "context_samples": context_samples,
        "learning_rate": args.learning_rate or recipe.learning_rate(parameters, args.lora),
        "epochs": args.epochs if args.epochs is not None else recipe.epochs(facts["train"]["tokens"]),
        "model_path": model_path,
        "block_size": block,
        "context": context,
        "embedding_rows": rows,
        "tokenizer_entries": len(tokenizer),
        "precision": precision,
        "cuda": cuda,
        "deepspeed": use_deepspeed,
        "world_size": world,
        "cache_dir": cache_dir,
        "tokens_per_step": args.micro_batch_size * args.grad_accum * world * block,
        "dataset_version": read_manifest(dataset)["dataset_version"],
        "tokenization": facts,
    }
    if use_deepspeed:
        write_json_atomic(layout.ds_config, deepspeed_config(args, precision, cuda))
    write_json_atomic(layout.config, {"args": args.to_json(), "resolved": resolved})
    return resolved


def launch(args: TrainArgs, resolved: dict[str, Any], layout: RunLayout, stream: TextIO) -> str:
    """Run the ranks to the end; "done", or "stopped" when asked to stop (resumable)."""
    layout.logs.mkdir(exist_ok=True)
    _no_live_ranks(layout)
    cmd = launch_command(args, layout.root, resolved["deepspeed"], resolved["cuda"])
    log_path = layout.logs / f"train-{int(time.time())}.log"
    append_event(layout.progress, "launch", command=cmd, resume=args.resume)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=launch_env(args, resolved["cuda"]), start_new_session=True
        )
        append_event(layout.progress, "launched", pid=proc.pid)
        previous = _forward_stop_signals(layout)
        try:
            code = _follow(proc, layout, stream)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if layout.stop_request.exists():
        print(f"stopped at a checkpoint; continue with: repopilot train --resume --output {layout.root}", file=stream)
        return "stopped"
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise TrainingError(
            f"the training ranks exited with code {code}. Last lines of {log_path}:\n" + "\n".join(tail)
        )
    return "done"


def _no_live_ranks(layout: RunLayout) -> None:
    with open(layout.ranks_lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"Ranks of an earlier launch still run in {layout.root} (see `pgrep -f {layout.root}`). "
                "Stop them, then resume."
            ) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


def _forward_stop_signals(layout: RunLayout) -> dict:
    """SIGTERM/SIGINT: ask the ranks to checkpoint and stop, then wait for them."""

    def request_stop(signum, frame) -> None:
        layout.stop_request.touch()

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread
            previous[sig] = signal.signal(sig, request_stop)
    return previous


def _follow(proc: subprocess.Popen, layout: RunLayout, stream: TextIO) -> int:
    seen = len(read_events(layout.progress))
    tty = stream.isatty()
    while True:
        code = proc.poll()
        events = read_events(layout.progress)
        for event in events[seen:]:
            line = _render(event)
            if line:
                stream.write(("\r" + line.ljust(100)) if tty and event["event"] == "log" else line + "\n")
                stream.flush()
        seen = len(events)
        if code is not None:
            if tty:
                stream.write("\n")
            return code
        time.sleep(0.5)


def _render(event: dict) -> str | None:
    kind = event["event"]
    if kind == "log":
        step, total = event.get("step", 0), event.get("max_steps") or 1
        filled = int(30 * step / total)
        eta = f", ETA {event['eta_s']:.0f}s" if event.get("eta_s") is not None else ""
        speed = f", {event['tokens_per_s']:.0f} tok/s" if event.get("tokens_per_s") else ""
        loss = f" loss {event['loss']:.4f}" if "loss" in event else ""
        return f"training [{'#' * filled}{'.' * (30 - filled)}] {step}/{total}{loss}{speed}{eta}"
    if kind == "start":
        return f"training: step {event['step']} of {event['max_steps']}"
    if kind == "checkpoint":
        return f"checkpoint at step {event['step']}"
    if kind == "eval":
        return f"validation loss {event.get('eval_loss')}"
    return None


def finish(args: TrainArgs, resolved: dict[str, Any], layout: RunLayout, stream: TextIO) -> dict[str, Any]:
    """Full model in ``model/`` (LoRA merged), rows checked, smoke generation, result.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not layout.trained.exists():
        raise TrainingError(f"The ranks finished without saving a model in {layout.trained}. See {layout.logs}.")
    tokenizer = AutoTokenizer.from_pretrained(resolved["model_path"])
    if args.lora:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolved["model_path"], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(layout.trained)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(layout.trained), dtype=torch.float32)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != resolved["embedding_rows"] or model.config.vocab_size != rows:
        raise TrainingError(
            f"the trained model has {rows} embedding rows (config {model.config.vocab_size}), the base had "
            f"{resolved['embedding_rows']}: refusing to save a model FasterTransformer would garble."
        )
    tmp = layout.model.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(layout.model, ignore_errors=True)
    tmp.rename(layout.model)
    smoke = smoke_generation(model, tokenizer, Path(args.dataset), args.smoke_tokens)
    write_json_atomic(layout.smoke, smoke)
    metrics = json.loads((layout.trained / "train_metrics.json").read_text())
    result = {
        "status": "done",
        "run_dir": str(layout.root),
        "model": str(layout.model),
        "base_model": resolved["model_path"],
        "lora": args.lora,
        "steps": metrics.get("global_step"),
        "train_loss": metrics.get("train_loss"),
        "eval_loss": metrics.get("eval_loss"),
        "embedding_rows": rows,
        "tokenizer_entries": resolved["tokenizer_entries"],
        "dataset_version": resolved["dataset_version"],
    }
    write_json_atomic(layout.result, result)
    append_event(layout.progress, "done", model=str(layout.model))
    print(f"model saved to {layout.model}; smoke completion in {layout.smoke}", file=stream)
    return result


def smoke_generation(model, tokenizer, dataset: Path, max_new_tokens: int) -> dict[str, Any]:
    """The recipe's manual check, automated: complete the start of a file from the data."""
    import torch

    record = next(iter_records(dataset, "validation"), None) or next(iter_records(dataset, "train"))
    lines = record["text"].splitlines(keepends=True)
    prompt = "".join(lines[: max(1, min(8, len(lines) // 2))])[:400]
    inputs = tokenizer(prompt, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    completion = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {"path": record["path"], "repo": record["repo"], "prompt": prompt, "completion": completion}


def _sample_texts(dataset: Path, limit_bytes: int) -> Iterator[str]:
    """Training texts for the tiny tokenizer, up to ``limit_bytes`` (BPE needs a sample, not everything)."""
    seen = 0
    for record in iter_records(dataset, "train"):
        yield record["text"]
        seen += len(record["text"])
        if seen >= limit_bytes:
            return


def _has_deepspeed() -> bool:
    # Not imported here: DeepSpeed prints to stdout on import, and only the ranks need it.
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def _world_size(args: TrainArgs) -> int:
    if args.include:
        return sum(len(part.split(":")[1].split(",")) for part in args.include.split("@"))
    if args.hostfile:
        slots = 0
        for line in Path(args.hostfile).read_text().splitlines():
            if "slots=" in line and not line.strip().startswith("#"):
                slots += int(line.split("slots=")[1].split()[0])
        return max(slots, 1)
    return args.num_gpus or 1
