"""The DeepSpeed config a run trains with, and the launcher command and environment."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from pipelines.finetune.args import TrainArgs


def resolve_precision(requested: str, cuda: bool, bf16_supported: bool) -> str:
    """fp32 / bf16 / fp16 for this device: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    if requested != "auto":
        return requested
    if not cuda:
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def deepspeed_config(args: TrainArgs, precision: str, cuda: bool) -> dict[str, Any]:
    """A ZeRO config with HF Trainer's "auto" fields, so batch sizes and lr come from one place."""
    offload = args.offload_optimizer if args.offload_optimizer is not None else cuda
    zero: dict[str, Any] = {
        "stage": args.zero_stage,
        "overlap_comm": cuda,
        "contiguous_gradients": True,
    }
    if args.zero_stage in (1, 2):
        zero.update(
            allgather_partitions=True,
            allgather_bucket_size=args.bucket_size,
            reduce_scatter=True,
            reduce_bucket_size=args.bucket_size,
        )
    if args.zero_stage == 3:
        zero.update(
            reduce_bucket_size="auto",
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload and args.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(args: TrainArgs, run_dir: Path, use_deepspeed: bool, cuda: bool) -> list[str]:
    """The command that starts every rank of the worker."""
    worker = ["pipelines.finetune.worker", str(run_dir)]
    if not use_deepspeed:
        return [sys.executable, "-m", *worker]
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    cmd = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    if args.hostfile:
        cmd += ["--hostfile", args.hostfile]
    if args.include:
        cmd += ["--include", args.include]
    else:
        cmd += ["--num_gpus", str(args.num_gpus or 1)]
    cmd += ["--master_port", str(args.master_port or free_port())]
    return [*cmd, "--module", *worker]


def launch_env(args: TrainArgs, cuda: bool) -> dict[str, str]:
    env = dict(os.environ)
    if args.nccl_debug:
        env["NCCL_DEBUG"] = args.nccl_debug
    if args.nccl_shm_disable:
        env["NCCL_SHM_DISABLE"] = "1"
    # Compiled DeepSpeed ops (CPU Adam, ~2 min to build) are cached across runs.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    if not cuda:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, args.num_gpus or 1))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    return env
