"""The agent's event log: what changed, kept in memory for long-poll and SSE readers."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from agent.api.models import Event, EventBatch


class EventLog:
    """The last events in memory; readers wait for ones newer than their cursor (long-poll)."""

    def __init__(self, keep: int = 2000) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self._seq = 0
        self._cond = threading.Condition()

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        with self._cond:
            self._seq += 1
            self._events.append(Event(self._seq, time.time(), kind, data))
            self._cond.notify_all()

    def wait(self, since: int, timeout: float) -> EventBatch:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while self._seq <= since:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if since > self._seq:  # the agent restarted: the client's cursor is from an older life
                since = 0
            return EventBatch(self._seq, [e for e in self._events if e.seq > since])
