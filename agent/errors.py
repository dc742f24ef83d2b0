"""Every error the agent, its API and its client raise, with the HTTP status and the title each one carries.

The API server answers an error with ``{"error": {"type", "title", "message"}}`` and :func:`http_status`; the
client rebuilds it as the same class from :data:`BY_NAME` (so ``except JobError`` works the same in process
and over HTTP). Both read this one table; nothing guesses a status from a title.
"""

from __future__ import annotations

from pipelines.errors import DatasetError, InputError, RepoError, RepopilotError

NOT_RUNNING = "The repopilot agent is not running. Start it with `repopilot agent start`."


class AgentError(RepopilotError):
    """The agent's state refuses the request (a retrain already pending, nothing to roll back...)."""

    title = "Agent problem"
    status = 409


class NotFoundError(RepopilotError):
    """The request names a job, model, repository or GPU box the agent does not know."""

    title = "Not found"
    status = 404


class JobError(RepopilotError):
    """A job does not exist or cannot make the change asked for in its state."""

    title = "Job problem"
    status = 409


class UnknownJob(NotFoundError, JobError):
    title = "Unknown job"


class StoreError(RepopilotError):
    """The state database is unreadable, too new, or was asked for something it does not hold."""

    title = "Agent state problem"
    status = 500


class UnknownRecord(NotFoundError, StoreError):
    """No repository or model by that name."""


class StackError(RepopilotError):
    """The completion server cannot start, stop, swap or answer."""

    title = "Completion server problem"
    status = 409


class ExecutorError(RepopilotError):
    """A box cannot run the job (unreachable, not set up, out of disk...)."""

    title = "Training box problem"
    status = 409


class UnknownBox(NotFoundError, ExecutorError):
    title = "Unknown GPU box"


class StepError(RepopilotError):
    """A job's pipeline step failed (its log says why)."""

    title = "Job failed"
    status = 500


class ApiError(RepopilotError):
    """The agent's HTTP API cannot serve (its port is taken...)."""

    title = "Agent API problem"
    status = 500


class DaemonError(RepopilotError):
    """The agent's process did not start or answer."""

    title = "Agent did not start"
    status = 500


class AgentNotRunning(RepopilotError):
    """The client finds no agent to talk to."""

    title = "Agent not running"
    status = 503

    def __init__(self, message: str = NOT_RUNNING, *, title: str | None = None) -> None:
        super().__init__(message, title=title)


# The pipelines' errors (a layer below, which knows nothing of HTTP) and their statuses.
_PIPELINE_STATUS: dict[type[RepopilotError], int] = {RepopilotError: 500, InputError: 400}

ERRORS: tuple[type[RepopilotError], ...] = (
    RepopilotError,
    InputError,
    RepoError,
    DatasetError,
    AgentError,
    NotFoundError,
    JobError,
    UnknownJob,
    StoreError,
    UnknownRecord,
    StackError,
    ExecutorError,
    UnknownBox,
    StepError,
    ApiError,
    DaemonError,
    AgentNotRunning,
)
BY_NAME: dict[str, type[RepopilotError]] = {cls.__name__: cls for cls in ERRORS}
"""The classes the client rebuilds an error answer as, by the ``type`` the server sent."""


def http_status(exc: RepopilotError) -> int:
    """400 for bad input, 404 for an unknown job/model/repo/box, 409 for a request the agent's state refuses,
    500 for the rest: the status of the nearest class (in method resolution order) that declares one."""
    for cls in type(exc).__mro__:
        if "status" in vars(cls):
            return int(vars(cls)["status"])
        if cls in _PIPELINE_STATUS:
            return _PIPELINE_STATUS[cls]
    return 500
