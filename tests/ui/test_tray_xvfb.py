"""Under Xvfb with a tray host (trayer), the tray icon really shows: the tray is available, the icon has a
geometry, and X11 has the icon's window docked inside trayer's panel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import require

ROOT = Path(__file__).resolve().parents[2]


def _free_display() -> int:
    for number in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def display(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An Xvfb display with trayer docked at the top right; yields the env for clients of it."""
    require(bool(shutil.which("Xvfb") and shutil.which("trayer") and shutil.which("xwininfo")), "Xvfb + trayer")
    number = _free_display()
    xvfb = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "xvfb.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    env = {**os.environ, "DISPLAY": f":{number}", "QT_QPA_PLATFORM": "xcb"}
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            assert xvfb.poll() is None and time.monotonic() < deadline, (tmp_path / "xvfb.log").read_text()
            time.sleep(0.05)
        trayer = subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "28",
             "--SetDockType", "true", "--transparent", "false", "--tint", "0x333333"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while '"panel"' not in xtree(env):
                assert trayer.poll() is None and time.monotonic() < deadline, "trayer did not map its panel"
                time.sleep(0.1)
            yield env
        finally:
            _stop(trayer)
    finally:
        _stop(xvfb)


def xtree(env: dict[str, str]) -> str:
    return subprocess.run(["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True, check=False).stdout


def docked_under_panel(tree: str, name: str = '"repopilot"') -> bool:
    """A window called ``name`` nested (deeper indent) under trayer's ``"panel"`` window."""
    lines = tree.splitlines()
    for i, line in enumerate(lines):
        if '"panel"' in line:
            indent = len(line) - len(line.lstrip())
            for child in lines[i + 1 :]:
                if child.strip() and len(child) - len(child.lstrip()) <= indent:
                    break
                if name in child:
                    return True
    return False


def test_tray_icon_is_visible_in_the_tray_host(display: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui", "--self-test", "--tray-wait", "6"],
        cwd=ROOT,
        env=display,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        docked = False
        while not docked and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            docked = docked_under_panel(xtree(display))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["platform"] == "xcb"
    assert report["tray_available"] is True
    assert report["tray_visible"] is True
    x, _, width, height = report["tray_geometry"]
    assert width > 0 and height > 0 and x > 1000  # docked in trayer's panel at the top right
    assert docked, "the icon's window never appeared inside trayer's panel"
