"""The tray icon and its menu: the state at a glance, one click to the common actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from ui.backend import Backend
from ui.icons import DISCONNECTED, LOOKS, look_key, state_icon


def _state(status: Any) -> str:
    state = getattr(status, "state", "idle")
    return str(getattr(state, "value", state))


def tooltip_text(status: Any) -> str:
    """The tooltip: state line, what is served, repos and queue, paused, last error."""
    if status is None:
        return "repopilot: connecting to the agent…"
    lines = [f"repopilot: {status.detail}"]
    if status.progress is not None:
        lines[0] += f" ({status.progress * 100:.0f}%)"
    if status.server_running:
        lines.append(f"Serving {status.serving_model or 'no model'}")
    elif status.serving_model:
        lines.append(f"Deployed {status.serving_model} (server stopped)")
    else:
        lines.append("No model deployed yet")
    lines.append(f"{status.repos} repo(s), {status.jobs_queued} job(s) queued")
    if status.paused:
        lines.append("Watching paused")
    if status.last_error is not None and _state(status) == "error":
        lines.append(f"Last error: {status.last_error.title}")
    return "\n".join(lines)


class Tray(QObject):
    """QSystemTrayIcon + menu, driven by the backend's status signal."""

    open_dashboard = Signal()
    quit_requested = Signal()

    def __init__(self, backend: Backend, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.status: Any = None
        self.look = DISCONNECTED
        self.progress: float | None = None
        self.icon = QSystemTrayIcon(self)
        self.menu = QMenu()
        self.status_action = self._add("repopilot: connecting…", None)
        self.status_action.setEnabled(False)
        self.menu.addSeparator()
        self.server_action = self._add("Start completion server", self.toggle_server)
        self.retrain_action = self._add("Retrain now", self.retrain)
        self.watch_action = self._add("Pause watching", self.toggle_watching)
        self.dismiss_action = self._add("Dismiss error", self.dismiss_error)
        self.menu.addSeparator()
        self.dashboard_action = self._add("Open dashboard", self.open_dashboard.emit)
        self.quit_action = self._add("Quit", self.quit_requested.emit)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        backend.status_changed.connect(self.set_status)
        backend.connection_changed.connect(self._connection)
        backend.notification.connect(self.notify)
        self.notifications: list[tuple[str, str]] = []
        self.set_status(None)

    def _add(self, text: str, slot: Callable[[], Any] | None) -> QAction:
        action = self.menu.addAction(text)
        if slot is not None:
            action.triggered.connect(slot)
        return action

    def show(self) -> None:
        self.icon.show()

    # -- reacting to the agent --------------------------------------------------------------------------------
    def set_status(self, status: Any) -> None:
        self.status = status
        connected = status is not None
        if status is None:
            self.look, self.progress = DISCONNECTED, None
        else:
            self.look, self.progress = look_key(_state(status), status.server_running), status.progress
        self.icon.setIcon(state_icon(self.look, self.progress, paused=bool(status and status.paused)))
        self.icon.setToolTip(tooltip_text(status))
        label = LOOKS[self.look].label
        if self.progress is not None:
            label += f" {self.progress * 100:.0f}%"
        self.status_action.setText(f"repopilot: {label}")
        for action in (self.server_action, self.retrain_action, self.watch_action):
            action.setEnabled(connected)
        running = bool(status and status.server_running)
        self.server_action.setText("Stop completion server" if running else "Start completion server")
        self.watch_action.setText("Resume watching" if status and status.paused else "Pause watching")
        self.dismiss_action.setVisible(bool(status and _state(status) == "error"))

    def _connection(self, connected: bool, detail: str) -> None:
        if not connected:
            self.set_status(None)
            self.icon.setToolTip(f"repopilot: agent not reachable, starting it again…\n{detail}")

    def notify(self, title: str, message: str) -> None:
        self.notifications.append((title, message))
        self.icon.showMessage(title, message, QSystemTrayIcon.MessageIcon.Information, 8000)

    def show_error(self, title: str, message: str) -> None:
        self.icon.showMessage(title, message, QSystemTrayIcon.MessageIcon.Critical, 10000)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.open_dashboard.emit()

    # -- menu actions -----------------------------------------------------------------------------------------
    def toggle_server(self) -> None:
        method = "stop_server" if self.status is not None and self.status.server_running else "start_server"
        self.server_action.setEnabled(False)
        self.backend.call(method, on_done=lambda _: self.backend.refresh_status(), on_error=self._failed)

    def retrain(self) -> None:
        self.backend.call("retrain_now", on_done=lambda _: self.backend.refresh_status(), on_error=self._failed)

    def toggle_watching(self) -> None:
        method = "resume_watching" if self.status is not None and self.status.paused else "pause_watching"
        self.backend.call(method, on_done=lambda _: self.backend.refresh_status(), on_error=self._failed)

    def dismiss_error(self) -> None:
        self.backend.call("clear_error", on_done=lambda _: self.backend.refresh_status(), on_error=self._failed)

    def _failed(self, title: str, message: str) -> None:
        self.backend.refresh_status()
        self.backend.error.emit(title, message)
