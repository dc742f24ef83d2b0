#!/usr/bin/env bash
# Install the repopilot tray bundle for the current user (no root): run it from the unpacked tarball.
#   ./install.sh [--no-autostart]        uninstall: ./install.sh --uninstall
# Puts the bundle in ~/.local/opt/repopilot-tray, a `repopilot-tray` link in ~/.local/bin, the launcher
# in ~/.local/share/applications, its icon in the hicolor theme, and (unless --no-autostart) the XDG
# autostart entry so the tray starts at login. The agent itself is `pip install 'repopilot[agent,train,serve]'`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
config="${XDG_CONFIG_HOME:-$HOME/.config}"
opt="$HOME/.local/opt/repopilot-tray"
bin="$HOME/.local/bin"
autostart=1
for arg in "$@"; do
  case "$arg" in
    --no-autostart) autostart=0 ;;
    --uninstall)
      rm -rf "$opt" "$bin/repopilot-tray" "$data/applications/repopilot.desktop" \
        "$config/autostart/repopilot-tray.desktop" "$data/icons/hicolor/256x256/apps/repopilot.png"
      echo "repopilot tray removed"; exit 0 ;;
    *) echo "usage: $0 [--no-autostart|--uninstall]" >&2; exit 2 ;;
  esac
done
rm -rf "$opt"
mkdir -p "$opt" "$bin" "$data/applications" "$data/icons/hicolor/256x256/apps"
if [ -d "$here/bundle" ]; then
  cp -a "$here/bundle/." "$opt/"
else
  cp "$here/repopilot-tray" "$opt/"
fi
ln -sf "$opt/repopilot-tray" "$bin/repopilot-tray"
QT_QPA_PLATFORM=offscreen "$opt/repopilot-tray" --export-icon "$data/icons/hicolor/256x256/apps/repopilot.png"
sed "s|^Exec=repopilot-tray|Exec=$bin/repopilot-tray|" "$here/repopilot.desktop" >"$data/applications/repopilot.desktop"
if [ "$autostart" = 1 ]; then
  mkdir -p "$config/autostart"
  sed "s|^Exec=repopilot-tray|Exec=$bin/repopilot-tray|" "$here/repopilot-tray.desktop" \
    >"$config/autostart/repopilot-tray.desktop"
fi
echo "repopilot tray installed: $bin/repopilot-tray (launcher: repopilot; autostart: $([ $autostart = 1 ] && echo on || echo off))"
