"""Settings: the agent's TOML configuration as forms (sections) plus the GPU boxes table.

The form is built from the data ``get_settings()`` returns (a bool is a checkbox, a list a text field...),
so a new config key shows up without UI changes. Values the UI cannot parse are sent as typed, and the
agent's validation (one InputError listing every problem) says what is wrong.
"""

from __future__ import annotations

import copy
import shlex
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from agent.config import RUNTIMES
from ui.tabs.base import Tab

SECTION_TITLES = {
    "agent": "Agent",
    "training": "Training",
    "policy": "Retrain policy (quiet hours, thresholds, schedule)",
    "server": "Completion server",
}
CHOICES = {("server", "runtime"): list(RUNTIMES)}
READ_ONLY = {("agent", "data_dir")}
BOX_FIELDS = ["name", "kind", "host", "user", "port", "key_file", "work_dir", "gpus", "python"]
BOX_DEFAULTS: dict[str, Any] = {"kind": "local", "port": 22, "gpus": []}


def to_text(value: Any) -> str:
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return ", ".join(str(v) for v in value)
        return shlex.join(str(v) for v in value)
    return "" if value is None else str(value)


def from_text(text: str, like: Any) -> Any:
    """``text`` parsed as the type of ``like``; the raw text when it does not parse (the agent says why)."""
    text = text.strip()
    try:
        if isinstance(like, bool):
            return text.lower() in ("1", "true", "yes", "on")
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, list):
            if like and all(isinstance(v, int) for v in like):
                return [int(p) for p in text.replace(",", " ").split()]
            return shlex.split(text)
    except ValueError:
        return text
    return text


class SettingsTab(Tab):
    title = "Settings"
    kinds = frozenset({"settings"})

    def __init__(self, backend: Any, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.settings: dict[str, Any] = {}
        self.fields: dict[tuple[str, str], QWidget] = {}
        self.dirty = False
        self.saved = 0
        self.form_host = QWidget()
        self.form_layout = QVBoxLayout(self.form_host)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form_host)

        boxes = QGroupBox("GPU boxes (where training runs: this machine or SSH hosts)")
        blayout = QVBoxLayout(boxes)
        self.boxes = QTableWidget(0, len(BOX_FIELDS))
        self.boxes.setHorizontalHeaderLabels(BOX_FIELDS)
        self.boxes.horizontalHeader().setStretchLastSection(True)
        self.boxes.setMinimumHeight(110)
        brow = QHBoxLayout()
        self.add_box_button = QPushButton("Add GPU box")
        self.add_box_button.clicked.connect(self.add_new_box)
        self.remove_box_button = QPushButton("Remove selected box")
        self.remove_box_button.clicked.connect(self.remove_box_row)
        brow.addWidget(self.add_box_button)
        brow.addWidget(self.remove_box_button)
        brow.addStretch(1)
        blayout.addWidget(self.boxes)
        blayout.addLayout(brow)
        self.form_layout.addWidget(boxes)
        self.section_boxes: list[QGroupBox] = []

        buttons = QHBoxLayout()
        self.save_button = QPushButton("Save settings")
        self.save_button.clicked.connect(self.save)
        self.revert_button = QPushButton("Revert")
        self.revert_button.clicked.connect(self.refresh)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.message, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)

    # -- loading ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.call("get_settings", on_done=self.show_settings)

    def show_settings(self, settings: dict[str, Any]) -> None:
        self.settings = copy.deepcopy(settings)
        for box in self.section_boxes:
            self.form_layout.removeWidget(box)
            box.deleteLater()
        self.section_boxes.clear()
        self.fields.clear()
        for position, (section, values) in enumerate((k, v) for k, v in settings.items() if isinstance(v, dict)):
            group = QGroupBox(SECTION_TITLES.get(section, section))
            form = QFormLayout(group)
            for key, value in values.items():
                widget = self._field(section, key, value)
                self.fields[(section, key)] = widget
                form.addRow(key.replace("_", " "), widget)
            self.form_layout.insertWidget(position, group)
            self.section_boxes.append(group)
        self.boxes.setRowCount(0)
        for box in settings.get("gpu_boxes") or []:
            self.add_box_row(box)
        self.message.setText("")
        self.loaded()

    def _field(self, section: str, key: str, value: Any) -> QWidget:
        if isinstance(value, bool):
            widget: QWidget = QCheckBox()
            widget.setChecked(value)
            return widget
        if (section, key) in CHOICES:
            combo = QComboBox()
            combo.addItems(CHOICES[(section, key)])
            combo.setCurrentText(str(value))
            return combo
        edit = QLineEdit(to_text(value))
        if (section, key) in READ_ONLY:
            edit.setReadOnly(True)
            edit.setToolTip("Change it in the config file and restart the agent.")
        if isinstance(value, list):
            edit.setPlaceholderText(
                "space-separated" if not all(isinstance(v, int) for v in value) or not value else ""
            )
        if section == "policy" and key == "quiet_hours":
            edit.setPlaceholderText("e.g. 22:00-07:00 (empty: none)")
        return edit

    def add_box_row(self, box: dict[str, Any]) -> None:
        row = self.boxes.rowCount()
        self.boxes.insertRow(row)
        for col, name in enumerate(BOX_FIELDS):
            self.boxes.setItem(row, col, QTableWidgetItem(to_text(box.get(name, BOX_DEFAULTS.get(name, "")))))

    def add_new_box(self) -> None:
        self.add_box_row({"name": f"box{self.boxes.rowCount() + 1}"})

    def remove_box_row(self) -> None:
        rows = sorted({index.row() for index in self.boxes.selectedIndexes()}, reverse=True)
        for row in rows:
            self.boxes.removeRow(row)

    # -- saving -----------------------------------------------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        """The form as TOML-shaped data for ``update_settings``."""
        out: dict[str, Any] = {}
        for (section, key), widget in self.fields.items():
            if (section, key) in READ_ONLY:
                continue
            like = self.settings.get(section, {}).get(key)
            if isinstance(widget, QCheckBox):
                value: Any = widget.isChecked()
            elif isinstance(widget, QComboBox):
                value = widget.currentText()
            else:
                value = from_text(widget.text(), like)
            out.setdefault(section, {})[key] = value
        boxes = []
        for row in range(self.boxes.rowCount()):
            box: dict[str, Any] = {}
            for col, name in enumerate(BOX_FIELDS):
                item = self.boxes.item(row, col)
                text = item.text() if item is not None else ""
                like = BOX_DEFAULTS.get(name, "")
                if name == "gpus":
                    parts = [p.strip() for p in text.split(",") if p.strip()]
                    box[name] = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
                else:
                    box[name] = from_text(text, like)
            boxes.append(box)
        out["gpu_boxes"] = boxes
        return out

    def save(self) -> None:
        self.save_button.setEnabled(False)
        self.message.setText("Saving…")

        def done(settings: dict[str, Any]) -> None:
            self.save_button.setEnabled(True)
            self.saved += 1
            self.show_settings(settings)
            self.message.setText("Saved and applied.")

        def failed(title: str, message: str) -> None:
            self.save_button.setEnabled(True)
            self.message.setText(f"{title}: {message}")
            self.backend.error.emit(title, message)

        self.backend.call("update_settings", self.collect(), on_done=done, on_error=failed)
