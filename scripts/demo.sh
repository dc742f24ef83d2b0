#!/usr/bin/env bash
# The main job, end to end on the embedded default (no GPU, no Docker, no network), run by the agent as a
# user would: start the repopilot agent, tell it to watch a git repository (default: this checkout), and
# let it work: it indexes the repo into a dataset, fine-tunes a tiny CodeGen on it (CPU, DeepSpeed launcher),
# evaluates it against its base with the deploy gate, converts it, and serves it on http://localhost:5000/v1
# with the embedded engine. Then this script asks for a completion as the VS Code FauxPilot extension would.
# Commit to the repo afterwards: the agent notices, and retrains and redeploys by itself.
# Stop everything with: REPOPILOT_CONFIG=demo-out/config.toml .venv/bin/repopilot agent stop (the server
# keeps serving until `... repopilot server stop`).
# Usage: scripts/demo.sh [REPO_PATH] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh train,serve,agent
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"
export HF_HUB_OFFLINE=1
repo="$(cd "${1:-$PWD}" && pwd)"
out="${2:-demo-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rp=.venv/bin/repopilot
export REPOPILOT_CONFIG="$out/config.toml"
if [ ! -f "$REPOPILOT_CONFIG" ]; then
  cat > "$REPOPILOT_CONFIG" <<TOML
# repopilot demo: a tiny CodeGen trained on the CPU, served by the embedded engine.
[agent]
api_port = ${REPOPILOT_API_PORT:-7431}
data_dir = "$out/agent"

[training]
base_model = "tiny"
max_steps = 300
learning_rate = 0.001
batch_size = 8
train_args = ["--block-size", "256", "--save-steps", "100", "--logging-steps", "20"]

[policy]
min_changed_lines = 20
min_changed_files = 1

[server]
runtime = "embedded"
port = ${REPOPILOT_PORT:-5000}
TOML
fi

echo "== 1. start the agent (config $REPOPILOT_CONFIG)"
$rp agent start
echo "== 2. watch $repo"
if ! $rp repo list --json | grep -q "\"path\": \"$repo\""; then
  $rp repo add "$repo"
fi
echo "== 3. the agent works: dataset -> train -> eval (gate) -> convert -> deploy"
$rp agent wait --timeout 3600
$rp job list -n 10
$rp model list
echo "== 4. ask the served model for a completion"
$rp server status
prompt=$($rp model list --json | .venv/bin/python -c '
import json, pathlib, sys
models = json.load(sys.stdin)
serving = next((m for m in models if m["serving"]), models[0])
print(json.loads((pathlib.Path(serving["run_dir"]) / "smoke.json").read_text())["prompt"])')
echo "-- prompt + completion:"
$rp server test "$prompt" --max-tokens 32
echo
echo "VS Code settings for the FauxPilot extension:"
$rp server vscode
