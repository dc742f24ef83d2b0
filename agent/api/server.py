"""The agent's HTTP API: a stdlib server on 127.0.0.1 that only forwards to :class:`~agent.core.Agent`.

Every request must carry ``Authorization: Bearer <token>`` (the token lives in the data folder, mode 0600,
readable by this user only) and a ``Host`` header naming this server (``127.0.0.1:<port>`` or
``localhost:<port>``), which keeps web pages from reaching the API through DNS rebinding.

Routes:

- ``POST /api/v1/<method>`` with a JSON object of keyword arguments calls one of :data:`agent.api.spec.RPC_METHODS`;
  the answer is ``{"result": ...}`` (the :mod:`agent.api.models` value as JSON).
- ``GET /api/v1/events?since=N&timeout=S``: long-poll; answers an ``EventBatch`` once there is an event after
  ``N`` or ``S`` seconds passed.
- ``GET /api/v1/events/stream?since=N``: Server-Sent Events (``id``, ``event: <kind>``, ``data: <Event JSON>``)
  with heartbeat comments.

Failures answer ``{"error": {"type", "title", "message"}}`` with a fitting status; a traceback goes to the log,
never into a response.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import os
import secrets
import threading
import time
import types
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.api import API_PREFIX
from agent.api.models import to_json
from agent.api.spec import METHODS, RPC_METHODS, hints
from agent.errors import ApiError, http_status
from pipelines.errors import InputError, RepopilotError
from pipelines.fsutil import write_json_atomic
from pipelines.jsonbody import MalformedJson, parse_json

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_BODY = 1 << 20
MAX_POLL_S = 60.0
TOKEN_BYTES = 32


# -- token and endpoint files ------------------------------------------------------------------------------


def ensure_token(path: Path) -> str:
    """The API token stored at ``path``; made on first use (mode 0600, written atomically) and reused after."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text(encoding="ascii").strip()
        if len(token) >= 32:
            if path.stat().st_mode & 0o077:
                log.warning("%s was readable by others; made it private (0600)", path)
                os.chmod(path, 0o600)
            return token
    token = secrets.token_urlsafe(TOKEN_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return token


def write_endpoint(path: Path, url: str, port: int) -> None:
    """Tell clients where the running agent listens: ``{"url", "pid", "port"}``."""
    write_json_atomic(Path(path), {"url": url, "pid": os.getpid(), "port": port})


def remove_endpoint(path: Path) -> None:
    """Remove the endpoint file if this process wrote it."""
    try:
        written_by = json.loads(Path(path).read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if written_by == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()


# -- errors as HTTP ----------------------------------------------------------------------------------------

MAX_CONNECTIONS = 64


def error_body(kind: str, title: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "title": title, "message": message}}


class _Refused(Exception):
    """Answer this status and error body (raised before the agent is involved)."""

    def __init__(self, status: int, kind: str, title: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(kind, title, message), headers or {}


# -- the server --------------------------------------------------------------------------------------------


class ApiServer:
    """Serves ``agent`` on ``127.0.0.1:port`` (0: any free port) in a background thread."""

    def __init__(self, agent: Any, token: str, port: int = 7421, heartbeat_s: float = 15.0) -> None:
        self.agent = agent
        self.token = token
        self.heartbeat_s = heartbeat_s
        self.closing = threading.Event()
        try:
            self._httpd = _HttpServer((LOOPBACK, port), _Handler)
        except OSError as exc:
            raise ApiError(
                f"cannot listen on {LOOPBACK}:{port}: {exc.strerror or exc}. Another program (or another user's "
                "agent) may use that port; set another `api_port` under [agent] in the config file.",
                title="Agent port in use",
            ) from exc
        self._httpd.api = self
        self.port: int = self._httpd.server_address[1]
        self.allowed_hosts = {f"{LOOPBACK}:{self.port}", f"localhost:{self.port}"}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="agent-api", daemon=True)
        self._thread.start()
        log.info("API listening on %s", self.url)
        return self

    def stop(self) -> None:
        self.closing.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    # -- request checks and dispatch (called from the handler threads) -----------------------------------------
    def check_request(self, headers: Any) -> None:
        host = (headers.get("Host") or "").strip().lower()
        if host not in self.allowed_hosts:
            raise _Refused(
                403,
                "ForbiddenHost",
                "Request refused",
                f"the Host header {host or '(none)'!r} is not this agent; use {self.url}",
            )
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise _Refused(
                401,
                "Unauthorized",
                "Not authorized",
                "send the agent's token (the file agent.token in its data folder) as `Authorization: Bearer <token>`",
                {"WWW-Authenticate": 'Bearer realm="repopilot-agent"'},
            )

    def call(self, method: str, kwargs: Any) -> Any:
        if method not in RPC_METHODS:
            raise _Refused(404, "NotFound", "Unknown API method", f"{method!r} is not a method of the agent's API")
        if not isinstance(kwargs, dict):
            raise InputError(f"the body of {method} must be a JSON object of arguments", title="Bad request")
        try:
            inspect.signature(METHODS[method]).bind(None, **kwargs)  # None: the API's self
        except TypeError as exc:
            raise InputError(f"{method}: {exc}", title="Bad request") from None
        check_arguments(method, kwargs)
        return getattr(self.agent, method)(**kwargs)


def check_arguments(method: str, kwargs: dict[str, Any]) -> None:
    """Refuse arguments whose JSON type is not the one the API declares (a 400 naming the argument, instead
    of an error deep inside the agent)."""
    declared = hints(method)
    for name, value in kwargs.items():
        hint = declared.get(name, Any)
        if not _matches(value, hint):
            raise InputError(
                f"{method}: {name} must be {_describe(hint)}, not {json.dumps(value)[:60]}", title="Bad request"
            )


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str) and "\0" not in value
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0] if args else Any) for v in value)
    if origin is dict:
        key, item = args if args else (Any, Any)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    return True  # a type JSON cannot carry: the method checks it


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    names = {str: "a string (without NUL)", int: "a 64-bit integer", float: "a number", bool: "true or false"}
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (list, dict):
        return "an array" if typing.get_origin(hint) is list else "an object"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stopping must not wait for open long-polls and event streams
    allow_reuse_address = True
    api: ApiServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most MAX_CONNECTIONS at once: more are closed at once."""
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "repopilot-agent"
    timeout = 60  # a connection idle (or slow to send its request) this long frees its thread
    server: _HttpServer

    # -- plumbing ----------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, body: Any) -> None:
        api = self.server.api
        try:
            api.check_request(self.headers)
            body()
        except _Refused as refused:
            self.close_connection = True  # an unread request body must not be taken for the next request
            self._send_json(refused.status, refused.body, refused.headers)
        except RepopilotError as exc:
            self._send_json(http_status(exc), error_body(type(exc).__name__, exc.title, exc.message))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("API request %s %s failed", self.command, self.path)
            message = f"{type(exc).__name__}: {exc}. This is a bug in repopilot; the agent log has the details."
            self._send_json(500, error_body(type(exc).__name__, "Internal agent error", message))

    def _not_allowed(self) -> None:
        def refuse() -> None:
            raise _Refused(405, "MethodNotAllowed", "Method not allowed", f"{self.command} is not used by this API")

        self._handle(refuse)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed

    # -- routes ------------------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._handle(self._post)

    def do_GET(self) -> None:
        self._handle(self._get)

    def _post(self) -> None:
        route = urlsplit(self.path).path
        if not route.startswith(API_PREFIX):
            raise _Refused(404, "NotFound", "Not found", f"no route {route}")
        kwargs = self._read_json()
        result = self.server.api.call(route[len(API_PREFIX) :], kwargs)
        self._send_json(200, {"result": to_json(result)})

    def _read_json(self) -> Any:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise _Refused(411, "LengthRequired", "Bad request", "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _Refused(400, "BadRequest", "Bad request", "Content-Length is not a number") from None
        if length < 0:
            raise _Refused(400, "BadRequest", "Bad request", "Content-Length must not be negative")
        if length > MAX_BODY:
            raise _Refused(413, "TooLarge", "Request too large", f"the body may be {MAX_BODY} bytes at most")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            return parse_json(raw)
        except MalformedJson as exc:
            raise InputError(exc.message, title="Bad request") from None

    def _get(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == API_PREFIX + "events":
            since = _int_arg(query, "since", 0)
            timeout = min(max(_float_arg(query, "timeout", 25.0), 0.0), MAX_POLL_S)
            self._send_json(200, {"result": to_json(self.server.api.agent.wait_events(since, timeout))})
        elif parts.path == API_PREFIX + "events/stream":
            last_id = self.headers.get("Last-Event-ID")
            since = _int_arg({"since": [last_id]}, "since", 0) if last_id else _int_arg(query, "since", 0)
            self._stream(since)
        else:
            raise _Refused(404, "NotFound", "Not found", f"no route GET {parts.path} (API methods are POSTed)")

    def _stream(self, since: int) -> None:
        api = self.server.api
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"retry: 3000\n: connected\n\n")
        self.wfile.flush()
        cursor = since
        while not api.closing.is_set():
            batch = api.agent.wait_events(cursor, api.heartbeat_s)
            chunks = [
                f"id: {e.seq}\nevent: {e.kind}\ndata: {json.dumps(to_json(e), default=str)}\n\n" for e in batch.events
            ]
            self.wfile.write("".join(chunks).encode("utf-8") if chunks else f": {time.time():.0f}\n\n".encode())
            self.wfile.flush()
            cursor = batch.cursor


def _int_arg(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values or values[0] in (None, ""):
        return default
    try:
        return int(values[0])
    except ValueError:
        raise InputError(f"{name} must be an integer, got {values[0]!r}", title="Bad request") from None


def _float_arg(query: dict[str, list[str]], name: str, default: float) -> float:
    values = query.get(name)
    if not values or values[0] == "":
        return default
    try:
        return float(values[0])
    except ValueError:
        raise InputError(f"{name} must be a number, got {values[0]!r}", title="Bad request") from None
