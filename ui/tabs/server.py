"""Server: the completion stack per service, its URL, a test completion, and the VS Code settings."""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ui.tabs.base import Tab
from ui.widgets import fill_table, make_table

SERVICE_COLUMNS = ("Service", "Running", "Healthy", "Detail")
DEFAULT_PROMPT = "def fibonacci(n):\n"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


class ServerTab(Tab):
    title = "Server"
    kinds = frozenset({"server", "model"})

    def __init__(self, backend: Any, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.info: Any = None
        self.settings_json = ""
        self.completions = 0
        """Test completions answered (or failed)."""
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)

        state = QGroupBox("Completion server")
        form = QFormLayout(state)
        self.labels: dict[str, QLabel] = {}
        for key, label in (
            ("running", "Running"),
            ("healthy", "Healthy"),
            ("runtime", "Runtime"),
            ("url", "Endpoint"),
            ("model", "Model"),
            ("detail", "Detail"),
        ):
            self.labels[key] = QLabel("–")
            self.labels[key].setWordWrap(True)
            self.labels[key].setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(label, self.labels[key])
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start server")
        self.start_button.clicked.connect(self.start_server)
        self.stop_button = QPushButton("Stop server")
        self.stop_button.clicked.connect(self.stop_server)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        for button in (self.start_button, self.stop_button, self.refresh_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        form.addRow(buttons)
        self.services = make_table(SERVICE_COLUMNS)
        self.services.setMaximumHeight(120)
        form.addRow("Services", self.services)

        test = QGroupBox("Test completion")
        tlayout = QVBoxLayout(test)
        self.prompt_edit = QPlainTextEdit(DEFAULT_PROMPT)
        self.prompt_edit.setFont(mono)
        self.prompt_edit.setMaximumHeight(90)
        row = QHBoxLayout()
        row.addWidget(QLabel("Max tokens"))
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 512)
        self.max_tokens.setValue(32)
        row.addWidget(self.max_tokens)
        self.complete_button = QPushButton("Complete")
        self.complete_button.clicked.connect(self.test_completion)
        row.addWidget(self.complete_button)
        row.addStretch(1)
        self.completion_view = QPlainTextEdit()
        self.completion_view.setReadOnly(True)
        self.completion_view.setFont(mono)
        self.completion_view.setPlaceholderText("The model's completion appears here.")
        tlayout.addWidget(self.prompt_edit)
        tlayout.addLayout(row)
        tlayout.addWidget(self.completion_view)

        vscode = QGroupBox("VS Code (FauxPilot extension)")
        vlayout = QVBoxLayout(vscode)
        self.copy_button = QPushButton("Copy VS Code settings")
        self.copy_button.clicked.connect(self.copy_vscode_settings)
        self.settings_view = QPlainTextEdit()
        self.settings_view.setReadOnly(True)
        self.settings_view.setFont(mono)
        self.settings_view.setMaximumHeight(130)
        self.settings_view.setPlaceholderText("Paste these into VS Code's settings.json.")
        vlayout.addWidget(self.copy_button)
        vlayout.addWidget(self.settings_view)

        layout = QVBoxLayout(self)
        layout.addWidget(state)
        layout.addWidget(test, 1)
        layout.addWidget(vscode)

    # -- loading ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.call("server_status", on_done=self._show_info)

    def _show_info(self, info: Any) -> None:
        self.info = info
        self.labels["running"].setText(yes_no(info.running))
        self.labels["healthy"].setText(yes_no(info.healthy))
        self.labels["runtime"].setText(info.runtime)
        self.labels["url"].setText(info.url)
        self.labels["model"].setText(info.model or "none deployed yet")
        self.labels["detail"].setText(info.detail)
        fill_table(
            self.services,
            [(s.name, yes_no(s.running), yes_no(s.healthy), s.detail) for s in info.services],
        )
        self.start_button.setEnabled(not info.running)
        self.stop_button.setEnabled(info.running)
        self.complete_button.setEnabled(info.running)
        self.loaded()

    # -- actions ----------------------------------------------------------------------------------------------
    def start_server(self) -> None:
        self._server("start_server")

    def stop_server(self) -> None:
        self._server("stop_server")

    def _server(self, method: str) -> None:
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(False)
        self.backend.call(method, on_done=self._show_info, on_error=self._failed)

    def _failed(self, title: str, message: str) -> None:
        self.refresh()
        self.backend.error.emit(title, message)

    def test_completion(self) -> None:
        self.complete_button.setEnabled(False)
        self.completion_view.setPlainText("…")

        def done(text: str) -> None:
            self.completions += 1
            self.complete_button.setEnabled(True)
            note = "" if text.strip() else "\n# (the model answered nothing here: it stopped at once)"
            self.completion_view.setPlainText(self.prompt_edit.toPlainText() + text + note)

        def failed(title: str, message: str) -> None:
            self.completions += 1
            self.complete_button.setEnabled(True)
            self.completion_view.setPlainText(f"{title}: {message}")
            self.backend.error.emit(title, message)

        self.backend.call(
            "test_completion", self.prompt_edit.toPlainText(), self.max_tokens.value(), on_done=done, on_error=failed
        )

    def copy_vscode_settings(self) -> None:
        def done(settings: dict[str, Any]) -> None:
            self.settings_json = json.dumps(settings, indent=2)
            QGuiApplication.clipboard().setText(self.settings_json)
            self.settings_view.setPlainText(self.settings_json)
            self.copy_button.setText("Copied — paste into VS Code's settings.json")

        self.call("vscode_settings", on_done=done)
