"""Where a converted model's files go: the one place that names them (FauxPilot's layout).

Under a models root, a model ``NAME`` converted for ``N`` GPUs is ``NAME-Ngpu/`` (Triton's
``fastertransformer/config.pbtxt`` and ``fastertransformer/1/N-gpu/`` weights), and its Hugging Face export for
the embedded engine is ``NAME-hf/``.
"""

from __future__ import annotations

from pathlib import Path

TRITON_MODEL = "fastertransformer"


def ft_folder(models_root: Path, name: str, gpus: int) -> Path:
    return Path(models_root) / f"{name}-{gpus}gpu"


def hf_folder(models_root: Path, name: str) -> Path:
    return Path(models_root) / f"{name}-hf"


def weights_name(gpus: int) -> str:
    """The folder of the weights for ``gpus``-way tensor parallelism."""
    return f"{gpus}-gpu"


def weights_path(gpus: int) -> str:
    """The weights folder relative to a converted model folder (as ``model_checkpoint_path`` ends)."""
    return f"{TRITON_MODEL}/1/{weights_name(gpus)}"
