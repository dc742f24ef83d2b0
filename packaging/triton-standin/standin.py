"""A CPU STAND-IN for FauxPilot's Triton + FasterTransformer server (named as such wherever it is used).

FasterTransformer needs an NVIDIA GPU. This serves the same Triton model interface (model
``fastertransformer``, CONTRACTS §B: uint32 ``input_ids``, ``input_lengths``, ``request_output_len``,
sampling knobs, ``stop_words_list``...; outputs ``output_ids`` with the prompt, ``sequence_length``) from a
real tritonserver (nvidia-pytriton's, CPU, Python backend), computing with repopilot's NumPy reference
forward pass over the converted FasterTransformer files. It reads the same model repository layout
(``<repo>/fastertransformer/config.pbtxt`` and the checkpoint folder it names), so it tests the conversion,
the Triton engine and the compose stack end to end everywhere.

    python standin.py --model-repository DIR [--grpc-port 8001] [--http-port 8000] [--metrics-port 8002]

Installed in the stand-in image as /opt/tritonserver/bin/tritonserver, so the compose file is the same.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if (ROOT / "pipelines").is_dir():
    sys.path.insert(0, str(ROOT))

from pipelines.convert.ftmodel import FTModel  # noqa: E402


def checkpoint_dir(repository: Path) -> Path:
    """The FT folder named by config.pbtxt, rebased when it names the container mount point."""
    config = (repository / "fastertransformer" / "config.pbtxt").read_text()
    match = re.search(r'key:\s*"model_checkpoint_path"\s*value:\s*\{\s*string_value:\s*"([^"]+)"', config)
    if not match:
        raise SystemExit(f"{repository}/fastertransformer/config.pbtxt names no model_checkpoint_path")
    path = Path(match.group(1))
    if path.exists():
        return path
    parts = path.parts
    if "fastertransformer" in parts:  # /model/fastertransformer/1/N-gpu -> <repository>/fastertransformer/1/N-gpu
        return repository.joinpath(*parts[parts.index("fastertransformer") :])
    raise SystemExit(f"checkpoint folder {path} not found")


def _scalar(batch: dict, name: str, index: int, default):
    value = batch.get(name)
    if value is None:
        return default
    return np.asarray(value[index]).reshape(-1)[0].item()


def _stop_words(batch: dict, index: int) -> list[list[int]]:
    """Decode one row of stop_words_list [2, L]: ids padded with 0, then end offsets padded with -1."""
    value = batch.get("stop_words_list")
    if value is None:
        return []
    ids, offsets = np.asarray(value[index]).reshape(2, -1)
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        words.append([int(t) for t in ids[start:end]])
        start = int(end)
    return [w for w in words if w]


def tensors(Tensor, ids) -> tuple[list, list]:
    """The model interface of CONTRACTS §B, with token ids of type ``ids``."""
    i32, f32 = np.int32, np.float32
    scalar = (1,)
    inputs = [
        Tensor(name="input_ids", dtype=ids, shape=(-1,)),
        Tensor(name="input_lengths", dtype=ids, shape=scalar),
        Tensor(name="request_output_len", dtype=ids, shape=(-1,)),
        Tensor(name="runtime_top_k", dtype=ids, shape=scalar, optional=True),
        Tensor(name="runtime_top_p", dtype=f32, shape=scalar, optional=True),
        Tensor(name="beam_search_diversity_rate", dtype=f32, shape=scalar, optional=True),
        Tensor(name="temperature", dtype=f32, shape=scalar, optional=True),
        Tensor(name="len_penalty", dtype=f32, shape=scalar, optional=True),
        Tensor(name="repetition_penalty", dtype=f32, shape=scalar, optional=True),
        Tensor(name="random_seed", dtype=i32, shape=scalar, optional=True),
        Tensor(name="is_return_log_probs", dtype=np.bool_, shape=scalar, optional=True),
        Tensor(name="beam_width", dtype=ids, shape=scalar, optional=True),
        Tensor(name="start_id", dtype=ids, shape=scalar, optional=True),
        Tensor(name="end_id", dtype=ids, shape=scalar, optional=True),
        Tensor(name="bad_words_list", dtype=i32, shape=(2, -1), optional=True),
        Tensor(name="stop_words_list", dtype=i32, shape=(2, -1), optional=True),
    ]
    outputs = [
        Tensor(name="output_ids", dtype=ids, shape=(-1, -1)),
        Tensor(name="sequence_length", dtype=ids, shape=(-1,)),
        Tensor(name="cum_log_probs", dtype=f32, shape=(-1,)),
        Tensor(name="output_log_probs", dtype=f32, shape=(-1, -1)),
    ]
    return inputs, outputs


def make_infer(model: FTModel, default_end: int, ids_type=np.uint32):
    def infer(**batch):
        input_ids = np.asarray(batch["input_ids"])
        lengths = np.asarray(batch["input_lengths"]).reshape(-1)
        out_len = np.asarray(batch["request_output_len"]).reshape(len(input_ids), -1)[:, 0]
        rows, seq_lens = [], []
        for i in range(len(input_ids)):
            prompt = input_ids[i, : int(lengths[i])].astype(np.int64).tolist()
            top_k = int(_scalar(batch, "runtime_top_k", i, 0))
            top_p = float(_scalar(batch, "runtime_top_p", i, 0.0))
            if top_k == 0 and top_p == 0.0:
                top_k = 1  # as FT: neither cut asked for means greedy
            generated = model.generate(
                prompt,
                max_new_tokens=int(out_len[i]),
                temperature=float(_scalar(batch, "temperature", i, 1.0)),
                top_k=top_k,
                top_p=top_p if 0.0 < top_p <= 1.0 else 1.0,
                repetition_penalty=float(_scalar(batch, "repetition_penalty", i, 1.0)),
                seed=int(_scalar(batch, "random_seed", i, 0)),
                end_id=int(_scalar(batch, "end_id", i, default_end)),
                stop_words=_stop_words(batch, i),
            ).tokens
            rows.append(prompt + list(generated))
            seq_lens.append(len(rows[-1]))
        width = max(seq_lens)
        output = np.zeros((len(rows), 1, width), dtype=ids_type)
        for i, row in enumerate(rows):
            output[i, 0, : len(row)] = row
        return {
            "output_ids": output,
            "sequence_length": np.asarray(seq_lens, dtype=ids_type).reshape(-1, 1),
            "cum_log_probs": np.zeros((len(rows), 1), dtype=np.float32),
            "output_log_probs": np.zeros((len(rows), 1, 1), dtype=np.float32),
        }

    return infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU stand-in for Triton + FasterTransformer (repopilot)")
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--grpc-address", default=None, help="as tritonserver's (default: every interface)")
    parser.add_argument("--http-address", default=None, help="as tritonserver's (default: every interface)")
    parser.add_argument("--allow-metrics", default="true", choices=("true", "false"), help="as tritonserver's")
    args, _unknown = parser.parse_known_args(argv)

    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    logging.basicConfig(level=logging.INFO, format="standin: %(message)s")
    folder = checkpoint_dir(args.model_repository)
    model = FTModel.load(folder)
    logging.info("serving %s (NumPy reference forward, CPU stand-in for FasterTransformer)", folder)
    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        grpc_address=args.grpc_address,
        http_address=args.http_address,
        allow_metrics=args.allow_metrics == "true",
    )
    with Triton(config=config) as triton:
        # FauxPilot's two model names: the FT backend's (uint32 ids) and the python backend's (int32 ids).
        for name, ids in (("fastertransformer", np.uint32), ("py-model", np.int32)):
            inputs, outputs = tensors(Tensor, ids)
            triton.bind(
                model_name=name,
                infer_func=batch(make_infer(model, model.config.end_id, ids)),
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(max_batch_size=16),
                strict=False,
            )
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
