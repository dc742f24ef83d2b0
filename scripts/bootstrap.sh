#!/usr/bin/env bash
# Install what repopilot needs into ./.venv on a fresh machine (Debian/Ubuntu; root or sudo for apt).
# Usage: scripts/bootstrap.sh [EXTRAS]   (EXTRAS defaults to "train,dev")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,dev}"

missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [[ ",$extras," == *",train,"* ]] && ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  # Pin torch first: an unpinned requirement would pull a multi-GB CUDA build where a CPU one is on hand.
  "${pip[@]}" "torch==${REPOPILOT_TORCH_VERSION:-2.13.0}"
fi
"${pip[@]}" -e ".[${extras}]"
# Compile the project's bytecode now, as pip does when it installs a wheel: every `repopilot` command then starts
# without compiling its modules (where PYTHONDONTWRITEBYTECODE is set, each start would, ~30-50 ms a command).
.venv/bin/python -m compileall -q agent pipelines ui >/dev/null
# And the dataset builder's C loops (into the user's cache; without a C compiler it says so and runs numpy twins).
.venv/bin/python -m pipelines.dataset.native
