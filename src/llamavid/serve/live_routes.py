"""Live sessions over HTTP: ``/v1/live/sessions[/{id}]`` and chat completions about a live stream.

Routes (added to an app from `llamavid.serve.app.create_app` by `add_live_routes`, so they sit behind its API-key
and body-size middlewares)::

    POST   /v1/live/sessions                          {"source": "file:///srv/cams/door.ts", ...} -> 201 status
    GET    /v1/live/sessions                          {"object": "list", "data": [status, ...]}
    GET    /v1/live/sessions/{id}                     status (state, frames, position, lag, frames/s, message)
    DELETE /v1/live/sessions/{id}                     stops reading; the cache entry stays (resume by id)
    POST   /v1/live/sessions/{id}/chat/completions    the chat-completions shape; answers about the stream

The last one lets an OpenAI client ask with ``base_url=<server>/v1/live/sessions/<id>``; ``window`` (``"10m"``) and
``context_policy`` may be sent with ``extra_body``. `LiveRegistry.chat_completion` is the same handler for
``/v1/chat/completions`` requests that carry ``extra_body={"live_session": id}``.

Sources are files or FIFOs under the server's ``--allowed-root`` folders (symlinks resolved), never stdin. Network
URLs are refused whatever the request says: `add_live_routes` takes ``allow_network_sources`` from the server's
flags only, and live sessions read no network source yet. At most ``max_sessions`` sessions exist at once; one more
is answered 429.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from llamavid.errors import LlamaVidError

__all__ = ["DEFAULT_MAX_SESSIONS", "LiveRegistry", "LiveSessionRequest", "add_live_routes"]

DEFAULT_MAX_SESSIONS = 4
_MAX_IDLE_TIMEOUT_S = 24 * 3600.0
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class LiveSessionRequest(BaseModel):
    """Body of ``POST /v1/live/sessions``.

    Attributes:
        source: ``file:///path`` or an absolute path to a growing file or a FIFO under an allowed root.
        session_id: resume this session's cache entry (default: a new id).
        fps: frames sampled per second (at most the server's ``--max-fps``; default the server's ``--fps``).
        raw_size: ``"WxH"`` when the source carries raw RGB24 frames; raw_fps: their frame rate.
        end_marker: a path under an allowed root whose appearance ends a growing file.
        idle_timeout: seconds without new data before the source counts as ended.
        context_policy: ``relevance`` (default), ``uniform``, ``recent`` or ``refuse`` (see docs/live.md).
        max_frames: the most frames one answer shows (default 512; more are chosen by the context policy).
        subtitles: an .srt/.vtt file under an allowed root that grows with the stream (cue times in stream time).
    """

    model_config = ConfigDict(extra="forbid")

    source: str
    session_id: str | None = None
    fps: float | None = Field(default=None, gt=0)
    raw_size: str | None = None
    raw_fps: float | None = Field(default=None, gt=0)
    end_marker: str | None = None
    idle_timeout: float | None = Field(default=None, gt=0, le=_MAX_IDLE_TIMEOUT_S)
    context_policy: str = "relevance"
    max_frames: int = Field(default=512, ge=1)
    subtitles: str | None = None


class LiveRegistry:
    """The live sessions of one server, bounded by `max_sessions`.

    Args:
        engine: the server's `Engine`.
        config: the server's `ServerConfig` (allowed roots, fps limits, request timeout).
        max_sessions: sessions that may exist at once (finished ones count until deleted).
        cache_dir: feature-cache root for live entries (default: the engine's cache).
        allow_network_sources: the server flag ``--allow-network-sources`` (never a request field).
    """

    def __init__(
        self,
        engine: Any,
        config: Any,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        cache_dir: str | os.PathLike[str] | None = None,
        allow_network_sources: bool = False,
    ) -> None:
        if max_sessions < 1:
            from llamavid.errors import InvalidInputError

            raise InvalidInputError(f"--max-live-sessions must be at least 1, got {max_sessions}.")
        self.engine = engine
        self.config = config
        self.max_sessions = max_sessions
        self.cache_dir = cache_dir
        self.allow_network_sources = allow_network_sources
        self.roots = [os.path.realpath(root) for root in config.allowed_roots]
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    # Sessions ------------------------------------------------------------------------------------------------
    def _under_root(self, value: str, what: str) -> str:
        from llamavid.serve.app import APIError

        if not self.roots:
            raise APIError(
                403,
                f"{what}: live sources must be files under --allowed-root, and this server has none.",
                kind="permission_error",
            )
        if value.startswith("file://"):
            value = value[len("file://") :]
            if not value.startswith("/"):
                raise APIError(400, f"{what}: use file:///absolute/path.")
        elif _URL_SCHEME.match(value) or value == "-":
            reason = (
                "live sessions read no network source yet"
                if self.allow_network_sources
                else "network sources are off on this server (--allow-network-sources) and not read by live sessions yet"
            )
            raise APIError(
                400, f"{what}: {reason}; give a file or FIFO under --allowed-root.", code="invalid_media"
            )
        if "\x00" in value or not os.path.isabs(value):
            raise APIError(400, f"{what}: give an absolute path (or file:///absolute/path).")
        real = os.path.realpath(value)
        if not any(os.path.commonpath([real, root]) == root for root in self.roots):
            raise APIError(
                403,
                f"{what}: {value} is outside the allowed folders (--allowed-root).",
                kind="permission_error",
            )
        return real

    def create(self, body: LiveSessionRequest) -> dict[str, Any]:
        from llamavid.inference.live import LiveSession
        from llamavid.serve.app import APIError

        source = self._under_root(body.source, "source")
        try:
            mode = os.stat(source).st_mode
        except OSError:
            raise APIError(400, f"source: {body.source}: no such file under the allowed folders.") from None
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise APIError(400, f"source: {body.source} is neither a file nor a FIFO.", code="invalid_media")
        marker = None if body.end_marker is None else self._under_root(body.end_marker, "end_marker")
        subtitles = None if body.subtitles is None else self._under_root(body.subtitles, "subtitles")
        fps = body.fps if body.fps is not None else self.config.fps
        if fps > self.config.max_fps:
            raise APIError(400, f"fps {fps:g} is above the server's --max-fps {self.config.max_fps:g}.")
        raw_size = None
        if body.raw_size is not None:
            match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", body.raw_size.strip().lower())
            if match is None or min(int(match[1]), int(match[2])) < 1:
                raise APIError(400, f"raw_size must be WIDTHxHEIGHT, got {body.raw_size!r}.")
            raw_size = (int(match[1]), int(match[2]))
            if raw_size[0] * raw_size[1] > self.config.max_pixels:
                raise APIError(400, f"raw_size {body.raw_size} is above the server's pixel limit.")
        with self._lock:
            if body.session_id is not None and body.session_id in self._sessions:
                raise APIError(409, f"live session {body.session_id} is already open.", code="session_exists")
            if len(self._sessions) >= self.max_sessions:
                raise APIError(
                    429,
                    f"this server holds at most {self.max_sessions} live sessions; delete one "
                    "(DELETE /v1/live/sessions/{id}) and retry.",
                    kind="rate_limit_error",
                )
            session_id = body.session_id or uuid.uuid4().hex[:16]
            self._sessions[session_id] = None  # reserved while the session opens
        try:
            session = LiveSession(
                self.engine,
                source,
                fps=fps,
                session_id=session_id,
                raw_size=raw_size,
                raw_fps=body.raw_fps,
                idle_timeout=body.idle_timeout,
                end_marker=marker,
                context_policy=body.context_policy,
                max_frames=body.max_frames,
                subtitles=subtitles,
                cache_dir=self.cache_dir,
            )
        except BaseException:
            with self._lock:
                self._sessions.pop(session_id, None)
            raise
        with self._lock:
            self._sessions[session_id] = session
        return session.status.to_dict()

    def get(self, session_id: str) -> Any:
        from llamavid.serve.app import APIError

        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise APIError(404, f"no live session {session_id!r} on this server.", kind="not_found_error")
        return session

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            sessions = [session for session in self._sessions.values() if session is not None]
        return [session.status.to_dict() for session in sessions]

    def delete(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id)
        with self._lock:
            self._sessions.pop(session_id, None)
        return session.close().to_dict()

    def close_all(self) -> None:
        """Stop every session (server shutdown); their cache entries stay."""
        with self._lock:
            sessions = [session for session in self._sessions.values() if session is not None]
            self._sessions.clear()
        for session in sessions:
            session.close()

    # Answers -------------------------------------------------------------------------------------------------
    def chat_completion(self, session_id: str, data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Answer a chat-completions body about a live session: ``(completion, stream requested)``.

        The last user message is the question; earlier user/assistant turns stay as text. ``window`` and
        ``context_policy`` (and ``max_frames``) are read from the body (``extra_body``). Blocking: call it from a worker thread.
        """
        from llamavid.serve.app import APIError, ChatCompletionRequest

        session = self.get(session_id)
        try:
            body = ChatCompletionRequest.model_validate(data)
        except ValueError as error:
            raise APIError(400, f"invalid request: {error}") from None
        if body.model not in (None, self.engine.name):
            raise APIError(404, f"model {body.model!r} is not served here.", code="model_not_found")
        if body.n != 1:
            raise APIError(400, "only n=1 is supported.")
        history, question = _turns(body)
        max_frames = data.get("max_frames")
        if max_frames is not None and (type(max_frames) is not int or max_frames < 0):
            raise APIError(400, f"max_frames must be a whole number, 0 for no limit; got {max_frames!r}.")
        try:
            answer = session.ask(
                question,
                window=data.get("window"),
                context_policy=data.get("context_policy"),
                max_frames=max_frames,
                temperature=body.temperature,
                top_p=body.top_p,
                max_new_tokens=body.max_completion_tokens or body.max_tokens,
                seed=body.seed,
                history=history,
            )
        except LlamaVidError as error:
            raise APIError(400, str(error)) from None
        result = answer.answer
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.engine.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": "length" if result.finish_reason == "length" else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
                "frames_sampled": answer.frames_used,
                "frames_capped": answer.frames_used < answer.frames_seen,
            },
            "live": {**answer.to_dict(), "session": session.status.to_dict()},
        }
        return completion, body.stream

    async def respond(self, session_id: str, data: dict[str, Any]) -> JSONResponse | StreamingResponse:
        """The HTTP response to a chat-completions body about a live session (JSON, or SSE with ``stream``).

        ``/v1/chat/completions`` hands a request with ``live_session`` here:
        ``return await app.state.live.respond(body.live_session, body.model_dump(exclude_none=True))``.
        """
        completion, stream = await run_in_threadpool(self.chat_completion, session_id, data)
        if stream:
            return StreamingResponse(_sse(completion), media_type="text/event-stream")
        return JSONResponse(completion)


