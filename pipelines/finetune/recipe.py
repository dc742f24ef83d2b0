"""The fine-tuning defaults: how fast and how long to train when the user does not say.

What they rest on is measured by ``bench/learning.py`` (a public base fine-tuned on a repository's older
history, evaluated on its newer files and on held-out public code) and tabled in the README:

- **Learning rate** by model size: small models take (and need) larger steps. ``5e-5`` for a CodeGen-350M
  full fine-tune (the recipe's value), scaled by ``sqrt(350M / parameters)`` and kept within
  ``[1e-5, 1e-3]``; LoRA trains few weights and takes four times that (``2e-4`` at 350M).
- **Epochs** by dataset size: a repository's names stick only after the model has seen them several times,
  so a small dataset is passed over until about ``TARGET_TOKENS`` training tokens were seen, at most
  ``MAX_EPOCHS`` times (more mostly memorises and forgets public code); a large one once.
"""

from __future__ import annotations

import math
from typing import Any

REFERENCE_PARAMETERS = 350e6
REFERENCE_LR = 5e-5
LORA_FACTOR = 4.0
LR_RANGE = (1e-5, 1e-3)
TARGET_TOKENS = 1_000_000
MAX_EPOCHS = 4.0


def parameters_of(config: Any) -> int | None:
    """Parameters of a GPT-style config (CodeGen, GPT-J, GPT-2): 12 d² per layer plus both embeddings."""
    width = getattr(config, "n_embd", None) or getattr(config, "hidden_size", None)
    layers = getattr(config, "n_layer", None) or getattr(config, "num_hidden_layers", None)
    vocab = getattr(config, "vocab_size", None)
    if not (width and layers and vocab):
        return None
    return int(12 * layers * width * width + 2 * vocab * width)


def learning_rate(parameters: int | None, lora: bool) -> float:
    """The default peak learning rate for a model of ``parameters`` (the 350M value when unknown)."""
    scale = math.sqrt(REFERENCE_PARAMETERS / parameters) if parameters else 1.0
    low, high = LR_RANGE
    rate = min(high, max(low, REFERENCE_LR * scale))
    return min(high * LORA_FACTOR, rate * LORA_FACTOR) if lora else rate


def epochs(train_tokens: int) -> float:
    """The default number of passes over ``train_tokens`` tokens (see the module docstring)."""
    if train_tokens <= 0:
        return 1.0
    return round(min(MAX_EPOCHS, max(1.0, TARGET_TOKENS / train_tokens)), 2)
