"""The PySide6 tray app and dashboard: a thin client of the agent's API (see ui/app.py)."""

__version__ = "0.1.0"
