#!/usr/bin/env bash
# Build the Linux bundle of the tray app and a tarball with its installer:
#   bash packaging/pyinstaller/build.sh [OUT_DIR]      (REPOPILOT_ONEFILE=1 for one self-extracting file)
# Result: OUT_DIR/repopilot-tray/repopilot-tray (or OUT_DIR/repopilot-tray with ONEFILE) and
# OUT_DIR/repopilot-tray-linux-<arch>.tar.gz (bundle + desktop entries + install.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$out" --workpath "$work/build" "$root/packaging/pyinstaller/repopilot-tray.spec"

stage="$work/stage/repopilot-tray-linux"
mkdir -p "$stage"
if [ "${REPOPILOT_ONEFILE:-}" = "1" ]; then
  cp "$out/repopilot-tray" "$stage/"
else
  cp -a "$out/repopilot-tray" "$stage/bundle"
fi
cp "$root/packaging/desktop/repopilot.desktop" "$root/packaging/autostart/repopilot-tray.desktop" \
  "$root/packaging/pyinstaller/install.sh" "$stage/"
tar -C "$work/stage" -czf "$out/repopilot-tray-linux-$(uname -m).tar.gz" repopilot-tray-linux
echo "$out/repopilot-tray-linux-$(uname -m).tar.gz"
