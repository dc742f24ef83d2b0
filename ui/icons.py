"""The tray icon, drawn with QPainter: a colored disc per state, a progress ring, a glyph. No image files."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPen, QPixmap

DISCONNECTED = "disconnected"
"""Not an agent state: the app cannot reach the agent (yet)."""
SERVING = "serving"
"""Idle with the completion server up."""


@dataclass(frozen=True)
class Look:
    color: str
    glyph: str
    label: str


LOOKS: dict[str, Look] = {
    "idle": Look("#7f8c8d", "R", "Idle"),
    SERVING: Look("#27ae60", "R", "Serving"),
    "indexing": Look("#2980b9", "I", "Indexing"),
    "training": Look("#8e44ad", "T", "Training"),
    "evaluating": Look("#d68910", "E", "Evaluating"),
    "converting": Look("#16a085", "C", "Converting"),
    "deploying": Look("#2471a3", "D", "Deploying"),
    "error": Look("#c0392b", "!", "Error"),
    DISCONNECTED: Look("#5d6d7e", "?", "Agent not running"),
}
SIZES = (16, 22, 24, 32, 48, 64)


def look_key(state: str, server_running: bool) -> str:
    """Which look a status gets: idle with the server up reads as ``serving``."""
    if state == "idle" and server_running:
        return SERVING
    return state if state in LOOKS else "idle"


def state_pixmap(key: str, progress: float | None = None, size: int = 64, paused: bool = False) -> QPixmap:
    """One rendering of the state ``key`` (see :data:`LOOKS`) with an optional 0..1 progress ring."""
    look = LOOKS.get(key, LOOKS["idle"])
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    ring = max(2.0, size / 9)
    outer = QRectF(ring / 2, ring / 2, size - ring, size - ring)
    color = QColor(look.color)
    if progress is not None:
        painter.setPen(QPen(color.lighter(170), ring))
        painter.drawEllipse(outer)
        painter.setPen(_pen(color, ring))
        span = -int(360 * 16 * min(max(progress, 0.0), 1.0))
        painter.drawArc(outer, 90 * 16, span)
        inner = outer.adjusted(ring * 1.2, ring * 1.2, -ring * 1.2, -ring * 1.2)
    else:
        inner = outer.adjusted(ring * 0.2, ring * 0.2, -ring * 0.2, -ring * 0.2)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(color)
    painter.drawEllipse(inner)
    font = QFont()
    font.setBold(True)
    font.setPixelSize(max(6, int(inner.height() * 0.62)))
    painter.setFont(font)
    painter.setPen(QColor("white"))
    painter.drawText(inner, Qt.AlignmentFlag.AlignCenter, look.glyph)
    if paused:  # two bars in the lower right corner
        bar = size / 8
        painter.setBrush(QColor("#f4d03f"))
        painter.setPen(Qt.PenStyle.NoPen)
        for i in range(2):
            left = size - 3.4 * bar + i * 1.6 * bar
            painter.drawRect(QRectF(QPointF(left, size - 3 * bar), QPointF(left + bar, size)))
    painter.end()
    return pixmap


def _pen(color: QColor, width: float) -> QPen:
    pen = QPen(color.darker(120), width)
    pen.setCapStyle(Qt.PenCapStyle.FlatCap)
    return pen


def state_icon(key: str, progress: float | None = None, paused: bool = False) -> QIcon:
    icon = QIcon()
    for size in SIZES:
        icon.addPixmap(state_pixmap(key, progress, size, paused))
    return icon