def _turns(body: Any) -> tuple[list[tuple[str, str]], str]:
    """``(history, question)`` from chat messages; media parts are refused (the session is the video)."""
    from llamavid.serve.app import APIError

    texts: list[tuple[str, str]] = []
    for message in body.messages:
        if message.role == "system":
            continue
        content = message.content or ""
        if not isinstance(content, str):
            if any(part.type != "text" for part in content):
                raise APIError(400, "a live-session request carries no media parts; the stream is the video.")
            content = "\n".join(part.text or "" for part in content)
        texts.append((message.role, content))
    if not texts or texts[-1][0] != "user" or not texts[-1][1].strip():
        raise APIError(400, "the last message must be a user message with the question.")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for role, text in texts[:-1]:
        if role == "user":
            pending = text
        elif pending is not None:
            history.append((pending, text))
            pending = None
    return history, texts[-1][1]


def _sse(completion: dict[str, Any]) -> Any:
    """The whole answer as chat-completion chunks (a live answer is produced in one piece)."""
    base = {key: completion[key] for key in ("id", "created", "model")}
    choice = completion["choices"][0]
    for delta, finish in (
        ({"role": "assistant", "content": ""}, None),
        ({"content": choice["message"]["content"]}, None),
        ({}, choice["finish_reason"]),
    ):
        payload = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"


