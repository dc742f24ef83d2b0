#!/usr/bin/env bash
# Screenshots of the tray app with real data (docs/screenshots/*.png): starts Xvfb and a tray host (trayer),
# then scripts/screenshots.py runs a real agent on a temp folder through a real retrain (tiny model, CPU,
# about 2 minutes) and grabs each dashboard tab, the tray menu and the whole screen.
# Needs what scripts/services.sh installs (its "desktop" block) and the venv from scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
display=""
for n in $(seq 70 120); do
  [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ] || { display=":$n"; break; }
done
[ -n "$display" ] || { echo "no free X display" >&2; exit 1; }
Xvfb "$display" -screen 0 1280x860x24 -nolisten tcp >/tmp/repopilot-xvfb.log 2>&1 &
xvfb=$!
trap 'kill $tray $xvfb 2>/dev/null || true' EXIT
tray=""
for _ in $(seq 100); do [ -e "/tmp/.X11-unix/X${display#:}" ] && break; sleep 0.1; done
export DISPLAY="$display" QT_QPA_PLATFORM=xcb HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
trayer --edge top --align right --widthtype request --height 28 --SetDockType true --transparent false \
  --tint 0x2c3e50 >/tmp/repopilot-trayer.log 2>&1 &
tray=$!
sleep 1
.venv/bin/python scripts/screenshots.py --out "$out"
