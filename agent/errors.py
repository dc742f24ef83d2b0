"""The error family clients (the CLI verbs, the tray app) catch: every error has a title and a message."""

from pipelines.errors import InputError, RepoError, RepopilotError

__all__ = ["InputError", "RepoError", "RepopilotError"]