def add_live_routes(
    app: Any,
    engine: Any,
    config: Any,
    *,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    allow_network_sources: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LiveRegistry:
    """Add the live-session routes to a `create_app` app; returns the registry (also ``app.state.live``).

    `allow_network_sources` is the server flag ``--allow-network-sources``; live sessions read no network
    source yet, so it only changes the refusal's wording. Call ``app.state.live.close_all()`` at shutdown.
    """
    from llamavid.serve.app import APIError

    registry = LiveRegistry(engine, config, max_sessions, cache_dir, allow_network_sources)
    app.state.live = registry

    def _checked(call: Any) -> Any:
        try:
            return call()
        except APIError:
            raise
        except LlamaVidError as error:
            raise APIError(400, str(error)) from None

    @app.post("/v1/live/sessions", status_code=201)
    async def create_live_session(body: LiveSessionRequest) -> dict[str, Any]:
        return await run_in_threadpool(_checked, lambda: registry.create(body))

    @app.get("/v1/live/sessions")
    async def list_live_sessions() -> dict[str, Any]:
        return {"object": "list", "data": registry.list()}

    @app.get("/v1/live/sessions/{session_id}")
    async def get_live_session(session_id: str) -> dict[str, Any]:
        return registry.get(session_id).status.to_dict()

    @app.delete("/v1/live/sessions/{session_id}")
    async def delete_live_session(session_id: str) -> dict[str, Any]:
        return await run_in_threadpool(registry.delete, session_id)

    @app.post("/v1/live/sessions/{session_id}/chat/completions", response_model=None)
    async def live_chat_completions(session_id: str, request: Request) -> JSONResponse | StreamingResponse:
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object in the chat-completions shape.")
        return await registry.respond(session_id, data)

    return registry
