"""The PySide6 tray app: a thin client of the agent's API (grows in later work)."""
