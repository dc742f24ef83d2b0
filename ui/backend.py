"""The UI's only door to the agent: every call runs on a worker thread and comes back as a Qt signal.

:class:`Backend` wraps "an object with the Agent API" (the in-process :class:`agent.core.Agent` or the
HTTP :class:`agent.api.client.AgentClient`; duck typed). ``backend.call("list_jobs", on_done=...)``
runs the method on a :class:`QThreadPool` and calls ``on_done(result)`` (or ``on_error(title, message)``)
back on the UI thread. An event thread long-polls ``wait_events`` and re-reads ``status()`` after each
batch, so the tray and the dashboard follow the agent without ever blocking the window.

Errors are converted once, here: a ``RepopilotError`` keeps its title and message; anything else
becomes a one-line message (the traceback goes to the log, never to the user).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from agent.api.spec import AgentApi

log = logging.getLogger(__name__)

Api = AgentApi
"""The agent's API (``status()``, ``wait_events()``, ``add_repo()`` ...): the HTTP client, or an Agent in tests."""
OnDone = Callable[[Any], None]
OnError = Callable[[str, str], None]


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(title, message)`` for people: the RepopilotError's own, else a short generic one."""
    title = getattr(exc, "title", None)
    message = getattr(exc, "message", None)
    if isinstance(title, str) and isinstance(message, str):
        return title, message
    if isinstance(exc, ConnectionError | OSError | TimeoutError):
        return "Agent unreachable", f"Cannot talk to the repopilot agent ({exc.__class__.__name__}: {exc})."
    return "Unexpected error", f"{exc.__class__.__name__}: {exc}"


class _Call(QRunnable):
    def __init__(self, backend: Backend, token: int, api: Api, method: str, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.backend, self.token, self.api = backend, token, api
        self.method, self.args, self.kwargs = method, args, kwargs

    def run(self) -> None:
        try:
            value = getattr(self.api, self.method)(*self.args, **self.kwargs)
        except Exception as exc:  # every failure reaches the UI as title + message
            if not hasattr(exc, "title"):
                log.exception("agent call %s failed", self.method)
            self.backend._emit_finished(self.token, False, describe_error(exc))
            return
        self.backend._emit_finished(self.token, True, value)


class Backend(QObject):
    """Agent calls off the UI thread, plus the event stream as signals."""

    status_changed = Signal(object)
    """An :class:`agent.api.models.AgentStatus` (after start and after every event batch)."""
    events_arrived = Signal(object)
    """A list of :class:`agent.api.models.Event`."""
    notification = Signal(str, str)
    """title, message of a ``notification`` event (model deployed, job failed...)."""
    connection_changed = Signal(bool, str)
    """connected, detail (the agent became reachable / unreachable)."""
    error = Signal(str, str)
    """title, message of a failed call that had no ``on_error`` of its own."""
    busy_changed = Signal(int)
    """How many calls are in flight."""
    _finished = Signal(object)
    """(token, ok, value) of a call, from a worker thread to the UI thread."""
    _status_from_thread = Signal(object)

    def __init__(
        self,
        api: Api | None = None,
        connect: Callable[[], Api] | None = None,
        poll_timeout: float = 20.0,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        if api is None and connect is None:
            raise ValueError("Backend needs an api object or a connect() factory")
        self.api = api
        self._connect = connect
        self.poll_timeout = poll_timeout
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(4)
        self._tokens = itertools.count(1)
        self._pending: dict[int, tuple[OnDone | None, OnError | None]] = {}
        self._finished.connect(self._on_finished)
        self._status_from_thread.connect(self._set_status)
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.connected = api is not None
        self.last_status: Any = None
        self.last_error: tuple[str, str] | None = None

    # -- calls -----------------------------------------------------------------------------------------------
    def call(
        self, method: str, *args: Any, on_done: OnDone | None = None, on_error: OnError | None = None, **kwargs: Any
    ) -> int:
        """Run ``api.method(*args, **kwargs)`` on a worker; the callbacks run on the UI thread."""
        token = next(self._tokens)
        self._pending[token] = (on_done, on_error)
        self.busy_changed.emit(len(self._pending))
        if self.api is None:
            self._finished.emit((token, False, ("Agent not connected", "The repopilot agent is still starting.")))
            return token
        self.pool.start(_Call(self, token, self.api, method, args, kwargs))
        return token

    def _emit_finished(self, token: int, ok: bool, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the backend was deleted while the call ran (app quitting)
            self._finished.emit((token, ok, value))

    @Slot(object)
    def _on_finished(self, outcome: tuple[int, bool, Any]) -> None:
        token, ok, value = outcome
        on_done, on_error = self._pending.pop(token, (None, None))
        self.busy_changed.emit(len(self._pending))
        if ok:
            if on_done is not None:
                on_done(value)
            return
        title, message = value
        self.last_error = (title, message)
        if on_error is not None:
            on_error(title, message)
        else:
            self.error.emit(title, message)

    def refresh_status(self) -> None:
        self.call("status", on_done=self._set_status, on_error=lambda t, m: None)

    def _set_status(self, status: Any) -> None:
        self.last_status = status
        self.status_changed.emit(status)

    # -- event stream ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the event thread (it connects first when the backend has no api yet)."""
        if self._poller is not None and self._poller.is_alive():
            return
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="repopilot-ui-events", daemon=True)
        self._poller.start()

    def stop(self, wait: float = 0.0) -> None:
        """Stop the event thread; it ends at its next wake-up (``wait``: seconds to wait for that)."""
        self._stop.set()
        if wait and self._poller is not None:
            self._poller.join(wait)
        self.pool.clear()
        if wait:
            self.pool.waitForDone(int(wait * 1000))

    def _signal(self, signal: Any, *args: Any) -> None:
        if self._stop.is_set():
            return
        try:
            signal.emit(*args)
        except RuntimeError:  # deleted underneath us while quitting
            self._stop.set()

    def _poll(self) -> None:
        cursor, backoff = 0, 0.5
        while not self._stop.is_set():
            try:
                if self.api is None:
                    assert self._connect is not None
                    self.api = self._connect()
                    cursor = 0
                if not self.connected:
                    self.connected = True
                    self._signal(self.connection_changed, True, "connected")
                status = self.api.status()
                self._signal(self._status_from_thread, status)
                batch = self.api.wait_events(since=cursor, timeout=self.poll_timeout)
                cursor = batch.cursor
                backoff = 0.5
                if batch.events:
                    self._signal(self.events_arrived, list(batch.events))
                    for event in batch.events:
                        if event.kind == "notification":
                            data = event.data or {}
                            self._signal(self.notification, str(data.get("title", "")), str(data.get("message", "")))
            except Exception as exc:  # the agent went away: say so, then reconnect (starting it) with backoff
                title, message = describe_error(exc)
                if self.connected or backoff == 0.5:
                    log.warning("agent events: %s: %s", title, message)
                if self.connected:
                    self.connected = False
                    self._signal(self.connection_changed, False, f"{title}: {message}")
                if self._connect is not None:
                    self.api = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` (for scripts without an event loop of their own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
