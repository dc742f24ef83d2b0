#!/usr/bin/env bash
# The main job, end to end on the embedded default (no GPU, no Docker, no network):
# today it indexes a git repository (default: this checkout) into a training dataset and prints its stats.
# Run it again after a commit and it updates the dataset incrementally.
# Usage: scripts/demo.sh [REPO_PATH] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
repo="${1:-$PWD}"
out="${2:-demo-out/dataset}"
if [ -f "$out/manifest.json" ]; then
  .venv/bin/repopilot dataset update "$out"
else
  .venv/bin/repopilot dataset build "$out" "$repo"
fi
echo
echo "Dataset in $out: shards in $out/train and $out/validation, manifest.json, stats.json."
