"""OpenAI-compatible HTTP API over the engine: ``POST /v1/chat/completions`` (+ SSE), ``GET /v1/models``, ``/health``.

Requests use the chat-completions shape with vLLM's multimodal content parts::

    {"model": "...", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}},
        {"type": "text", "text": "What happens?"}]}], "stream": true}

Media comes as ``data:`` URLs (size-limited) or ``file://`` paths under configured roots (symlinks resolved,
traversal refused). The server never fetches remote URLs: that would let any client make it download
arbitrary content. Per-request sampling and subtitles come in ``mm_processor_kwargs`` (`MediaOptions`) and
``usage`` reports ``frames_sampled`` and ``frames_capped``. Concurrent requests are batched on the device by
`BatchScheduler`; the queue is bounded (429 when full) and every request has a deadline (504). The limits and
what each refusal answers are listed in `ServerConfig`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamavid.data.video import MAX_PIXELS, pixel_limit
from llamavid.errors import InvalidInputError, LlamaVidError, LlamaVidRuntimeError
from llamavid.inference.engine import Engine, GenerationRequest
from llamavid.inference.media import PreparedMedia
from llamavid.inference.results import Answer
from llamavid.inference.scheduler import BatchScheduler, Job, QueueFullError

logger = logging.getLogger(__name__)

_ERROR_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_SUBTITLE_SUFFIXES = {
    "text/vtt": ".vtt",
    "application/x-subrip": ".srt",
    "text/srt": ".srt",
    "application/srt": ".srt",
    "text/plain": ".txt",  # the format is then told by a WEBVTT header
}
_SUBTITLE_FILE_SUFFIXES = (".srt", ".vtt")
_MEDIA_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "video/ogg": ".ogv",
    "video/mpeg": ".mpg",
}


# Configuration ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerConfig:
    """Limits and policies of one server (``llamavid serve`` flags in brackets, defaults after them).

    Security and limits. Every limit is checked before the work it bounds, and every refusal is a 4xx JSON
    error in OpenAI's shape saying what was received and what to do; a client's mistake never gets a 5xx.

    - Authentication [``--api-key``, none]: checked first, by the outermost middleware, before a byte of the
      body is read or parsed (401, connection closed). The scheme is case-insensitive (``bearer``), the key is
      compared in constant time, and every path but ``/health`` needs it.
    - Body size [``--max-upload-mb``, 64 MiB]: a declared ``Content-Length`` over the limit is refused unread,
      a chunked body is cut at the limit (413). A ``data:`` URL cannot exceed it either.
    - Pixels [``--max-megapixels``, 50 MP]: per image or video frame, width x height read from the image
      header or the video stream header before decoding (400 naming the size found and the limit), so a
      decompression bomb (17 KB of PNG declaring 12000x12000) costs nothing. Video headers are read in a
      child process (`llamavid.data.probe_video`, ``probe_timeout`` 30 s), which also enforces
      [``--max-video-seconds``, 3600 s].
    - Frames [``--fps`` 1, ``--max-fps`` 8, ``--max-frames`` 256]: requests may choose their own ``fps`` and
      ``max_frames`` (``mm_processor_kwargs``, see `MediaOptions`) within these; a longer video is sampled
      uniformly and ``usage.frames_capped`` says so.
    - Media URLs: ``data:`` with a video or image MIME type, or ``file://`` naming a regular file under an
      allowed root after symlinks and ``..`` are resolved (folders, FIFOs and devices refused: 400; outside
      the roots: 403). http(s), ftp, rtsp and every other scheme are refused, never fetched. Subtitle files
      must be ``.srt``/``.vtt``, since their text reaches the prompt.
    - Requests are validated whole before any answer starts, streaming included: sampling values outside
      `llamavid.inference.SamplingSettings`' ranges, prompts over the context and text holding lone UTF-16
      surrogates are 400s. Temperatures below 1e-4 decode greedily.
    - Load [``--max-queue`` 64, ``--request-timeout`` 300 s]: 429 when the queue is full, 504 past the deadline.

    Attributes:
        allowed_roots: folders whose files ``file://`` URLs may name (after resolving symlinks); empty = none.
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_batch_size: requests generated together on the device.
        batch_wait_ms: how long the scheduler waits for more requests before running a partial batch; trades
            a little latency for throughput under load.
        max_queue: requests waiting for the device before new ones get 429.
        request_timeout: seconds from arrival to the last token before a request is cancelled (504).
        max_video_seconds: longest accepted video (checked by a subprocess probe before decoding).
        max_upload_bytes: largest request body, and so largest data: URL.
        fps / max_frames: default sampling of every media item; ``max_frames`` is also the most a request may
            ask for.
        media_cache_size: prepared media (frame features) kept, so multi-turn clients resending the same
            video skip decoding and encoding.
        probe_timeout: seconds a video's probe may take before the file is refused.
        max_pixels: most pixels per image or video frame (`llamavid.data.video.MAX_PIXELS` by default).
        max_fps: highest ``fps`` a request may ask for.
        max_live_sessions: live sessions open at once (``/v1/live/sessions``); one more answers 429.
        allow_network_sources: let live sessions name network sources (``--allow-network-sources``).
    """

    allowed_roots: tuple[Path, ...] = ()
    api_key: str | None = None
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    request_timeout: float = 300.0
    max_video_seconds: float = 3600.0
    max_upload_bytes: int = 64 * 2**20
    fps: float = 1.0
    max_frames: int | None = 256
    media_cache_size: int = 4
    probe_timeout: float = 30.0
    max_pixels: int = MAX_PIXELS
    max_fps: float = 8.0
    max_live_sessions: int = 4
    allow_network_sources: bool = False

    def __post_init__(self) -> None:
        checks = {
            "--max-batch-size": self.max_batch_size >= 1,
            "--batch-wait-ms": self.batch_wait_ms >= 0,
            "--max-queue": self.max_queue >= 1,
            "--request-timeout": self.request_timeout > 0,
            "--max-video-seconds": self.max_video_seconds > 0,
            "--max-upload-mb": self.max_upload_bytes > 0,
            "--fps": self.fps > 0,
            "--max-frames": self.max_frames is None or self.max_frames >= 1,
            "--max-megapixels": self.max_pixels >= 1,
            "--max-fps": self.max_fps > 0,
        }
        for flag, ok in checks.items():
            if not ok:
                raise InvalidInputError(f"{flag} must be positive (batch size, queue and frames at least 1).")
        if self.fps > self.max_fps:
            raise InvalidInputError(
                f"--fps {self.fps:g} is above --max-fps {self.max_fps:g}; lower --fps or raise --max-fps."
            )
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInputError(
                "--api-key is empty; pass a secret key, or leave the flag out for no key."
            )
        for root in self.allowed_roots:
            if not Path(root).is_dir():
                raise InvalidInputError(
                    f"--allowed-root {root}: not a folder; pass an existing folder of media."
                )


class APIError(LlamaVidError, Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "code"}}``."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        headers = {**({"Retry-After": "1"} if self.status == 429 else {}), **(headers or {})}
        body = {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers or None)


# Request schema (OpenAI chat completions + vLLM's video_url part) -------------------------------------------------
class _URL(BaseModel):
    url: str


class ContentPart(BaseModel):
    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: _URL | None = None
    video_url: _URL | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


def _lone_surrogate(value: Any, where: str = "body") -> str | None:
    """Where the first string holding a lone UTF-16 surrogate is in decoded JSON (``None`` when there is none).

    JSON may escape half of a surrogate pair (``"\\ud800"``); Python decodes it to a string that is not Unicode
    text, which no tokenizer, file system or UTF-8 encoder accepts.
    """
    pending = [(value, where)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            pending.extend((child, f"{path}.{key}") for key, child in item.items())
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
    return None


class MediaOptions(BaseModel):
    """``mm_processor_kwargs`` (vLLM's name; openai clients send it with ``extra_body``): this request's sampling.

    Attributes:
        fps: frames sampled per second, above 0 and at most the server's ``--max-fps``.
        max_frames: cap on sampled frames, 1 to the server's ``--max-frames``; a longer video is sampled
            uniformly with this many frames (``usage.frames_capped`` says so).
        subtitles: an ``.srt``/``.vtt`` as a ``data:`` URL (``text/vtt``, ``application/x-subrip``, ``text/srt``
            or ``text/plain``, base64), as a ``file://`` URL under ``--allowed-root``, or as the SRT/WebVTT text
            itself. Each cue is attached to the sampled frame it covers (the long-video layout).
    """

    model_config = ConfigDict(extra="forbid")

    fps: float | None = None
    max_frames: int | None = None
    subtitles: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _refuse_lone_surrogates(cls, data: Any) -> Any:
        where = _lone_surrogate(data)
        if where is not None:
            raise InvalidInputError(  # a ValueError: pydantic reports it as a validation error (400)
                f"{where.removeprefix('body.')} holds a lone UTF-16 surrogate (such as \\ud800), which is not a "
                "character; send valid Unicode (surrogates only as pairs)"
            )
        return data

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    n: int = 1
    mm_processor_kwargs: MediaOptions | None = None
    # Questions about a live session (POST /v1/live/sessions) instead of media parts.
    live_session: str | None = None
    window: str | None = None
    context_policy: str | None = None


# Media resolution --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subtitles:
    """A request's subtitles: the bytes sent inline, or a file under an allowed root.

    Attributes:
        key: identifies the content, for the prepared-media cache.
        shown_as: how messages name them (never a temporary path).
        path: the file under an allowed root, or ``None`` when `data` was sent inline.
        data: the inline bytes, written to a temporary file only when the media is (re)loaded.
        suffix: ``.srt``, ``.vtt`` or ``.txt`` (told by a WEBVTT header) for the temporary file.
    """

    key: tuple[Any, ...]
    shown_as: str
    path: Path | None = None
    data: bytes | None = None
    suffix: str = ".txt"


@dataclass(frozen=True)
class MediaSampling:
    """How one request's media is sampled: the server's defaults with the request's ``mm_processor_kwargs``."""

    fps: float
    max_frames: int | None
    subtitles: Subtitles | None = None


def _decode_data_url(url: str, what: str, limit: int) -> tuple[str, bytes]:
    """``data:<mime>;base64,<payload>`` -> (mime type, bytes); raises `APIError` 400/413 (`what` prefixes messages)."""
    header, comma, payload = url.partition(",")
    if not comma or ";base64" not in header:
        raise APIError(400, f"{what}data: URLs must be base64 encoded: data:<mime type>;base64,<data>.")
    mime = header[len("data:") :].split(";")[0].strip().lower()
    if len(payload) * 3 // 4 > limit:
        raise APIError(413, f"{what}the data: URL exceeds the upload limit of {limit} bytes.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{what}the data: URL is not valid base64.") from None
    if not data:
        raise APIError(400, f"{what}the data: URL holds no bytes.")
    return mime, data


def _remote_refused(what: str, scheme: str, example: str = "video/mp4") -> APIError:
    return APIError(
        400,
        f"{what}remote {scheme}: URLs are not fetched by this server. Send the file inline as a data: URL "
        f"(data:{example};base64,...) or, for files on the server, as file:///path under an --allowed-root.",
        code="remote_url_refused",
    )


class MediaResolver:
    """Turn a content-part URL into a prepared media item, under the server's policies, with a small LRU cache."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.roots = [os.path.realpath(root) for root in config.allowed_roots]
        self._cache: OrderedDict[tuple[Any, ...], PreparedMedia] = OrderedDict()
        self._lock = threading.Lock()

    def sampling(self, options: MediaOptions | None) -> MediaSampling:
        """The sampling a request asks for, checked against the server's limits. Raises `APIError` (400/403)."""
        config = self.config
        if options is None:
            return MediaSampling(config.fps, config.max_frames)
        fps = config.fps if options.fps is None else options.fps
        if not (math.isfinite(fps) and 0 < fps <= config.max_fps):
            raise APIError(
                400,
                f"mm_processor_kwargs.fps must be above 0 and at most {config.max_fps:g} (this server's "
                f"--max-fps), got {fps!r}.",
            )
        max_frames = config.max_frames if options.max_frames is None else options.max_frames
        if max_frames is not None and not (1 <= max_frames <= (config.max_frames or max_frames)):
            raise APIError(
                400,
                f"mm_processor_kwargs.max_frames must be between 1 and {config.max_frames} (this server's "
                f"--max-frames), got {max_frames!r}.",
            )
        subtitles = None if options.subtitles is None else self._subtitles(options.subtitles)
        return MediaSampling(fps, max_frames, subtitles)

    def resolve(self, url: str, sampling: MediaSampling | None = None) -> PreparedMedia:
        """Load the media `url` names. Raises `APIError` (400/403/413) for refused or unreadable media."""
        sampling = sampling or self.sampling(None)
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return self._from_data_url(url, sampling)
        if scheme == "file":
            path, requested = self._local_file(url, "", "a media file; name one video or image file")
            stat = path.stat()
            key = ("file", str(path), stat.st_mtime_ns, stat.st_size, *self._sampling_key(sampling))
            return self._cached(key, lambda: self._load(path, requested, sampling))
        if scheme in ("http", "https", "ftp", "ftps", "rtsp", "rtmp", "smb", "gopher", "sftp", "ssh"):
            raise _remote_refused("", scheme)
        raise APIError(
            400, f"unsupported media URL scheme {scheme or url[:20]!r}; use a data: or file:// URL."
        )

    @staticmethod
    def _sampling_key(sampling: MediaSampling) -> tuple[Any, ...]:
        subtitles = None if sampling.subtitles is None else sampling.subtitles.key
        return (sampling.fps, sampling.max_frames, subtitles)

    def _cached(self, key: tuple[Any, ...], load: Callable[[], PreparedMedia]) -> PreparedMedia:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        media = load()
        with self._lock:
            self._cache[key] = media
            while len(self._cache) > self.config.media_cache_size:
                self._cache.popitem(last=False)
        return media

    def _load(self, path: Path, shown_as: str, sampling: MediaSampling) -> PreparedMedia:
        subtitles = sampling.subtitles
        with tempfile.TemporaryDirectory(prefix="llamavid-subtitles-") as folder:
            subtitle_path = None
            if subtitles is not None:
                subtitle_path = subtitles.path or Path(folder) / f"subtitles{subtitles.suffix}"
                if subtitles.data is not None:
                    subtitle_path.write_bytes(subtitles.data)
            try:
                # Images and video frames over the limit are refused from their headers, before decoding.
                with pixel_limit(self.config.max_pixels):
                    return self.engine.load_media(
                        path,
                        fps=sampling.fps,
                        max_frames=sampling.max_frames,
                        subtitles=subtitle_path,
                        untrusted=True,
                        probe_timeout=self.config.probe_timeout,
                        max_duration=self.config.max_video_seconds,
                    )
            except ValueError as error:  # MediaError included: the file is the client's problem
                message = str(error).replace(str(path), shown_as)
                if subtitles is not None and subtitle_path is not None:
                    message = message.replace(str(subtitle_path), subtitles.shown_as)
                raise APIError(400, message, code="invalid_media") from None

    def _from_data_url(self, url: str, sampling: MediaSampling) -> PreparedMedia:
        mime, data = _decode_data_url(url, "", self.config.max_upload_bytes)
        suffix = _MEDIA_SUFFIXES.get(mime)
        if suffix is None:
            raise APIError(
                400,
                f"unsupported media type {mime!r} in data: URL; expected one of {', '.join(sorted(_MEDIA_SUFFIXES))}.",
            )
        key = ("data", hashlib.sha256(data).hexdigest(), mime, *self._sampling_key(sampling))

        def load() -> PreparedMedia:
            with tempfile.TemporaryDirectory(prefix="llamavid-upload-") as folder:
                path = Path(folder) / f"upload{suffix}"
                path.write_bytes(data)
                # Features are computed from the decoded frames, so the file can go as soon as this returns.
                return self._load(path, "uploaded media", sampling)

        return self._cached(key, load)

    def _subtitles(self, value: str) -> Subtitles:
        """Subtitles from a data: URL, a file:// URL under an allowed root, or SRT/WebVTT text."""
        what = "mm_processor_kwargs.subtitles: "
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme == "data":
            mime, data = _decode_data_url(value, what, self.config.max_upload_bytes)
            suffix = _SUBTITLE_SUFFIXES.get(mime)
            if suffix is None:
                raise APIError(
                    400,
                    f"{what}unsupported subtitle type {mime!r} in data: URL; expected one of "
                    f"{', '.join(sorted(_SUBTITLE_SUFFIXES))}.",
                )
            return Subtitles(
                ("data", hashlib.sha256(data).hexdigest()), "the subtitles", data=data, suffix=suffix
            )
        if scheme == "file":
            path, requested = self._local_file(value, what, "a subtitle file (.srt or .vtt)")
            if path.suffix.lower() not in _SUBTITLE_FILE_SUFFIXES:
                # Subtitle text reaches the prompt: only subtitle files may be read as such.
                raise APIError(400, f"{what}{requested} is not a subtitle file (.srt or .vtt).")
            stat = path.stat()
            return Subtitles(("file", str(path), stat.st_mtime_ns, stat.st_size), requested, path=path)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise _remote_refused(what, scheme, "text/vtt")
        data = value.encode("utf-8")
        return Subtitles(("text", hashlib.sha256(data).hexdigest()), "the subtitles", data=data)

    def _local_file(self, url: str, what: str, expected: str) -> tuple[Path, str]:
        """The regular file a ``file://`` URL names under an allowed root, and the path as the client wrote it."""
        if not self.roots:
            raise APIError(
                403,
                f"{what}file:// URLs are disabled on this server; send the file as a data: URL, or start the "
                "server with --allowed-root FOLDER.",
                kind="permission_error",
            )
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise APIError(
                400, f"{what}file URL host {parsed.netloc!r} is not supported; use file:///absolute/path."
            )
        requested = unquote(parsed.path)
        if "\x00" in requested:
            raise APIError(400, f"{what}the file URL holds a NUL byte (%00); no file name can.")
        # realpath resolves symlinks and '..' so a link inside a root cannot point outside it.
        real = os.path.realpath(requested)
        if not any(os.path.commonpath([real, root]) == root for root in self.roots):
            raise APIError(
                403,
                f"{what}{requested} is outside the allowed media folders; only files under --allowed-root are "
                "served.",
                kind="permission_error",
            )
        path = Path(real)
        if not path.exists():
            raise APIError(400, f"{what}{requested}: no such file under the allowed media folders.")
        if not path.is_file():
            # A folder would be read as a folder of frames (any number of images); a FIFO or device would block.
            kind = "folder" if path.is_dir() else "special file"
            raise APIError(400, f"{what}{requested} is a {kind}, not {expected}.", code="invalid_media")
        return path, requested


# The application -------------------------------------------------------------------------------------------------
class APIKeyMiddleware:
    """Answer 401 to a request without the API key before anything else happens (pure ASGI, outermost).

    Nothing of an unauthenticated request is kept or parsed: not its body (which the body limit would otherwise
    buffer), not its JSON. What the client is still uploading is read and dropped for at most `DISCARD_SECONDS`
    (memory stays flat) before the 401 and a closed connection: closing on an unread upload makes the kernel
    reset the connection, and the reset can destroy the 401 before the client reads it. Every
    path but ``/health`` needs the key. The scheme is case-insensitive (``bearer`` works, as in RFC 9110) and the
    key is compared in constant time.
    """

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    def authorized(self, scope: dict) -> bool:
        values = [value for name, value in scope.get("headers") or [] if name.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] == "/health" or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        refused = APIError(
            401, "missing or wrong API key; send 'Authorization: Bearer <key>'.", kind="authentication_error"
        )
        await _discard_body(receive)  # returns at once for a request without a body
        await refused.response({"Connection": "close", "WWW-Authenticate": "Bearer"})(scope, receive, send)


# How long a refused upload is read and thrown away before the 413 or 401 is sent (see `_discard_body`).
DISCARD_SECONDS = 5.0


async def _discard_body(receive: Callable, seconds: float = DISCARD_SECONDS) -> None:
    """Read the rest of a refused request body and drop it, for at most `seconds`.

    A server that answers and closes while the client is still uploading makes the kernel reset the
    connection, and the reset can destroy the 413 before the client reads it. Draining first (nothing is
    kept, so memory stays flat) lets an ordinary client see the error; a client that keeps sending past the
    time bound gets the 413 and a closed connection.
    """

    async def drain() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(drain(), timeout=seconds)


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413, before any parsing (pure ASGI, buffers the body)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            413, f"request body exceeds the limit of {self.limit} bytes.", code="body_too_large"
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _discard_body(receive)
            await too_large.response({"Connection": "close"})(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                if more:
                    await _discard_body(receive)
                await too_large.response({"Connection": "close"})(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for http.disconnect (streaming responses watch it)

        await self.app(scope, replay, send)


def _conversation(body: ChatCompletionRequest) -> tuple[list[tuple[str, str]], str, str | None]:
    """Split messages into ``(history, question, media_url)`` following the official CLI's turn structure."""
    turns: list[tuple[str, str]] = []
    media_urls: list[str] = []
    for index, message in enumerate(body.messages):
        if message.role == "system":
            continue  # the checkpoint's template carries its own system text; a client's is not used
        content = message.content or ""
        parts = [ContentPart(type="text", text=content)] if isinstance(content, str) else content
        texts = []
        for part in parts:
            if part.type == "text":
                texts.append(part.text or "")
                continue
            reference = part.image_url or part.video_url
            url = reference.url if reference is not None else None
            if url is None:
                raise APIError(
                    400, f"messages[{index}]: a {part.type} part needs {{'{part.type}': {{'url': ...}}}}."
                )
            if message.role != "user":
                raise APIError(400, f"messages[{index}]: only user messages may carry media.")
            media_urls.append(url)
        turns.append((message.role, "\n".join(text for text in texts if text)))
    roles = [role for role, _ in turns]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if not roles or roles != expected or roles[-1] != "user":
        raise APIError(
            400, f"messages must alternate user/assistant, start and end with a user message; got {roles}."
        )
    if len(media_urls) > 1:
        raise APIError(
            400, f"{len(media_urls)} media parts given; LLaMA-VID answers about one image or video at a time."
        )
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return history, turns[-1][1], media_urls[0] if media_urls else None


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    """Build the FastAPI app around a loaded engine; the batching worker runs while the app is served."""
    config = config or ServerConfig()
    scheduler = BatchScheduler(engine, config.max_batch_size, config.batch_wait_ms, config.max_queue)
    resolver = MediaResolver(engine, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()
        app.state.live.close_all()

    app = FastAPI(title="llamavid", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.scheduler, app.state.config = engine, scheduler, config
    from llamavid.serve.live_routes import add_live_routes

    live = add_live_routes(
        app,
        engine,
        config,
        max_sessions=config.max_live_sessions,
        allow_network_sources=config.allow_network_sources,
    )
    app.add_middleware(BodyLimitMiddleware, limit=config.max_upload_bytes)
    if config.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)  # added last, so it runs first

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = str(first.get("msg", "malformed body")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden" and where.startswith("mm_processor_kwargs."):
            message = f"not a media option; the options are {', '.join(MediaOptions.model_fields)}"
        return APIError(400, f"invalid request: {where + ': ' if where else ''}{message}").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 400 and error.__cause__ is not None:  # FastAPI could not parse the body
            cause = error.__cause__
            message = (
                f"the request body is not valid JSON ({type(cause).__name__}: {cause}); send one UTF-8 JSON "
                "object in the chat-completions shape."
            )
        return APIError(
            error.status_code, message, kind=_ERROR_KINDS.get(error.status_code, "invalid_request_error")
        ).response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "queued": scheduler.queued()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "llamavid"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest,
    ) -> JSONResponse | StreamingResponse:
        arrived = time.monotonic()
        if body.model not in (None, engine.name):
            raise APIError(
                404,
                f"model {body.model!r} is not served here; available: {engine.name!r}.",
                code="model_not_found",
            )
        if body.n != 1:
            raise APIError(400, "only n=1 is supported.")
        if body.live_session is not None:
            return await live.respond(body.live_session, body.model_dump(exclude_none=True))
        history, question, media_url = _conversation(body)
        if media_url is None and body.mm_processor_kwargs and body.mm_processor_kwargs.subtitles is not None:
            raise APIError(400, "mm_processor_kwargs.subtitles was given but no video; add a video_url part.")

        def prepare() -> GenerationRequest:
            sampling = resolver.sampling(body.mm_processor_kwargs)
            media = resolver.resolve(media_url, sampling) if media_url else None
            settings = engine.default_settings.updated(
                temperature=body.temperature,
                top_p=body.top_p,
                max_new_tokens=body.max_completion_tokens or body.max_tokens,
                seed=body.seed,
            )
            return engine.build_request(question, media, history, settings)

        try:
            generation_request = await run_in_threadpool(prepare)
        except APIError:
            raise
        except ValueError as error:
            raise APIError(400, str(error)) from None
        media = generation_request.media
        frames_capped = bool(media is not None and media.frames_capped)
        job = Job(generation_request, asyncio.get_running_loop())
        try:
            scheduler.submit(job)
        except QueueFullError:
            raise APIError(
                429, "the server is busy (request queue full); retry shortly.", kind="rate_limit_error"
            ) from None
        deadline = arrived + config.request_timeout
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(job, deadline, completion_id, engine.name, include_usage, frames_capped),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            while True:
                kind, value = await _next_event(job, deadline)
                if kind == "done":
                    return JSONResponse(_completion(completion_id, engine.name, value, frames_capped))
                if kind == "error":
                    raise APIError(500, "generation failed; see the server log.", kind="server_error")
        finally:
            job.cancelled.set()  # no-op when finished; stops the row when the client left or timed out

    return app


async def _next_event(job: Job, deadline: float) -> tuple[str, Any]:
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(job.events.get(), timeout=remaining)
    except asyncio.TimeoutError:
        job.cancelled.set()
        raise APIError(
            504,
            "the request timed out before the answer was complete; retry or ask for fewer tokens.",
            kind="timeout_error",
        ) from None


def _usage(answer: Answer, frames_capped: bool) -> dict[str, Any]:
    """OpenAI's token counts, plus the frames the answer saw and whether ``max_frames`` thinned them out."""
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "frames_sampled": answer.frames,
        "frames_capped": frames_capped,
    }


def _finish(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def _completion(completion_id: str, model: str, answer: Answer, frames_capped: bool) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": _finish(answer),
            }
        ],
        "usage": _usage(answer, frames_capped),
    }


async def _sse(
    job: Job, deadline: float, completion_id: str, model: str, include_usage: bool, frames_capped: bool
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> str:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
        }
        if usage is not None:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            try:
                kind, value = await _next_event(job, deadline)
            except APIError as error:
                yield f"data: {json.dumps({'error': {'message': error.message, 'type': error.kind}})}\n\n"
                break
            if kind == "delta":
                yield chunk({"content": value})
            elif kind == "done":
                yield chunk({}, _finish(value))
                if include_usage:
                    yield chunk({}, usage=_usage(value, frames_capped))
                break
            else:
                yield f"data: {json.dumps({'error': {'message': 'generation failed', 'type': 'server_error'}})}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client disconnected mid-stream, or we are done: stop generating for it


# Running in-process (tests, benchmarks, notebooks) -----------------------------------------------------------------
class RunningServer:
    """A uvicorn server on 127.0.0.1:<free port> in a background thread; `stop()` shuts it down."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        started = time.monotonic()
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() - started > 60:
                raise LlamaVidRuntimeError("the API server did not start; see the log above.")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["APIError", "BatchScheduler", "MediaResolver", "RunningServer", "ServerConfig", "create_app"]
