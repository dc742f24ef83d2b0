"""One error family for the whole project.

Every error a user can meet carries a short title and a message that says what to do. The CLI prints
``title: message`` and exits 1; the agent's API and the GUI show the same two strings.
"""

from __future__ import annotations


class RepopilotError(Exception):
    """An error with a title and an actionable message, shown to users as is."""

    title = "repopilot error"

    def __init__(self, message: str, *, title: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if title is not None:
            self.title = title

    def __str__(self) -> str:
        return f"{self.title}: {self.message}"


class InputError(RepopilotError):
    """The user asked for something that cannot be done with what was given."""

    title = "Invalid input"


class RepoError(InputError):
    """A git repository is missing, empty, or lacks the ref asked for."""

    title = "Repository problem"


class DatasetError(RepopilotError):
    """A dataset directory is missing, corrupt, or was built with other settings."""

    title = "Dataset problem"
