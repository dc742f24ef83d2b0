"""What the agent's API returns: plain dataclasses and enums, the same in-process and over HTTP.

:func:`to_json` turns any of them (or lists/dicts of them) into JSON-ready values; :func:`from_json`
builds them back from such values with the type hints as the schema. The HTTP client and the GUI use
these types only, never the store's rows.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class JobKind(str, enum.Enum):
    """What a job does."""

    DATASET = "dataset"
    TRAIN = "train"
    EVAL = "eval"
    CONVERT = "convert"
    DEPLOY = "deploy"


class JobState(str, enum.Enum):
    """Where a job stands."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE = frozenset({JobState.QUEUED, JobState.RUNNING})
RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED})


class AgentState(str, enum.Enum):
    """The one-word state the tray icon shows."""

    IDLE = "idle"
    INDEXING = "indexing"
    TRAINING = "training"
    EVALUATING = "evaluating"
    CONVERTING = "converting"
    DEPLOYING = "deploying"
    ERROR = "error"


@dataclass(frozen=True)
class ServerInfo:
    """The completion server (embedded engine or the docker stack)."""

    running: bool
    """A server process / the stack's containers are up."""
    healthy: bool
    """It answers health checks."""
    runtime: str
    """``embedded`` or ``docker``."""
    url: str
    """Base URL for clients, e.g. ``http://127.0.0.1:5000/v1``."""
    model: str | None
    """Model version it serves (None: none deployed yet)."""
    detail: str
    """One line for people."""
    services: list[ServiceInfo] = field(default_factory=list)
    """Per service state (docker: triton and the API; embedded: one)."""


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    running: bool
    healthy: bool
    detail: str


@dataclass(frozen=True)
class AgentStatus:
    """What the tray shows at a glance."""

    state: AgentState
    detail: str
    """E.g. ``training v3: step 120/300, ETA 2 min`` or the last error's message."""
    progress: float | None
    """0..1 of the running job when known."""
    paused: bool
    """Watching is paused (no automatic dataset updates / retrains)."""
    repos: int
    jobs_queued: int
    running_job: int | None
    serving_model: str | None
    server_running: bool
    last_error: ErrorInfo | None
    pid: int
    version: str


@dataclass(frozen=True)
class ErrorInfo:
    """An error as people see it: a title and a message (plus the failed job, if any)."""

    title: str
    message: str
    job: int | None = None


@dataclass(frozen=True)
class RepoInfo:
    name: str
    path: str
    ref: str
    include: list[str]
    exclude: list[str]
    last_indexed_commit: str | None
    head_commit: str | None
    """Where the watched ref is now (None: the repo is gone or unreadable)."""
    problem: str | None
    """Why the repo cannot be read right now, if so."""
    files_kept: int | None = None
    """Files of this repo in the dataset."""
    bytes_kept: int | None = None
    """Bytes of this repo's text in the dataset (None for datasets built before repos were counted)."""


@dataclass(frozen=True)
class DatasetInfo:
    version: str | None
    path: str | None
    files_kept: int
    bytes_kept: int
    files_dropped: int
    dropped: dict[str, int]
    languages: dict[str, int]
    """Files kept per language."""
    redactions: dict[str, int]
    changed_files_since_serving: int
    changed_lines_since_serving: int
    retrain_decision: str
    """Why the policy would or would not retrain now."""


@dataclass(frozen=True)
class JobInfo:
    id: int
    kind: str
    state: str
    params: dict[str, Any]
    depends_on: list[int]
    resource: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: ErrorInfo | None
    result: dict[str, Any] | None
    progress: dict[str, Any] | None
    """Last progress line: ``fraction`` (0..1), ``eta_s``, ``message``, ``step``, ``loss`` ... when known."""
    losses: list[list[float]] = field(default_factory=list)
    """Training jobs: ``[step, loss]`` pairs for the loss chart (only from :meth:`Agent.get_job`)."""


@dataclass(frozen=True)
class ModelInfo:
    version: str
    parent: str | None
    dataset_version: str | None
    status: str
    created_at: float
    serving: bool
    run_dir: str
    model_dir: str
    converted_dirs: dict[str, str]
    train: dict[str, Any]
    """result.json of the training run (steps, train/eval loss...)."""
    eval: dict[str, Any] | None
    """The evaluation report: ``baseline`` and ``candidate`` metrics, ``gate`` verdict (None: not evaluated)."""


@dataclass(frozen=True)
class Event:
    """One change, for the event stream. ``kind``: status, job, repo, model, server, notification."""

    seq: int
    time: float
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class EventBatch:
    cursor: int
    """Pass it as ``since`` to get the next events."""
    events: list[Event]


# -- JSON --------------------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """JSON-ready form of dataclasses, enums, lists, tuples and dicts of them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(tp: Any, value: Any) -> Any:
    """Build a value of type ``tp`` (a hint such as ``list[JobInfo]`` or ``ModelInfo | None``) from JSON."""
    if isinstance(tp, str):
        tp = _resolve(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                return from_json(arg, value)
    if tp is Any or tp is None or value is None:
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [from_json(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: from_json(item, v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: from_json(hints[k], v) for k, v in value.items() if k in names})
    return value


def _resolve(name: str) -> Any:
    return eval(name, vars(sys.modules[__name__]))  # type hints of this module only
