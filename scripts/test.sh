#!/usr/bin/env bash
# Install everything the tests need, then run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh train,serve,agent,ui,dev,package
bash scripts/services.sh  # dockerd, docker-compose, the pytriton venv
export REPOPILOT_REQUIRE_SERVICES=1  # integration tests fail (not skip) if a service is missing
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"  # compiled DeepSpeed ops
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # tests never download a model
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
