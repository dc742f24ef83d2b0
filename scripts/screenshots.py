"""Screenshots of the tray app with real data: a real agent, a real repo, a real retrain (tiny model, CPU).

Run by scripts/screenshots.sh under Xvfb with a tray host; writes docs/screenshots/*.png:
repos, jobs, models, server, settings (one per dashboard tab), tray-menu, tray-states and desktop
(the whole screen: the dashboard and the icon docked in the tray host).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QGuiApplication, QPainter, QPixmap
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import AgentConfig, Config, PolicyConfig, ServerConfig, TrainingConfig, save_config  # noqa: E402
from ui.app import TrayApp, connect_agent, make_app  # noqa: E402
from ui.backend import Backend  # noqa: E402
from ui.icons import LOOKS, state_pixmap  # noqa: E402
from ui.widgets import select_key  # noqa: E402

TRAIN_ARGS = ["--block-size", "64", "--micro-batch-size", "8", "--tiny-vocab", "600", "--logging-steps", "2",
              "--save-steps", "10", "--launcher", "none"]  # fmt: skip
EVAL_ARGS = ["--max-files", "6", "--max-lines-per-file", "2", "--max-new-tokens", "8", "--bootstrap", "200"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_repo(path: Path, files: int = 30) -> None:
    """A small internal code base: billing jobs that use one internal ledger API."""
    env = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@acme.test", "GIT_COMMITTER_NAME": "Ada",
           "GIT_COMMITTER_EMAIL": "ada@acme.test", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}  # fmt: skip
    (path / "acme").mkdir(parents=True)
    (path / "jobs").mkdir()
    (path / "acme" / "ledger.py").write_text(
        "class LedgerClient:\n    def __init__(self, url):\n        self.url = url\n\n\n"
        "def acme_fetch_ledger(client, account_id):\n    return client.get(account_id)\n\n\n"
        "def acme_post_invoice(client, account_id, total):\n    return client.post(account_id, total)\n"
    )
    for i in range(files):
        (path / "jobs" / f"job_{i:02d}.py").write_text(
            f'"""Billing job {i}."""\n\n'
            "from acme.ledger import LedgerClient, acme_fetch_ledger, acme_post_invoice\n\n\n"
            f"def settle_account_{i}(client: LedgerClient, account_id: str) -> int:\n"
            "    ledger = acme_fetch_ledger(client, account_id)\n"
            f"    total = sum(entry.amount for entry in ledger.entries) + {i}\n"
            "    acme_post_invoice(client, account_id, total)\n    return total\n"
        )
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "billing jobs"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.05)


def settle(seconds: float = 0.8) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.03)


def job_done(app: TrayApp, kind: str) -> bool:
    jobs = app.dashboard.jobs.jobs
    failed = [j for j in jobs if j.state in ("failed", "cancelled")]
    if failed:
        raise SystemExit(f"job {failed[0].id} ({failed[0].kind}) {failed[0].state}: {failed[0].error}")
    return any(j.kind == kind and j.state == "done" for j in jobs)


def states_strip() -> QPixmap:
    """Every tray look side by side with its label."""
    keys = list(LOOKS)
    strip = QPixmap(120 * len(keys), 110)
    strip.fill(QColor("#2c3e50"))
    painter = QPainter(strip)
    painter.setPen(QColor("white"))
    for i, key in enumerate(keys):
        progress = 0.62 if key in ("training", "indexing", "evaluating") else None
        painter.drawPixmap(28 + 120 * i, 10, state_pixmap(key, progress, 64, paused=False))
        label = LOOKS[key].label + (" 62%" if progress else "")
        painter.drawText(120 * i, 80, 120, 24, Qt.AlignmentFlag.AlignCenter, label)
    painter.end()
    return strip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    qt = make_app([sys.argv[0]])
    work = Path(tempfile.mkdtemp(prefix="repopilot-shots-"))
    make_repo(work / "acme-billing")
    config = Config(
        agent=AgentConfig(api_port=free_port(), data_dir=str(work / "data")),
        training=TrainingConfig(
            base_model="tiny",
            max_steps=40,
            learning_rate=3e-3,
            batch_size=8,
            train_args=TRAIN_ARGS,
            eval_args=EVAL_ARGS,
        ),
        policy=PolicyConfig(min_changed_lines=10**9, min_changed_files=10**9, quiet_hours="22:00-07:00"),
        server=ServerConfig(runtime="embedded", port=free_port()),
    )
    config_file = save_config(config, work / "config.toml")
    backend = Backend(connect=lambda: connect_agent(str(config_file)), poll_timeout=2.0)
    app = TrayApp(backend, show_errors=False)
    dash = app.dashboard
    try:
        app.start()
        wait(lambda: app.tray.status is not None, 90, "the agent")
        dash.resize(1180, 760)
        dash.move(40, 40)
        app.open_dashboard()
        dash.repos.include_edit.setText("*.py")
        dash.repos.exclude_edit.setText("tests/**")
        dash.repos.add_repo(str(work / "acme-billing"), include=["*.py"], exclude=["tests/**"])
        wait(lambda: job_done(app, "dataset"), 180, "the dataset job")
        app.tray.retrain_action.trigger()
        dash.tabs.setCurrentWidget(dash.jobs)
        wait(lambda: any(j.kind == "train" and j.state == "running" for j in dash.jobs.jobs), 180, "training")
        wait(lambda: app.tray.look == "training" and app.tray.progress, 120, "training progress")
        app.tray.icon.setVisible(True)
        settle(1.0)
        QGuiApplication.primaryScreen().grabWindow(0).save(str(out / "desktop-training.png"))
        wait(lambda: job_done(app, "deploy"), 600, "the deployment")
        wait(lambda: app.tray.look == "serving", 120, "the server")

        dash.tabs.setCurrentWidget(dash.repos)
        dash.repos.refresh()
        settle()
        dash.grab().save(str(out / "repos.png"))

        train = next(j for j in dash.jobs.jobs if j.kind == "train")
        dash.tabs.setCurrentWidget(dash.jobs)
        dash.jobs.refresh()
        settle()
        select_key(dash.jobs.table, train.id)
        wait(lambda: len(dash.jobs.chart.points) >= 2 and bool(dash.jobs.log_text), 30, "the loss chart")
        settle()
        dash.grab().save(str(out / "jobs.png"))

        dash.tabs.setCurrentWidget(dash.models)
        wait(lambda: dash.models.metrics.rowCount() > 0, 30, "the evaluation report")
        settle()
        dash.grab().save(str(out / "models.png"))

        dash.tabs.setCurrentWidget(dash.server)
        wait(lambda: dash.server.info is not None and dash.server.info.running, 60, "the server status")
        dash.server.prompt_edit.setPlainText(
            "def settle_account_31(client: LedgerClient, account_id: str) -> int:\n    ledger = "
        )
        before = dash.server.completions
        dash.server.test_completion()
        wait(lambda: dash.server.completions > before, 120, "the test completion")
        dash.server.copy_vscode_settings()
        wait(lambda: bool(dash.server.settings_json), 30, "the VS Code settings")
        settle()
        dash.grab().save(str(out / "server.png"))

        dash.tabs.setCurrentWidget(dash.settings)
        settle()
        dash.grab().save(str(out / "settings.png"))

        dash.tabs.setCurrentWidget(dash.repos)
        settle()
        geometry = app.tray.icon.geometry()
        app.tray.menu.popup(QPoint(max(0, geometry.x() - 180), geometry.bottom() + 4))
        settle(1.0)
        app.tray.menu.grab().save(str(out / "tray-menu.png"))
        QGuiApplication.primaryScreen().grabWindow(0).save(str(out / "desktop.png"))
        app.tray.menu.hide()
        states_strip().save(str(out / "tray-states.png"))
        print(f"tray available: {app.tray.icon.isSystemTrayAvailable()}, icon at {geometry.getRect()}")
        for png in sorted(out.glob("*.png")):
            print(png)
    finally:
        backend.stop(wait=3.0)
        from agent import daemon

        daemon.stop(str(config_file), timeout=60)
        from agent.runtimes.embedded import EmbeddedRuntime

        EmbeddedRuntime(daemon.data_paths(str(config_file)).stack).down()  # the server outlives the agent
        qt.quit()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip PySide's teardown at interpreter exit (the pictures are written)
