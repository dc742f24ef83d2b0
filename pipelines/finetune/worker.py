"""One training rank: HF Trainer (+ DeepSpeed, + LoRA) over the packed blocks of a prepared run folder.

Started by ``repopilot train`` through the deepspeed launcher (or as one plain process):
``python -m pipelines.finetune.worker RUN_DIR``. Everything it needs is in ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.finetune.args import TrainArgs
from pipelines.finetune.context_samples import pack_context
from pipelines.finetune.data import BlockDataset, pack, pack_public
from pipelines.finetune.layout import RunLayout, append_event, last_checkpoint

_stop_requested = False


def _on_sigterm(signum, frame) -> None:
    global _stop_requested
    _stop_requested = True


def training_data(args: TrainArgs, resolved: dict, tokenizer) -> tuple[BlockDataset, Any]:
    """The training blocks (the team's code, public code mixed in, blocks behind repository context) and the
    validation split, from the caches the parent process filled."""
    block, cache = resolved["block_size"], Path(resolved["cache_dir"])
    wanted = resolved.get("public_tokens", 0)
    public = pack_public(args.public_mix, tokenizer, block, cache, wanted)[0] if wanted else None
    train = pack(Path(args.dataset), "train", tokenizer, block, cache)[0]
    context = pack_context(Path(args.dataset), tokenizer, block, cache, resolved.get("context_samples", 0))[0]
    validation = pack(Path(args.dataset), "validation", tokenizer, block, cache)[0]
    return BlockDataset(train, public, args.public_share, args.seed, context), validation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--local_rank", type=int, default=None)
    ns, _ = parser.parse_known_args(argv)
    layout = RunLayout(ns.run_dir)
    ranks_lock = open(layout.ranks_lock, "w")  # noqa: SIM115 - held for the life of the rank
    fcntl.flock(ranks_lock, fcntl.LOCK_SH)
    saved = json.loads(layout.config.read_text())
    args, resolved = TrainArgs.from_json(saved["args"]), saved["resolved"]
    signal.signal(signal.SIGTERM, _on_sigterm)

    import torch
    from transformers import AutoTokenizer, Trainer

    tokenizer = AutoTokenizer.from_pretrained(resolved["model_path"])
    train_set, val_packed = training_data(args, resolved, tokenizer)
    trainer = Trainer(
        model=_model(args, resolved),
        args=_training_arguments(args, resolved, layout),
        train_dataset=train_set,
        eval_dataset=BlockDataset(val_packed) if val_packed.blocks else None,
        callbacks=[_progress_callback(layout, resolved["tokens_per_step"], torch)],
    )
    # A fresh run starts in an empty folder (checked up front), so a checkpoint here means: resume.
    resume = last_checkpoint(layout.checkpoints)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if _stop_requested or layout.stop_request.exists():
        return 0
    metrics = dict(result.metrics)
    if val_packed.blocks:
        metrics.update(trainer.evaluate())
    trainer.save_model(str(layout.trained))
    if trainer.is_world_process_zero():
        metrics["global_step"] = trainer.state.global_step
        (layout.trained / "train_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        append_event(layout.progress, "trained", step=trainer.state.global_step, **_floats(metrics))
    return 0


def _model(args: TrainArgs, resolved: dict[str, Any]) -> Any:
    """The base model, checked against the resolved settings, with LoRA adapters when asked for."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolved["model_path"], dtype=torch.float32)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != resolved["embedding_rows"]:
        raise SystemExit(f"embedding has {rows} rows, expected {resolved['embedding_rows']}")
    if not args.lora:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_targets),
    )
    return get_peft_model(model, config)


def _training_arguments(args: TrainArgs, resolved: dict[str, Any], layout: RunLayout) -> Any:
    from transformers import TrainingArguments

    precision = resolved["precision"]
    return TrainingArguments(
        output_dir=str(layout.checkpoints),
        per_device_train_batch_size=args.micro_batch_size,
        per_device_eval_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=resolved["learning_rate"],
        num_train_epochs=resolved["epochs"],
        max_steps=args.max_steps,
        warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        weight_decay=args.weight_decay,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        deepspeed=str(layout.ds_config) if resolved["deepspeed"] else None,
        use_cpu=not resolved["cuda"],
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_level="warning",
    )


def _progress_callback(layout: RunLayout, tokens_per_step: int, torch: Any) -> Any:
    """A Trainer callback that writes progress.jsonl (rank 0) and stops with a checkpoint when asked to."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.first_step: int | None = None

        def on_step_begin(self, targs, state, control, **kw):
            if self.first_step is None:  # the first step of this launch (after a resume: the checkpoint's)
                self.started, self.first_step = time.monotonic(), state.global_step
                if state.is_world_process_zero:
                    append_event(layout.progress, "start", step=state.global_step, max_steps=state.max_steps)

        def on_log(self, targs, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            done = state.global_step - (self.first_step or 0)
            elapsed = time.monotonic() - self.started
            per_step = elapsed / done if done else None
            event = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": round(state.epoch or 0, 4),
                "elapsed_s": round(elapsed, 2),
                "tokens_per_s": round(done * tokens_per_step / elapsed, 1) if done else None,
                "eta_s": round(per_step * (state.max_steps - state.global_step), 1) if per_step else None,
                "memory_mb": _memory_mb(torch),
            }
            for key in ("loss", "learning_rate", "grad_norm", "eval_loss", "train_runtime", "train_loss"):
                if key in logs:
                    event[key] = round(float(logs[key]), 6)
            kind = "eval" if "eval_loss" in logs else "summary" if "train_runtime" in logs else "log"
            append_event(layout.progress, kind, **event)

        def on_step_end(self, targs, state, control, **kw):
            if _stop_requested or layout.stop_request.exists():
                control.should_save = True
                control.should_training_stop = True
                if state.is_world_process_zero:
                    append_event(layout.progress, "stopping", step=state.global_step)

        def on_save(self, targs, state, control, **kw):
            if state.is_world_process_zero:
                append_event(layout.progress, "checkpoint", step=state.global_step)

    return Progress()


def _memory_mb(torch) -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:  # pragma: no cover - not on Linux
        return 0.0


def _floats(metrics: dict) -> dict:
    return {k: round(float(v), 6) for k, v in metrics.items() if isinstance(v, int | float)}


def _run_and_exit() -> None:
    """Runs the rank, then leaves without C++ teardown.

    Letting the interpreter unwind with a live gloo process group (and DeepSpeed's threads) aborts now and
    then with "terminate called without an active exception" (SIGABRT), which the launcher reports as a
    failed run although everything was saved. So: close the process group ourselves, flush, and _exit.
    """
    import traceback

    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:  # reported, then the rank fails
        traceback.print_exc()
        code = 1
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if code == 0:
                dist.barrier()
            dist.destroy_process_group()
    except Exception:  # best effort at exit
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _run_and_exit()
