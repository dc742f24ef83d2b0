"""Models: every trained version with its evaluation report (baseline vs candidate), deploy and roll back.

``ModelInfo.eval`` is the ``report.json`` of ``repopilot eval`` (pipelines/evaluate/report.py):
``gate`` {worse, applied, reasons, rule}, ``models`` {role: {path, parameters, context}} and
``splits`` {split: {files, lines, internal_lines, metrics: {name: {baseline, candidate, delta, ci, verdict}}}}
(a single-model report has ``value`` instead of baseline/candidate).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ui.tabs.base import Tab
from ui.widgets import fill_table, human_time, make_table, select_key, selected_key

COLUMNS = ("Version", "Status", "Serving", "Dataset", "Parent", "Created", "Gate", "Train loss")
METRIC_COLUMNS = ("Metric", "Baseline", "Candidate", "Delta", "95% CI", "Verdict")
LOWER_IS_BETTER = {"loss", "perplexity", "bits_per_byte"}


def fmt_metric(value: Any, name: str, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    sign = ("+" if value >= 0 else "-") if signed else ("-" if value < 0 else "")
    magnitude = abs(value)
    if name.endswith("exact_match"):
        return f"{sign}{magnitude * 100:.1f}{' pp' if signed else '%'}"
    if name == "perplexity":
        return f"{sign}{magnitude:.2f}"
    return f"{sign}{magnitude:.4f}"


def gate_text(report: dict[str, Any] | None) -> str:
    if not report:
        return "not evaluated"
    gate = report.get("gate")
    if not gate:
        return "evaluated (no gate)"
    return "FAIL (worse)" if gate.get("worse") else "PASS"


def train_loss(train: dict[str, Any] | None) -> str:
    train = train or {}
    for key in ("eval_loss", "train_loss", "loss", "final_loss"):
        if isinstance(train.get(key), int | float):
            return f"{train[key]:.4f}"
    return "–"


class ModelsTab(Tab):
    title = "Models"
    kinds = frozenset({"model", "job", "server"})

    def __init__(self, backend: Any, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.models: list[Any] = []
        self.model: Any = None
        self.table = make_table(COLUMNS)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        buttons = QHBoxLayout()
        self.deploy_button = QPushButton("Deploy selected")
        self.deploy_button.clicked.connect(self.deploy_selected)
        self.rollback_button = QPushButton("Roll back to the previous model")
        self.rollback_button.clicked.connect(self.rollback)
        buttons.addWidget(self.deploy_button)
        buttons.addWidget(self.rollback_button)
        buttons.addStretch(1)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.table)
        top_layout.addLayout(buttons)

        report = QGroupBox("Evaluation report")
        rlayout = QVBoxLayout(report)
        form = QFormLayout()
        self.gate_label = QLabel("Select a model above.")
        self.gate_label.setWordWrap(True)
        self.compared_label = QLabel("–")
        self.compared_label.setWordWrap(True)
        self.train_label = QLabel("–")
        self.train_label.setWordWrap(True)
        self.split_combo = QComboBox()
        self.split_combo.currentTextChanged.connect(self._show_metrics)
        self.split_label = QLabel("")
        form.addRow("Gate", self.gate_label)
        form.addRow("Compared", self.compared_label)
        form.addRow("Training", self.train_label)
        form.addRow("Split", self.split_combo)
        form.addRow("", self.split_label)
        rlayout.addLayout(form)
        self.metrics = make_table(METRIC_COLUMNS)
        self.metrics.setSelectionMode(self.metrics.SelectionMode.NoSelection)
        rlayout.addWidget(self.metrics, 1)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(report)
        splitter.setSizes([200, 460])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self._update_buttons()

    # -- loading ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.call("list_models", on_done=self._show_models)

    def _show_models(self, models: list[Any]) -> None:
        self.models = list(models)
        rows = [
            (
                m.version,
                m.status,
                "serving" if m.serving else "",
                m.dataset_version or "–",
                m.parent or "base model",
                human_time(m.created_at),
                gate_text(m.eval),
                train_loss(m.train),
            )
            for m in self.models
        ]
        fill_table(self.table, rows, keys=[m.version for m in self.models])
        if selected_key(self.table) is None and self.models:
            select_key(self.table, self.models[0].version)
        else:
            self._selection_changed()
        self.loaded()

    def _selection_changed(self) -> None:
        version = selected_key(self.table)
        self.model = next((m for m in self.models if m.version == version), None)
        self._show_model(self.model)

    def _show_model(self, model: Any) -> None:
        self._update_buttons()
        if model is None:
            return
        report = model.eval or {}
        gate = report.get("gate") or {}
        if not report:
            self.gate_label.setText("Not evaluated yet.")
        else:
            verdict = gate_text(report)
            reasons = "; ".join(str(r) for r in gate.get("reasons", []))
            self.gate_label.setText(f"<b>{verdict}</b>" + (f": {reasons}" if reasons else ""))
        roles = report.get("models") or {}
        self.compared_label.setText(
            ", ".join(f"{role}: {info.get('path', '?')}" for role, info in roles.items()) or "–"
        )
        train = model.train or {}
        parts = [f"{k} {train[k]}" for k in ("steps", "global_step", "train_loss", "eval_loss") if k in train]
        self.train_label.setText(", ".join(parts) or "–")
        current = self.split_combo.currentText()
        self.split_combo.blockSignals(True)
        self.split_combo.clear()
        self.split_combo.addItems(list((report.get("splits") or {}).keys()))
        if current:
            self.split_combo.setCurrentText(current)
        self.split_combo.blockSignals(False)
        self._show_metrics()

    def _show_metrics(self, _split: str = "") -> None:
        report = (self.model.eval if self.model is not None else None) or {}
        split = (report.get("splits") or {}).get(self.split_combo.currentText())
        self.metrics.setRowCount(0)
        if not split:
            self.split_label.setText("")
            return
        self.split_label.setText(
            f"{split.get('files', '?')} files, {split.get('lines', '?')} lines, "
            f"{split.get('internal_lines', '?')} using internal identifiers"
        )
        metrics = split.get("metrics") or {}
        self.metrics.setRowCount(len(metrics))
        for row, (name, entry) in enumerate(metrics.items()):
            ci = entry.get("ci")
            pair = "candidate" in entry
            arrow = "lower" if name in LOWER_IS_BETTER else "higher"
            cells = [
                f"{name} ({arrow} is better)",
                fmt_metric(entry.get("baseline") if pair else entry.get("value"), name),
                fmt_metric(entry.get("candidate"), name) if pair else "–",
                fmt_metric(entry.get("delta"), name, signed=True) if pair else "–",
                "n/a" if not ci else f"{fmt_metric(ci[0], name, pair)} .. {fmt_metric(ci[1], name, pair)}",
                str(entry.get("verdict", "")),
            ]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 5:
                    item.setForeground(QColor(_verdict_color(text)))
                self.metrics.setItem(row, col, item)

    def _update_buttons(self) -> None:
        model = self.model
        self.deploy_button.setEnabled(model is not None and not model.serving)
        self.rollback_button.setEnabled(any(m.serving for m in self.models))

    # -- actions ----------------------------------------------------------------------------------------------
    def deploy_selected(self) -> None:
        version = selected_key(self.table)
        if version is not None:
            self.call("deploy_model", version, on_done=lambda _: self.refresh())

    def rollback(self) -> None:
        self.call("rollback", on_done=lambda _: self.refresh())


def _verdict_color(verdict: str) -> str:
    text = verdict.lower()
    if "worse" in text:
        return "#c0392b"
    if "better" in text:
        return "#1e8449"
    return "#7f8c8d"
