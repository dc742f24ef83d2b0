#!/usr/bin/env bash
# Install and start what the integration tests talk to: dockerd (+ docker-compose, debootstrap for a
# local base image) and a separate venv with nvidia-pytriton (its own numpy<2) for the real tritonserver.
# Needs root (or sudo) for apt and dockerd. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  data_root="${REPOPILOT_DOCKER_ROOT:-/var/lib/repopilot-docker}"
  $sudo mkdir -p "$data_root"
  # No bridge/iptables here: containers use host networking on 127.0.0.1.
  $sudo sh -c "nohup dockerd --storage-driver=overlay2 --iptables=false --bridge=none --data-root '$data_root' \
    >/tmp/repopilot-dockerd.log 2>&1 &"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/repopilot-dockerd.log" >&2; exit 1; }
fi

# ssh box for the remote-executor tests: the tests start their own sshd (tests/sshbox.py) on 127.0.0.1
ssh_missing=()
[ -x /usr/sbin/sshd ] || ssh_missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || ssh_missing+=(openssh-client)
command -v rsync >/dev/null 2>&1 || ssh_missing+=(rsync)
if [ ${#ssh_missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${ssh_missing[@]}" >/dev/null
fi

if [ ! -x .venv-triton/bin/python ] || ! .venv-triton/bin/python -c 'import pytriton' >/dev/null 2>&1; then
  python3 -m venv .venv-triton
  .venv-triton/bin/python -m pip install -q --disable-pip-version-check nvidia-pytriton 'numpy<2'
fi

# desktop: Xvfb + tray host for the tray tests/screenshots (Qt's xcb plugin needs the libxcb-* below)
desktop=()
for pair in Xvfb:xvfb trayer:trayer xwininfo:x11-utils import:imagemagick desktop-file-validate:desktop-file-utils; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || desktop+=("${pair#*:}")
done
for lib in libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 \
  libxcb-render-util0 libxcb-image0 libxcb-randr0; do
  dpkg -s "$lib" >/dev/null 2>&1 || desktop+=("$lib")
done
if [ ${#desktop[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${desktop[@]}" >/dev/null
fi
