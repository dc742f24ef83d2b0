"""Jobs: the queue with progress and ETA; for the selected job a loss chart, its log tail, cancel and retry."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from agent.api.models import ACTIVE, RETRYABLE, JobState
from ui.tabs.base import Tab
from ui.widgets import LossChart, fill_table, human_duration, human_time, make_table, select_key, selected_key

COLUMNS = ("Job", "Kind", "State", "Progress", "ETA", "Message", "Created", "Took")


def job_fraction(job: Any) -> float | None:
    if job.state == "done":
        return 1.0
    value = (job.progress or {}).get("fraction")
    return float(value) if isinstance(value, int | float) else None


def job_eta(job: Any) -> float | None:
    if job.state != JobState.RUNNING:
        return None
    value = (job.progress or {}).get("eta_s")
    return float(value) if isinstance(value, int | float) else None


def job_message(job: Any) -> str:
    if job.error is not None:
        return f"{job.error.title}: {job.error.message}".splitlines()[0]
    progress = job.progress or {}
    if progress.get("message"):
        return str(progress["message"])
    return str((job.params or {}).get("reason", ""))


def job_took(job: Any) -> str:
    if job.started_at is None:
        return "–"
    return human_duration((job.finished_at or time.time()) - job.started_at)


def _row_bar(fraction: float | None, state: str) -> QProgressBar:
    bar = QProgressBar()
    bar.setRange(0, 0 if fraction is None and state == JobState.RUNNING else 100)
    bar.setValue(int((fraction or 0.0) * 100))
    bar.setTextVisible(True)
    bar.setFormat(f"{state}" if fraction is None else "%p%")
    return bar


class JobsTab(Tab):
    title = "Jobs"
    kinds = frozenset({"job"})

    def __init__(self, backend: Any, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.jobs: list[Any] = []
        self.job: Any = None
        self.log_text = ""
        self.table = make_table(COLUMNS)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.pinned = False
        """The user picked a job: stop following the running one."""
        self.table.clicked.connect(self._pin)

        detail = QGroupBox("Selected job")
        dlayout = QVBoxLayout(detail)
        form = QFormLayout()
        self.title_label = QLabel("Select a job above.")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setFormat("%p%")
        self.eta_label = QLabel("–")
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("Job", self.title_label)
        form.addRow("Progress", self.progress_bar)
        form.addRow("ETA", self.eta_label)
        form.addRow("Problem", self.error_label)
        dlayout.addLayout(form)
        buttons = QHBoxLayout()
        self.cancel_button = QPushButton("Cancel job")
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.retry_button = QPushButton("Retry job")
        self.retry_button.clicked.connect(self.retry_selected)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        for button in (self.cancel_button, self.retry_button, self.refresh_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        dlayout.addLayout(buttons)
        charts = QSplitter(Qt.Orientation.Horizontal)
        self.chart = LossChart()
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setPlaceholderText("Log tail of the selected job")
        charts.addWidget(self.chart)
        charts.addWidget(self.log_view)
        dlayout.addWidget(charts, 1)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(detail)
        splitter.setSizes([220, 420])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self._update_buttons()
        self._ticker = QTimer(self)  # a running job's log and chart move without events for each line
        self._ticker.setInterval(3000)
        self._ticker.timeout.connect(self._tick)
        self._ticker.start()

    # -- loading ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.call("list_jobs", on_done=self._show_jobs)
        self.load_selected()

    def _show_jobs(self, jobs: list[Any]) -> None:
        self.jobs = list(jobs)
        rows = []
        for job in self.jobs:
            fraction = job_fraction(job)
            rows.append(
                (
                    job.id,
                    job.kind,
                    job.state,
                    "–" if fraction is None else f"{fraction * 100:.0f}%",
                    human_duration(job_eta(job)) if job_eta(job) is not None else "–",
                    job_message(job),
                    human_time(job.created_at),
                    job_took(job),
                )
            )
        fill_table(self.table, rows, keys=[j.id for j in self.jobs])
        for r, job in enumerate(self.jobs):
            self.table.setCellWidget(r, 3, _row_bar(job_fraction(job), job.state))
        running = [j for j in self.jobs if j.state == JobState.RUNNING]
        if self.jobs and (selected_key(self.table) is None or (running and not self.pinned)):
            select_key(self.table, (running or self.jobs)[0].id)
        self.loaded()

    def _pin(self, _index: object) -> None:
        self.pinned = True

    def _selection_changed(self) -> None:
        job_id = selected_key(self.table)
        if job_id is not None and (self.job is None or self.job.id != job_id):
            self.job = next((j for j in self.jobs if j.id == job_id), None)
            self._show_job(self.job)
            self.load_selected()

    def load_selected(self) -> None:
        job_id = selected_key(self.table)
        if job_id is None:
            return
        self.call("get_job", job_id, on_done=self._show_job)
        self.call("job_log", job_id, 200, on_done=lambda text, i=job_id: self._show_log(i, text))

    def _show_job(self, job: Any) -> None:
        if job is None:
            return
        if selected_key(self.table) not in (None, job.id):
            return  # an answer for a job no longer selected
        self.job = job
        self.title_label.setText(f"{job.id} ({job.kind}): {job.state}")
        fraction = job_fraction(job)
        if fraction is None and job.state == JobState.RUNNING:
            self.progress_bar.setRange(0, 0)  # busy indicator
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int((fraction or 0.0) * 1000))
        eta = job_eta(job)
        self.eta_label.setText(
            human_duration(eta) if eta is not None else ("–" if job.state != JobState.RUNNING else "unknown")
        )
        self.error_label.setText("" if job.error is None else f"{job.error.title}: {job.error.message}")
        self.chart.set_points(job.losses or [])
        self._update_buttons()

    def _show_log(self, job_id: int, text: str) -> None:
        if selected_key(self.table) != job_id:
            return
        self.log_text = text
        bar = self.log_view.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        self.log_view.setPlainText(text)
        if at_end:
            bar.setValue(bar.maximum())

    def _update_buttons(self) -> None:
        state = self.job.state if self.job is not None else None
        self.cancel_button.setEnabled(state in ACTIVE)
        self.retry_button.setEnabled(state in RETRYABLE)

    def _tick(self) -> None:
        if self.isVisible() and self.job is not None and self.job.state == JobState.RUNNING:
            self.load_selected()

    # -- actions ----------------------------------------------------------------------------------------------
    def cancel_selected(self) -> None:
        job_id = selected_key(self.table)
        if job_id is not None:
            self.call("cancel_job", job_id, on_done=lambda _: self.refresh())

    def retry_selected(self) -> None:
        job_id = selected_key(self.table)
        if job_id is not None:
            self.call("retry_job", job_id, on_done=lambda _: self.refresh())
