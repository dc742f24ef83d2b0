"""Small shared pieces: formatting, table helpers, the loss chart, the error dialog."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QMessageBox, QTableWidget, QTableWidgetItem, QWidget


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def human_time(timestamp: float | None) -> str:
    if not timestamp:
        return "–"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def short_commit(sha: str | None) -> str:
    return sha[:10] if sha else "–"


def make_table(headers: Sequence[str], parent: QWidget | None = None) -> QTableWidget:
    table = QTableWidget(0, len(headers), parent)
    table.setHorizontalHeaderLabels(list(headers))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    table.setAlternatingRowColors(True)
    return table


def fill_table(table: QTableWidget, rows: Sequence[Sequence[Any]], keys: Sequence[Any] | None = None) -> None:
    """Replace the rows, keeping the selected row's key (column 0's UserRole) selected."""
    selected = selected_key(table)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            item = QTableWidgetItem("" if value is None else str(value))
            if c == 0:
                item.setData(Qt.ItemDataRole.UserRole, keys[r] if keys is not None else value)
            table.setItem(r, c, item)
    if selected is not None:
        for r in range(table.rowCount()):
            if table.item(r, 0).data(Qt.ItemDataRole.UserRole) == selected:
                table.selectRow(r)
                break


def selected_key(table: QTableWidget) -> Any:
    rows = table.selectionModel().selectedRows() if table.selectionModel() else []
    if not rows:
        return None
    item = table.item(rows[0].row(), 0)
    return item.data(Qt.ItemDataRole.UserRole) if item is not None else None


def select_key(table: QTableWidget, key: Any) -> bool:
    for r in range(table.rowCount()):
        if table.item(r, 0).data(Qt.ItemDataRole.UserRole) == key:
            table.selectRow(r)
            return True
    return False


def show_error(parent: QWidget | None, title: str, message: str) -> QMessageBox:
    """A non-blocking error dialog: the title and the message, never a traceback."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("repopilot-error")
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setWindowModality(Qt.WindowModality.NonModal)
    box.show()
    return box


class LossChart(QWidget):
    """Training loss over steps: a line with axes, drawn with QPainter."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[tuple[float, float]] = []
        self.setMinimumSize(320, 180)

    def set_points(self, points: Sequence[Sequence[float]]) -> None:
        self.points = [(float(p[0]), float(p[1])) for p in points if len(p) >= 2 and math.isfinite(float(p[1]))]
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        text = self.palette().text().color()
        left, top, right, bottom = 56.0, 14.0, 12.0, 30.0
        plot = QRectF(left, top, max(10.0, self.width() - left - right), max(10.0, self.height() - top - bottom))
        painter.setPen(QPen(text, 1))
        painter.drawRect(plot)
        if not self.points:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "No loss values yet")
            painter.end()
            return
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x1 == x0:
            x1 = x0 + 1
        pad = (y1 - y0) * 0.08 or max(abs(y0) * 0.05, 0.05)
        y0, y1 = y0 - pad, y1 + pad

        def at(x: float, y: float) -> QPointF:
            return QPointF(
                plot.left() + (x - x0) / (x1 - x0) * plot.width(), plot.bottom() - (y - y0) / (y1 - y0) * plot.height()
            )

        grid = QColor(text)
        grid.setAlpha(50)
        for i in range(5):
            y = y0 + (y1 - y0) * i / 4
            p = at(x0, y)
            painter.setPen(QPen(grid, 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(plot.left(), p.y()), QPointF(plot.right(), p.y()))
            painter.setPen(QPen(text, 1))
            painter.drawText(QRectF(0, p.y() - 8, left - 6, 16), Qt.AlignmentFlag.AlignRight, f"{y:.3g}")
        for i in range(5):
            x = x0 + (x1 - x0) * i / 4
            p = at(x, y0)
            painter.drawText(QRectF(p.x() - 30, plot.bottom() + 4, 60, 16), Qt.AlignmentFlag.AlignHCenter, f"{x:.0f}")
        painter.drawText(QRectF(plot.left(), plot.bottom() + 14, plot.width(), 16), Qt.AlignmentFlag.AlignRight, "step")
        path = QPainterPath(at(*self.points[0]))
        for point in self.points[1:]:
            path.lineTo(at(*point))
        painter.setPen(QPen(QColor("#8e44ad"), 2))
        painter.drawPath(path)
        painter.setBrush(QColor("#8e44ad"))
        for point in self.points[-1:]:
            painter.drawEllipse(at(*point), 3, 3)
        painter.end()
