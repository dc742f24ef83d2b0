"""``repopilot convert MODEL_DIR --gpus N --models-root DIR`` and ``repopilot convert --verify DIR``
(also ``python -m pipelines.convert``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from pipelines.cli_util import standalone_main
from pipelines.errors import InputError
from pipelines.progress import MODES, Progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert",
        help="convert a CodeGen model for FauxPilot (FasterTransformer + Triton config), verified",
        description=(
            "Convert a Hugging Face CodeGen folder into FauxPilot's FasterTransformer GPT-J model "
            "(MODELS_ROOT/NAME-<N>gpu/fastertransformer/...) and the embedded engine's copy (MODELS_ROOT/NAME-hf), "
            "check that both compute the source model's logits, and put them in place only then. "
            "With --verify, re-check a converted folder (sizes, checksums) instead."
        ),
    )
    parser.add_argument("model_dir", type=Path, help="CodeGen model folder (or, with --verify, a converted folder)")
    parser.add_argument("--gpus", type=int, help="tensor parallelism: 1, 2, 4 or 8 GPUs")
    parser.add_argument("--models-root", type=Path, help="folder holding FauxPilot's models (MODEL_DIR's parent)")
    parser.add_argument("--name", help="model name (default: the folder's name, or the run's for RUN_DIR/model)")
    parser.add_argument("--mount", default="/model", help="where the Triton container mounts it (default: /model)")
    parser.add_argument(
        "--mounted",
        choices=("model-dir", "models-root"),
        default="model-dir",
        help="what is mounted there: NAME-<N>gpu, FauxPilot's MODEL_DIR (default), or the whole models root",
    )
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for start/end ids (default: the model's)")
    parser.add_argument("--mp-num", type=int, help="qkv_proj shards: 4 (CodeGen-1) or 8 (CodeGen2 1B/3.7B)")
    parser.add_argument("--fp32", action="store_true", help="have FT compute in float32 (is_half 0; twice the memory)")
    parser.add_argument("--no-hf-export", action="store_true", help="skip the embedded engine's copy")
    parser.add_argument("--force", action="store_true", help="replace existing outputs of the same name")
    parser.add_argument("--verify", action="store_true", help="re-check the converted folder MODEL_DIR instead")
    parser.add_argument("--quick", action="store_true", help="with --verify: sizes only, no checksums")
    parser.add_argument("--forward", action="store_true", help="with --verify: also recompute the sample logits")
    parser.add_argument("--progress", choices=MODES, default="auto", help="progress on stderr (json for machines)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    if (args.quick or args.forward) and not args.verify:
        raise InputError("--quick and --forward go with --verify.")
    if args.verify:
        from pipelines.convert.verify import verify_output

        summary = verify_output(args.model_dir, checksums=not args.quick, forward=args.forward)
        if args.json:
            print(json.dumps(summary, indent=2, sort_keys=True))
        else:
            what = "sizes" + ("" if args.quick else ", checksums") + (", sample logits" if args.forward else "")
            print(f"{summary['path']}: intact ({summary['kind']}, {summary['files']} files; checked {what})")
        return 0
    missing = [flag for flag, value in (("--gpus", args.gpus), ("--models-root", args.models_root)) if value is None]
    if missing:
        raise InputError(f"Give {' and '.join(missing)} (e.g. --gpus 1 --models-root ~/fauxpilot/models).")
    from pipelines.convert.run import ConvertOptions, convert

    opts = ConvertOptions(
        model_dir=args.model_dir,
        models_root=args.models_root,
        gpus=args.gpus,
        name=args.name,
        mount=args.mount,
        mounted=args.mounted,
        tokenizer=args.tokenizer,
        mp_num=args.mp_num,
        half=not args.fp32,
        export_hf=not args.no_hf_export,
        force=args.force,
    )
    progress = Progress(args.progress)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the result
        result = convert(opts, progress)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return 0
    checks = result["checks"]
    print(f"converted {result['name']} for {result['gpus']} GPU(s): {result['output']}")
    print(f"  Triton model_checkpoint_path: {result['model_checkpoint_path']}")
    print(
        f"  vocab_size {result['vocab_size']} (model rows {result['source_vocab_rows']}, tokenizer "
        f"{result['tokenizer_size']}), start/end id {result['start_id']}/{result['end_id']}, mp_num {result['mp_num']}"
    )
    for key, label in (("gptj_vs_codegen", "GPT-J vs CodeGen"), ("ft_files_vs_codegen", "FT files vs CodeGen")):
        print(f"  verified {label}: max logit difference {checks[key]['max_abs_diff']:.2e}")
    print(
        f"  verified byte sizes of {checks['byte_sizes']['files']} files; SHA256SUMS of {checks['checksums']['files']}"
    )
    hf = result["hf_export"]
    if "path" in hf:
        detail = f", max logit difference {hf['check']['max_abs_diff']:.2e}" if "check" in hf else ""
        print(f"  embedded engine copy: {hf['path']} ({hf['how']}{detail})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main("convert", "convert", add_parser, run, argv)
