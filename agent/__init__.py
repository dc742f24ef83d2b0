"""The repopilot agent: the daemon that owns all state and runs the pipelines (see agent/core.py)."""

__version__ = "0.1.0"
