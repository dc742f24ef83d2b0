"""The Linux bundle: PyInstaller builds it from packaging/pyinstaller, it runs (--version, --self-test offscreen),
and its installer puts the launcher, the autostart entry and the icon in place for a user."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("PyInstaller")


def test_bundle_builds_runs_and_installs(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    build = subprocess.run(
        ["bash", str(ROOT / "packaging" / "pyinstaller" / "build.sh"), str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    exe = out / "repopilot-tray" / "repopilot-tray"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path / "home")}
    env.pop("XDG_DATA_HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.strip() == "repopilot-tray 0.1.0"

    test = subprocess.run(
        [str(exe), "--self-test"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert test.returncode == 0, test.stderr[-3000:]
    report = json.loads(test.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["client"] == "agent.api.client"
    assert report["tabs"] == ["Repos", "Jobs", "Models", "Server", "Settings"]

    tarball = next(out.glob("repopilot-tray-linux-*.tar.gz"))
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    installer = tmp_path / "unpacked" / "repopilot-tray-linux" / "install.sh"
    done = subprocess.run(["bash", str(installer)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    home = tmp_path / "home"
    launcher = home / ".local/share/applications/repopilot.desktop"
    autostart = home / ".config/autostart/repopilot-tray.desktop"
    assert f"Exec={home}/.local/bin/repopilot-tray --dashboard" in launcher.read_text()
    assert f"Exec={home}/.local/bin/repopilot-tray\n" in autostart.read_text()
    assert (home / ".local/share/icons/hicolor/256x256/apps/repopilot.png").read_bytes()[:4] == b"\x89PNG"
    installed = subprocess.run(
        [str(home / ".local/bin/repopilot-tray"), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert installed.stdout.strip() == "repopilot-tray 0.1.0"
