"""The dashboard window: one tab per concern, a status line, and every agent error shown as title + message."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMainWindow, QProgressBar, QTabWidget, QWidget

from ui.backend import Backend
from ui.icons import DISCONNECTED, look_key, state_icon
from ui.tabs.base import Tab
from ui.tabs.jobs import JobsTab
from ui.tabs.models import ModelsTab
from ui.tabs.repos import ReposTab
from ui.tabs.server import ServerTab
from ui.tabs.settings import SettingsTab
from ui.widgets import show_error


class Dashboard(QMainWindow):
    def __init__(self, backend: Backend, parent: QWidget | None = None, show_errors: bool = True) -> None:
        super().__init__(parent)
        self.backend = backend
        self.setWindowTitle("repopilot")
        self.resize(1100, 720)
        self.tabs = QTabWidget()
        self.repos = ReposTab(backend)
        self.jobs = JobsTab(backend)
        self.models = ModelsTab(backend)
        self.server = ServerTab(backend)
        self.settings = SettingsTab(backend)
        for tab in self.all_tabs():
            self.tabs.addTab(tab, tab.title)
        self.setCentralWidget(self.tabs)
        self.state_label = QLabel("Connecting to the agent…")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(180)
        self.progress.setVisible(False)
        self.statusBar().addWidget(self.state_label, 1)
        self.statusBar().addPermanentWidget(self.progress)
        self.errors: list[tuple[str, str]] = []
        self.show_errors = show_errors
        self.loaded_once = False
        backend.status_changed.connect(self.set_status)
        backend.events_arrived.connect(self.on_events)
        backend.connection_changed.connect(self._connection)
        backend.error.connect(self.show_error)
        self.tabs.currentChanged.connect(self._tab_changed)
        self.setWindowIcon(state_icon(DISCONNECTED))

    def all_tabs(self) -> list[Tab]:
        return [self.repos, self.jobs, self.models, self.server, self.settings]

    def _tab_changed(self, _index: int) -> None:
        if self.backend.api is not None:
            self._current_tab().refresh()

    def _current_tab(self) -> Tab:
        return self.tabs.currentWidget()  # type: ignore[return-value]

    def refresh_all(self) -> None:
        self.loaded_once = True
        for tab in self.all_tabs():
            tab.refresh()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.backend.api is not None:
            self.refresh_all()

    def on_events(self, events: list[Any]) -> None:
        for tab in self.all_tabs():
            tab.on_events(events)

    def set_status(self, status: Any) -> None:
        state = str(getattr(status.state, "value", status.state))
        self.state_label.setText(f"{state}: {status.detail}")
        self.setWindowIcon(state_icon(look_key(state, status.server_running), status.progress))
        self.progress.setVisible(status.progress is not None)
        if status.progress is not None:
            self.progress.setValue(int(status.progress * 1000))
        if not self.loaded_once:
            self.refresh_all()

    def _connection(self, connected: bool, detail: str) -> None:
        if connected:
            self.refresh_all()
        else:
            self.state_label.setText(f"Agent not reachable: {detail}")
            self.progress.setVisible(False)

    def show_error(self, title: str, message: str) -> None:
        self.errors.append((title, message))
        self.statusBar().showMessage(f"{title}: {message.splitlines()[0] if message else ''}", 15000)
        if self.show_errors:
            show_error(self if self.isVisible() else None, title, message)

    def select(self, tab: Tab) -> None:
        self.tabs.setCurrentWidget(tab)
        self.raise_()
        self.activateWindow()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
