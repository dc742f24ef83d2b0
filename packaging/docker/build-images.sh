#!/usr/bin/env bash
# Build the images of the compose stack locally (nothing is pulled when BASE_IMAGE is local).
#   BASE_IMAGE   base for our images (default: python:3.11-slim; on a machine that cannot pull,
#                `packaging/docker/make-base-image.sh` makes repopilot/base:bookworm with debootstrap)
#   --standin    also build the CPU stand-in for Triton+FT
set -euo pipefail
cd "$(dirname "$0")/../.."
base="${BASE_IMAGE:-python:3.11-slim}"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt packaging/docker/extra-ca.crt; fi
docker build -q --network host --build-arg BASE_IMAGE="$base" -f packaging/docker/api.Dockerfile -t repopilot/api:latest .
if [ "${1:-}" = "--standin" ]; then
  docker build -q --network host --build-arg BASE_IMAGE="$base" \
    -f packaging/docker/triton-cpu-standin.Dockerfile -t repopilot/triton-cpu-standin:latest .
fi
rm -f packaging/docker/extra-ca.crt
