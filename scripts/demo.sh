#!/usr/bin/env bash
# The main job, end to end on the embedded default (no GPU, no Docker, no network):
# index a git repository (default: this checkout) into a dataset, fine-tune a tiny CodeGen on it
# (through the DeepSpeed launcher, on the CPU), and evaluate it against its untrained base with the gate.
# Then it serves the model on http://localhost:5000/v1 (embedded engine) and asks it for a completion, as the
# VS Code FauxPilot extension would. Run it again after a commit: the dataset updates incrementally, a new
# model is trained and swapped in. Stop the server with: .venv/bin/repopilot stack --stack-dir demo-out/stack down
# Usage: scripts/demo.sh [REPO_PATH] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh train,serve
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

echo "== 4. serve it (embedded engine) and ask for a completion"
port="${REPOPILOT_PORT:-5000}"
stack=(.venv/bin/repopilot stack --stack-dir "$out/stack")
if "${stack[@]}" status >/dev/null 2>&1; then
  "${stack[@]}" swap "$run/model"
else
  "${stack[@]}" up --runtime embedded --model "$run/model" --port "$port"
fi
prompt=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt"])' "$run/smoke.json")
.venv/bin/python - "$port" "$prompt" <<'PY'
import json, sys, urllib.request
port, prompt = sys.argv[1], sys.argv[2]
body = {"model": "fastertransformer", "prompt": prompt, "max_tokens": 32, "temperature": 0.1}
req = urllib.request.Request(f"http://localhost:{port}/v1/engines/codegen/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json", "Authorization": "Bearer dummy"})
answer = json.load(urllib.request.urlopen(req, timeout=120))
print("prompt:\n" + prompt + "\ncompletion:\n" + answer["choices"][0]["text"])
PY
echo
echo "Dataset: $out/dataset   model: $run/model   report: $run/eval/report.md"
echo "Serving on http://localhost:$port/v1 (VS Code: \"fauxpilot.server\": \"http://localhost:$port/v1\")"
