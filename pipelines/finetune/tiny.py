"""A tiny CodeGen-architecture model and a tokenizer trained on the data: the whole pipeline on a laptop CPU.

Used by ``--base-model tiny`` and by the tests, so nothing is ever downloaded. Like the real
CodeGen-350M (51200 embedding rows, 50295 tokenizer entries), the embedding has more rows than the
tokenizer has entries, rounded up to a multiple of 64.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer (GPT-2 style, like CodeGen's) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def tiny_codegen(
    vocab_rows: int, context: int = 256, n_embd: int = 64, n_layer: int = 2, n_head: int = 4, eos_id: int = 0
):
    """A randomly initialised CodeGen with ``vocab_rows`` embedding rows."""
    import torch
    from transformers import CodeGenConfig, CodeGenForCausalLM

    config = CodeGenConfig(
        vocab_size=vocab_rows,
        n_positions=context,
        n_ctx=context,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        rotary_dim=max(4, (n_embd // n_head) // 2),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return CodeGenForCausalLM(config)


def make_tiny_base(
    texts: Iterable[str], out_dir: Path, vocab_size: int = 2048, context: int = 256, n_embd: int = 64, n_layer: int = 2
) -> Path:
    """Train a tokenizer on ``texts``, make a tiny CodeGen for it, save both to ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.model_max_length = context
    rows = -(-len(tokenizer) // 64) * 64 + 64  # more rows than entries, as in the real CodeGen
    model = tiny_codegen(rows, context=context, n_embd=n_embd, n_layer=n_layer, eos_id=tokenizer.eos_token_id)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
