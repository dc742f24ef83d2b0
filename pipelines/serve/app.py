"""The HTTP API: FauxPilot's routes and the OpenAI completions fields over any :class:`Engine`.

Routes: ``POST /v1/engines/codegen/completions``, ``POST /v1/engines/copilot-codex/completions`` and
``POST /v1/completions`` (one handler), ``GET /v1/models``, ``GET /copilot_internal/v2/token`` (copilot.vim's
stub), ``GET /health`` and ``/healthz``. Errors are OpenAI-shaped: 400 for a bad request or an over-long
prompt, 401 for a wrong API key, 413 for a body over ``max_body_bytes``, 503 when the engine cannot answer —
never 200 without choices. Hostile bodies (not UTF-8, lone surrogates, deep nesting) are 400s
(``pipelines/jsonbody.py``); the engines tokenize in a thread, so one huge prompt never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from pipelines.context.provider import ContextProvider
from pipelines.errors import RepopilotError
from pipelines.jsonbody import MalformedJson, parse_json
from pipelines.serve.engine import BadRequest, CompletionRequest, Engine, EngineUnavailable, Piece
from pipelines.serve.schema import (
    CompletionBody,
    chunk_json,
    completion_id,
    completion_json,
    error_body,
    parse_body,
    usage,
)

log = logging.getLogger(__name__)

COMPLETION_ROUTES = ("/v1/engines/codegen/completions", "/v1/engines/copilot-codex/completions", "/v1/completions")
OPEN_PATHS = ("/health", "/healthz")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DEFAULT_MAX_BODY = 1 << 20  # the IDE sends ~10 KB; a full 2,048-token context of code is ~10-50 KB


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    manage_engine: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    context: RepoContext | None = None,
) -> FastAPI:
    """The API over ``engine``. ``api_key``: require ``Authorization: Bearer KEY``. ``allowed_hosts``: accept
    only these Host headers (DNS-rebinding guard for a server on loopback). ``manage_engine``: start and
    close the engine with the app. ``max_body_bytes``: refuse longer request bodies (413) without reading them.
    ``context``: repository context before text prompts (a request's ``repo_context`` field overrides its default)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.close()

    app = FastAPI(title="repopilot completions", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.context = context
    app.state.started = int(time.time())
    hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    app.add_middleware(Guard, hosts=hosts, api_key=api_key)

    add_error_handlers(app)

    async def complete(request: Request) -> Response:
        body = await read_completion_body(request, max_body_bytes)
        if isinstance(body, Response):
            return body
        requests = await context.apply_all(body) if context is not None else body.requests()
        model = engine.model_id
        echoes = [_echo(engine, r) for r in requests] if body.echo else None
        if not body.stream:
            work = asyncio.gather(*(engine.generate(r) for r in requests))
            completions = await _unless_disconnected(request, work)
            if completions is None:
                return Response(status_code=499)  # the client left (an IDE cancels as you type): work stopped
            return JSONResponse(completion_json(completion_id(), model, list(completions), requests[0].n, echoes))
        events = _merge([engine.stream(r) for r in requests])
        try:
            first = await anext(events)  # errors before the first piece still get their HTTP status
        except StopAsyncIteration:
            first = None
        except BaseException:
            await events.aclose()
            raise
        count, inputs = engine.count_tokens, [r.model_input for r in requests] if body.include_usage else []
        prompt_tokens = sum([await asyncio.to_thread(count, text) for text in inputs])
        sse = _sse(events, first, completion_id(), model, requests[0].n, echoes, prompt_tokens, body.include_usage)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(sse, media_type="text/event-stream", headers=headers)

    for path in COMPLETION_ROUTES:
        app.add_api_route(path, complete, methods=["POST"], include_in_schema=False)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        info = engine.model_info()
        card = {"id": info["id"], "object": "model", "created": app.state.started, "owned_by": "repopilot"}
        return {"object": "list", "data": [{**card, **{k: v for k, v in info.items() if k not in card}}]}

    @app.get("/copilot_internal/v2/token")
    async def copilot_token() -> dict[str, Any]:
        return {"token": "1", "expires_at": 2600000000, "refresh_in": 900}

    async def health() -> JSONResponse:
        return await _health(engine, context)

    for path in OPEN_PATHS:
        app.add_api_route(path, health, methods=["GET"], include_in_schema=False)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """OpenAI-shaped errors: 400 for bad requests, 503 when the engine cannot answer, 500 only for bugs."""

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(exc.message, "invalid_request_error", exc.param, exc.code, exc.title), 400)

    @app.exception_handler(EngineUnavailable)
    async def unavailable(_: Request, exc: EngineUnavailable) -> JSONResponse:
        body = error_body(exc.message, "server_error", code="engine_unavailable", title=exc.title)
        return JSONResponse(body, 503, headers={"Retry-After": "5"})

    @app.exception_handler(RepopilotError)
    async def other_error(_: Request, exc: RepopilotError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, "server_error", title=exc.title), 500)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"Invalid request: {exc.errors()}", "invalid_request_error"), 400)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        message = f"Unexpected server error ({type(exc).__name__}: {exc}). This is a bug in repopilot; see its log."
        return JSONResponse(error_body(message, "server_error"), 500)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), exc.status_code, headers=exc.headers)


