"""Training arguments: one dataclass, one docstring per field, every problem reported at once."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.dataset.folder import is_dataset
from pipelines.errors import InputError

DEFAULT_BASE_MODEL = "Salesforce/codegen-350M-multi"
TINY = "tiny"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAUNCHERS = ("auto", "deepspeed", "none")
CODEGEN_LORA_TARGETS = ("qkv_proj", "out_proj", "fc_in", "fc_out")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class TrainArgs:
    """Everything a fine-tuning run needs; written to ``RUN_DIR/config.json`` as it ran."""

    dataset: str
    """Dataset folder made by ``repopilot dataset build``."""
    output: str
    """Run folder: config, progress, checkpoints, and the final model in ``model/``."""
    base_model: str = DEFAULT_BASE_MODEL
    """Local HF model folder, a hub name (needs network), or ``tiny`` (made here, tokenizer trained on the data)."""
    block_size: int | None = None
    """Tokens per training block; default: the model's context (2048 for CodeGen)."""
    epochs: float | None = None
    """Passes over the training blocks; default: until about a million tokens were seen, 1 to 4 passes
    (ignored when max_steps > 0; see pipelines/finetune/recipe.py)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    micro_batch_size: int = 1
    """Blocks per device per forward pass."""
    grad_accum: int = 8
    """Micro batches per optimizer step."""
    public_mix: str = "stdlib"
    """Public code mixed into training against forgetting ordinary code: ``stdlib`` (the Python standard
    library of the interpreter that trains: on every machine), a repopilot dataset folder, a folder of source
    files, or ``none``."""
    public_share: float = 0.25
    """The share of the training blocks taken from ``public_mix``."""
    context_share: float = 0.0
    """Training blocks with repository context, as the completion server puts it before a prompt (a random
    place of a training file, the block the provider chooses for the text before it, never from that file): this
    many per block of the team's code, added, so the model learns to use the block (default 0: on the learning
    benchmark it gained nothing measurable and, with more steps, forgot more public code)."""
    learning_rate: float | None = None
    """Peak learning rate; default by model size: 5e-5 at 350M parameters (x4 with LoRA), more for smaller ones."""
    warmup_ratio: float = 0.03
    """Share of steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 42
    """Seed for data order and initialisation."""
    precision: str = "auto"
    """auto (bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16."""
    launcher: str = "auto"
    """deepspeed (the real launcher), none (one plain process), auto (deepspeed when installed)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0, 1, 2 or 3."""
    offload_optimizer: bool | None = None
    """Keep optimizer states in CPU memory (the recipe for small GPUs); default: on with a GPU, off on CPU."""
    bucket_size: int = 200_000_000
    """ZeRO all-gather and reduce bucket size (elements)."""
    num_gpus: int | None = None
    """Local devices (ranks) to use; on a CPU-only machine, CPU ranks over gloo."""
    include: str | None = None
    """Which devices, in the launcher's syntax, e.g. ``localhost:1,2``."""
    hostfile: str | None = None
    """DeepSpeed hostfile for multi-node runs (``host slots=N`` per line)."""
    master_port: int | None = None
    """Rendezvous port (default: a free one)."""
    nccl_debug: str | None = None
    """Set NCCL_DEBUG (e.g. INFO) for every rank."""
    nccl_shm_disable: bool = False
    """Set NCCL_SHM_DISABLE=1 (the recipe's workaround for shared-memory errors)."""
    lora: bool = False
    """Train LoRA adapters instead of all weights; the result is merged into a full model."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_targets: list[str] = field(default_factory=lambda: list(CODEGEN_LORA_TARGETS))
    """Module names that get adapters."""
    save_steps: int = 200
    """Checkpoint every this many steps (and on SIGTERM)."""
    save_total_limit: int = 2
    """Checkpoints kept."""
    logging_steps: int = 10
    """Progress line every this many steps."""
    resume: bool = False
    """Continue the run in ``output`` from its last checkpoint."""
    tokenizer_workers: int = 0
    """Threads for tokenization (0: all cores)."""
    cache_dir: str | None = None
    """Token cache; default ``DATASET/cache/tokens`` (keyed by dataset version, tokenizer and block size)."""
    tiny_vocab: int = 2048
    """With --base-model tiny: tokenizer vocabulary size."""
    tiny_context: int = 256
    """With --base-model tiny: context length."""
    tiny_width: int = 64
    """With --base-model tiny: hidden size."""
    tiny_layers: int = 2
    """With --base-model tiny: layers."""
    smoke_tokens: int = 48
    """Tokens generated by the smoke test after training."""

    def problems(self) -> list[str]:
        found: list[str] = []
        if not is_dataset(Path(self.dataset)):
            found.append(f"dataset {self.dataset} has no manifest.json (build it with `repopilot dataset build`)")
        base = self.base_model
        if base != TINY and not Path(base).expanduser().exists() and not _HUB_NAME.match(base):
            found.append(f"base model {base!r} is neither a folder, a hub name (org/name) nor 'tiny'")
        if base != TINY and Path(base).expanduser().is_dir() and not (Path(base) / "config.json").exists():
            found.append(f"base model folder {base} has no config.json")
        out = Path(self.output)
        if out.exists() and any(out.iterdir()) and not self.resume:
            found.append(f"output {out} is not empty: pass --resume to continue that run, or choose a new folder")
        if self.resume and not out.exists():
            found.append(f"--resume given but {out} does not exist")
        if self.block_size is not None and self.block_size < 8:
            found.append("block_size must be at least 8")
        if self.epochs is not None and self.epochs <= 0 and self.max_steps <= 0:
            found.append("give epochs > 0 or max_steps > 0")
        for name in ("micro_batch_size", "grad_accum", "save_steps", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                found.append(f"{name} must be at least 1")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            found.append("learning_rate must be in (0, 1)")
        if not 0 <= self.public_share < 1:
            found.append("public_share must be in [0, 1)")
        if not 0 <= self.context_share <= 1:
            found.append("context_share must be in [0, 1]")
        if self.public_mix not in ("stdlib", "none") and not Path(self.public_mix).expanduser().is_dir():
            found.append(f"public_mix {self.public_mix} is no folder: give stdlib, none, a dataset or a folder of code")
        if not 0 <= self.warmup_ratio < 1:
            found.append("warmup_ratio must be in [0, 1)")
        if self.precision not in PRECISIONS:
            found.append(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.launcher not in LAUNCHERS:
            found.append(f"launcher must be one of {', '.join(LAUNCHERS)}")
        if self.zero_stage not in (0, 1, 2, 3):
            found.append("zero_stage must be 0, 1, 2 or 3")
        if self.num_gpus is not None and self.num_gpus < 1:
            found.append("num_gpus must be at least 1")
        if self.num_gpus is not None and self.include:
            found.append("give either --num-gpus or --include, not both")
        if self.include and not re.match(r"^[\w.-]+:\d+(,\d+)*(@[\w.-]+:\d+(,\d+)*)*$", self.include):
            found.append(f"--include {self.include!r} must look like localhost:0,1")
        if self.hostfile and not Path(self.hostfile).exists():
            found.append(f"hostfile {self.hostfile} does not exist")
        if self.launcher == "none" and (self.num_gpus or 1) > 1:
            found.append("more than one rank needs --launcher deepspeed")
        if self.lora and self.zero_stage == 3:
            found.append("LoRA with ZeRO-3 is not supported: use --zero-stage 2")
        if self.lora and (self.lora_r < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1):
            found.append("lora_r and lora_alpha must be >= 1 and lora_dropout in [0, 1)")
        if self.tiny_vocab < 300 or self.tiny_context < 16 or self.tiny_width % 4 or self.tiny_layers < 1:
            found.append("tiny model: vocab >= 300, context >= 16, width a multiple of 4, layers >= 1")
        return found

    def validate(self) -> None:
        found = self.problems()
        if found:
            raise InputError("; ".join(found) + ".", title="Invalid training arguments")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainArgs:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: Path) -> TrainArgs:
        return cls.from_json(json.loads(Path(path).read_text()))


def field_help() -> dict[str, str]:
    """Field name -> its docstring (for the CLI's --help)."""
    import ast
    import inspect

    source = inspect.getsource(TrainArgs)
    tree = ast.parse(source)
    helps: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            helps[node.target.id] = str(nxt.value.value)
    return helps
