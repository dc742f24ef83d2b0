#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 without pulling anything: debootstrap a root
# filesystem from the Debian mirror and `docker import` it as repopilot/base:bookworm.
set -euo pipefail
tag="${1:-repopilot/base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then exit 0; fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,libpython3.11,ca-certificates \
  bookworm "$root" http://deb.debian.org/debian >/dev/null
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "$tag"
