"""``repopilot-tray``: the tray icon and the dashboard, a thin client of the agent (started when it is not running).

python -m ui                  # tray + dashboard on demand (the agent is started if needed)
python -m ui --dashboard      # ... and open the dashboard right away
python -m ui --self-test      # render every icon and the dashboard offline, print JSON, exit 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from agent.errors import AgentNotRunning
from ui import __version__
from ui.backend import Api, Backend
from ui.dashboard import Dashboard
from ui.tray import Tray

log = logging.getLogger(__name__)
APP_ID = "repopilot"


def connect_agent(config_file: str | None = None, timeout: float = 60) -> Api:
    """The HTTP client of the agent; the agent is started in the background when it does not run.

    From source the agent's ``start_background`` starts it with this Python. A frozen bundle holds the
    tray only (no torch, no pipelines), so it starts the ``repopilot`` command that pip installed instead
    (``$REPOPILOT_AGENT_COMMAND`` or ``repopilot`` on PATH).
    """
    from agent.api.client import connect_or_start

    if not getattr(sys, "frozen", False):
        from agent.daemon import start_background  # from source: the agent runs with this Python

        return connect_or_start(config_file, timeout, start_background)
    return connect_or_start(config_file, timeout, start_installed_agent)


def start_installed_agent(config_file: str | None, timeout: float) -> None:
    """`repopilot agent start` of the pip-installed agent (what a frozen bundle, without the agent inside, runs)."""
    command = os.environ.get("REPOPILOT_AGENT_COMMAND") or shutil.which("repopilot")
    if not command:
        raise AgentNotRunning(
            "The repopilot agent is not running and the `repopilot` command was not found to start it. "
            "Install repopilot (pip install 'repopilot[agent,train,serve]') or start the agent yourself.",
            title="Agent not found",
        )
    argv = [command, "agent", "start", "--timeout", str(timeout)] + (["--config", config_file] if config_file else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    if done.returncode != 0:
        raise AgentNotRunning((done.stderr or done.stdout).strip()[-2000:], title="Agent did not start")


class TrayApp(QObject):
    """Wires the backend, the tray and the dashboard together (the dashboard is made on first open)."""

    def __init__(self, backend: Backend, show_errors: bool = True) -> None:
        super().__init__()
        self.backend = backend
        self.tray = Tray(backend)
        self.dashboard = Dashboard(backend, show_errors=show_errors)
        self.tray.open_dashboard.connect(self.open_dashboard)
        self.tray.quit_requested.connect(self.quit)
        backend.error.connect(self._error)
        self.show_errors = show_errors

    def start(self) -> None:
        self.tray.show()
        self.backend.start()

    def open_dashboard(self) -> None:
        self.dashboard.show()
        self.dashboard.select(self.dashboard.tabs.currentWidget())  # type: ignore[arg-type]

    def _error(self, title: str, message: str) -> None:
        if not self.dashboard.isVisible():
            self.tray.show_error(title, message)

    def quit(self) -> None:
        self.backend.stop()
        self.tray.icon.hide()
        app = QApplication.instance()
        if app is not None:
            app.quit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repopilot-tray", description="repopilot's tray icon and dashboard.")
    parser.add_argument("--version", action="version", version=f"repopilot-tray {__version__}")
    parser.add_argument("--config", metavar="FILE", help="agent config file (default: $REPOPILOT_CONFIG or the user's)")
    parser.add_argument("--dashboard", action="store_true", help="open the dashboard at start")
    parser.add_argument("--self-test", action="store_true", help="check the GUI works here without an agent; exit")
    parser.add_argument(
        "--export-icon", metavar="PNG", help="write the app icon (256 px PNG) for a desktop entry; exit"
    )
    parser.add_argument("--tray-wait", type=float, default=3.0, help=argparse.SUPPRESS)
    return parser


def make_app(argv: list[str]) -> QApplication:
    app = QApplication.instance() or QApplication(argv)
    app.setApplicationName(APP_ID)
    app.setApplicationDisplayName("repopilot")
    app.setDesktopFileName(APP_ID)
    app.setQuitOnLastWindowClosed(False)
    return app  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = make_app([sys.argv[0]])
    if args.self_test:
        return self_test(app, args.tray_wait)
    if args.export_icon:
        from ui.icons import SERVING, state_pixmap

        return 0 if state_pixmap(SERVING, None, 256).save(args.export_icon, "PNG") else 1
    backend = Backend(connect=lambda: connect_agent(args.config))
    tray_app = TrayApp(backend)
    if not QSystemTrayIcon.isSystemTrayAvailable():
        log.warning("no system tray here: opening the dashboard instead")
        args.dashboard = True
    if args.dashboard:
        tray_app.open_dashboard()
    tray_app.start()
    code = app.exec()
    backend.stop(wait=2.0)
    return code


# -- self-test (the installer's smoke test, and the tray check under Xvfb) -------------------------------------


class _Offline:
    """An Agent API whose every call fails as a real unreachable agent would."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            from agent.errors import RepopilotError

            raise RepopilotError("self-test: no agent here", title="Agent not running")

        return call


def self_test(app: QApplication, tray_wait: float) -> int:
    """Draw every state icon, build the dashboard and tray against an unreachable agent, report as JSON."""
    import agent.api.client  # the bundle must carry the agent's client
    from ui.icons import LOOKS, state_pixmap

    report: dict[str, Any] = {"version": __version__, "platform": app.platformName()}
    report["client"] = agent.api.client.__name__
    images = {key: state_pixmap(key, 0.5, 32).toImage() for key in LOOKS}
    report["icons"] = {key: image.pixelColor(16, 8).name() for key, image in images.items()}
    backend = Backend(api=_Offline(), poll_timeout=0.2)
    tray_app = TrayApp(backend, show_errors=False)
    tray_app.dashboard.show()
    tray_app.dashboard.refresh_all()
    report["tray_available"] = QSystemTrayIcon.isSystemTrayAvailable()
    tray_app.tray.show()
    QTimer.singleShot(int(tray_wait * 1000), app.quit)
    app.exec()
    geometry = tray_app.tray.icon.geometry()
    report["tray_visible"] = tray_app.tray.icon.isVisible()
    report["tray_geometry"] = [geometry.x(), geometry.y(), geometry.width(), geometry.height()]
    report["tabs"] = [tray_app.dashboard.tabs.tabText(i) for i in range(tray_app.dashboard.tabs.count())]
    report["errors_shown"] = [list(e) for e in tray_app.dashboard.errors[:3]]
    report["menu"] = [a.text() for a in tray_app.tray.menu.actions() if a.text()]
    backend.stop(wait=1.0)
    ok = len(set(report["icons"].values())) == len(LOOKS) and bool(report["errors_shown"]) and len(report["tabs"]) == 5
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1
