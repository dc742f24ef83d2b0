#!/usr/bin/env bash
# The main job, end to end on the embedded default (no GPU, no Docker, no network):
# index a git repository (default: this checkout) into a dataset, fine-tune a tiny CodeGen on it
# (through the DeepSpeed launcher, on the CPU), and evaluate it against its untrained base with the gate.
# Run it again after a commit: the dataset updates incrementally and a new model is trained for it.
# Usage: scripts/demo.sh [REPO_PATH] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh train
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"
export HF_HUB_OFFLINE=1
repo="${1:-$PWD}"
out="${2:-demo-out}"
rp=.venv/bin/repopilot

echo "== 1. dataset"
if [ -f "$out/dataset/manifest.json" ]; then
  $rp dataset update "$out/dataset"
else
  $rp dataset build "$out/dataset" "$repo"
fi
version=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["dataset_version"])' "$out/dataset/manifest.json")
run="$out/runs/$version"

echo "== 2. fine-tune (tiny CodeGen, CPU) -> $run"
if [ -f "$run/result.json" ]; then
  echo "already trained for dataset $version"
elif [ -f "$run/config.json" ]; then
  $rp train --resume -o "$run"
else
  $rp train "$out/dataset" -o "$run" --base-model tiny --max-steps 300 --block-size 256 \
    --micro-batch-size 8 --grad-accum 1 --save-steps 100 --logging-steps 20
fi

echo "== 3. evaluate: fine-tuned vs its untrained base, with the deploy gate"
$rp eval "$out/dataset" --baseline "$run/base" --candidate "$run/model" --out "$run/eval" --gate --progress none
echo
echo "Dataset: $out/dataset   model: $run/model   report: $run/eval/report.md"