async def read_completion_body(request: Request, limit: int) -> CompletionBody | Response:
    """The request's completion fields, or the 415 answer for a body that is not JSON."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json":  # a web page may POST text/plain cross-site without a preflight
        message = f"Send the body as application/json (not {kind or 'no type'})."
        return JSONResponse(error_body(message, "invalid_request_error", code="unsupported_media_type"), 415)
    try:
        data = parse_json(await read_body(request, limit) or b"{}")
    except MalformedJson as exc:
        raise BadRequest(exc.message) from None
    return parse_body(data)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or HTTP 413 as soon as it is known to be longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = HTTPException(413, f"The request body is larger than this server accepts ({limit:,} bytes).")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class Guard:
    """ASGI middleware: the Host header check and the API key, before any route runs."""

    def __init__(self, app: Any, hosts: set[str] | None, api_key: str | None) -> None:
        self.app, self.hosts, self.api_key = app, hosts, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            refusal = self._refusal(scope.get("path", ""), headers)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, path: str, headers: dict[str, str]) -> JSONResponse | None:
        if self.hosts is not None and _hostname(headers.get("host", "")) not in self.hosts:
            message = "This server only answers requests addressed to " + ", ".join(sorted(self.hosts)) + "."
            return JSONResponse(error_body(message, "invalid_request_error", code="host_not_allowed"), 403)
        if self.api_key and path not in OPEN_PATHS and not _key_ok(headers, self.api_key):
            message = (
                "Incorrect or missing API key. Send `Authorization: Bearer <key>` with the key the server was "
                "started with (VS Code FauxPilot: the fauxpilot.token setting)."
            )
            body = error_body(message, "invalid_request_error", code="invalid_api_key", title="Unauthorized")
            return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
        return None


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _key_ok(headers: dict[str, str], api_key: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


async def _unless_disconnected(request: Request, work: Awaitable[Any], poll_s: float = 0.1) -> Any:
    """The result of ``work``, or None (``work`` cancelled) once the client has disconnected."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
    finally:
        if not task.done():
            task.cancel()


async def _health(engine: Engine, context: RepoContext | None) -> JSONResponse:
    """200 when the engine can answer now, else 503; with its counters (requests, tokens, prefix-cache hits and
    reused tokens, speculation, cancelled and superseded requests) where it keeps any, and the repository
    context's state (index ready, files, blocks built and kept)."""
    state = await engine.health()
    body = {"status": "ok" if state.ok else "unavailable", "engine": engine.kind, "model": engine.model_id}
    body["detail"] = state.detail
    stats = engine.stats()
    if stats:
        body["stats"] = stats
    if context is not None:
        body["context"] = context.stats()
    return JSONResponse(body, 200 if state.ok else 503)


class RepoContext:
    """Repository context for the API: a provider over a live index, on or off by default."""

    def __init__(self, provider: ContextProvider, default_on: bool = True, describe: Any = None) -> None:
        self.provider = provider
        self.default_on = default_on
        self.describe = describe  # () -> dict: the index's state

    async def apply_all(self, body: CompletionBody) -> list[CompletionRequest]:
        """The body's requests, with context unless the body (``repo_context``) or the server's default says no;
        in a thread: it tokenizes the prompt to know the room left."""
        requests = body.requests()
        if not (self.default_on if body.repo_context is None else body.repo_context):
            return requests
        return [await asyncio.to_thread(self.apply, r) for r in requests]

    def apply(self, request: CompletionRequest) -> CompletionRequest:
        """``request`` with its context block (text prompts only; token ids are taken as they are)."""
        if not isinstance(request.prompt, str):
            return request
        block = self.provider.block(request.prompt, request.max_tokens, request.client)
        return dataclasses.replace(request, context=block) if block else request

    def stats(self) -> dict[str, Any]:
        out = {"default": "on" if self.default_on else "off", **self.provider.stats()}
        return {**out, **(self.describe() if self.describe else {})}


def _echo(engine: Engine, request: CompletionRequest) -> str:
    return request.prompt if isinstance(request.prompt, str) else engine.decode(request.prompt)


async def _merge(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[tuple[int, Piece]]:
    """Pieces of several prompts' streams as they come, tagged with the prompt's position."""
    if len(streams) == 1:
        try:
            async for piece in streams[0]:
                yield 0, piece
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(p: int, stream: AsyncIterator[Piece]) -> None:
        try:
            async for piece in stream:
                await queue.put((p, piece))
            await queue.put((p, None))
        except BaseException as exc:
            await queue.put((p, exc))
            raise

    tasks = [asyncio.create_task(pump(p, s)) for p, s in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            p, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield p, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _sse(
    events: AsyncIterator[tuple[int, Piece]],
    first: tuple[int, Piece] | None,
    cid: str,
    model: str,
    n: int,
    echoes: list[str] | None,
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """``data: {json}`` per piece, then ``data: [DONE]``; an error after the start becomes an error event."""
    created = int(time.time())
    echoed: set[int] = set()
    completion_tokens = 0

    def event(p: int, piece: Piece) -> str:
        nonlocal completion_tokens
        index = p * n + piece.index
        if echoes and index not in echoed:
            echoed.add(index)
            piece = Piece(piece.index, echoes[p] + piece.text, piece.finish_reason, piece.tokens)
        completion_tokens += piece.tokens
        return "data: " + json.dumps(chunk_json(cid, model, created, index, piece)) + "\n\n"

    try:
        if first is not None:
            yield event(*first)
            async for p, piece in events:
                yield event(p, piece)
    except RepopilotError as exc:
        log.warning("stream %s failed: %s", cid, exc)
        yield "data: " + json.dumps(error_body(exc.message, "server_error", title=exc.title)) + "\n\n"
        return
    finally:
        await events.aclose()
    if include_usage:
        tail = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": []}
        yield "data: " + json.dumps({**tail, "usage": usage(prompt_tokens, completion_tokens)}) + "\n\n"
    yield "data: [DONE]\n\n"
