"""What every dashboard tab shares: the backend, a refresh on the events it cares about, busy tracking."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QWidget

from ui.backend import Backend


class Tab(QWidget):
    title = ""
    kinds: frozenset[str] = frozenset()
    """Event kinds that make this tab re-read the agent."""

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.loads = 0
        """Completed loads (tests wait on it)."""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.refresh)

    def on_events(self, events: list[Any]) -> None:
        if any(e.kind in self.kinds for e in events):
            self.schedule_refresh()

    def schedule_refresh(self) -> None:
        """Refresh soon, once for a burst of events."""
        if not self._timer.isActive():
            self._timer.start()

    def refresh(self) -> None:
        raise NotImplementedError

    def loaded(self) -> None:
        self.loads += 1

    def call(self, method: str, *args: Any, on_done: Any = None, **kwargs: Any) -> None:
        """A call whose errors go to the dashboard's error dialog."""
        self.backend.call(method, *args, on_done=on_done, **kwargs)
