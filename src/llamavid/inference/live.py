"""Live video: ask about a stream while it plays, for hours, in bounded memory.

A `LiveSession` reads a source on a background thread, samples frames at the target rate by their timestamps,
encodes them in small batches with the engine's frame encoder and appends the features to a *live entry* of the
feature cache (``<cache root>/live-<session id>/``, the entry layout of docs/architecture.md section 7). Host
memory holds only the chunk being filled, a bounded ring of thumbnails and the newest frame; everything older is
on disk, so an 8-hour stream costs the same RAM as a minute of it.

``session.ask(question, window=None|"10m")`` answers about the frames seen so far (all, or the last `window`)
through the inference core: a `PreparedMedia` over the chosen frames, then `Engine.build_request` and
`Engine.answer`, so the prompt, the visual tokens and the sampling are those of every other interface.

Context policy. When the frames in the window need more positions than the LLM has, the engine's one budget
check (`Engine.check_budget`) gives the largest frame count that fits the question and answer, and the policy
picks that many frames, always kept in time order so the prompt keeps the clip layout the model was trained on:

* ``relevance`` (default): half of the frames are those the question singles out (context-token scores, the
  ones behind `Engine.attention`, farthest from the window's median; computed chunk by chunk from the cache),
  the other half are spread evenly over the window (`select_by_relevance`). Frames are independent in
  LLaMA-VID, so a selected frame gets exactly the tokens it would get in the full prompt.
* ``uniform``: evenly spaced over the window (what ``--max-frames`` does for files).
* ``recent``: the newest frames that fit.
* ``refuse``: raise the engine's `ContextBudgetError`, as for files.

Sources (`LiveSource`): a file that is still being written (followed like ``tail -f`` until an end-marker file
appears or it stops growing for `idle_timeout` seconds), a pipe, a named FIFO or stdin (``"-"``) carrying a
container stream that can be read front to back (MPEG-TS or Matroska, e.g. ``ffmpeg ... -f mpegts -``), or raw
RGB frames (``raw_size=(W, H)``, at ``raw_fps`` frames per second). Network URLs are refused.

Faults. A source that stalls, ends or sends undecodable data leaves the session answerable about what it has;
`LiveSession.status` says what happened. Chunks and the entry's ``meta.json`` are written atomically after every
chunk, so a killed session keeps everything but the chunk being filled, and a new session with the same id
resumes: a file is decoded again from its start with the frames already stored skipped (not re-encoded); a pipe
continues after the stored frames in stream time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llamavid.data.errors import MediaError
from llamavid.errors import ContextBudgetError, InvalidInputError, LlamaVidRuntimeError

__all__ = [
    "CONTEXT_POLICIES",
    "LiveAnswer",
    "LiveSession",
    "LiveSource",
    "LiveStatus",
    "parse_window",
    "select_by_relevance",
]

logger = logging.getLogger(__name__)

CONTEXT_POLICIES = ("relevance", "uniform", "recent", "refuse")
STATES = ("starting", "running", "stalled", "ended", "failed", "closed")
ENTRY_PREFIX = "live-"
DEFAULT_CHUNK_FRAMES = 32  # frames per cache chunk: the most a killed session loses, and the in-memory tail
DEFAULT_BATCH_FRAMES = 8  # frames per encoder call
DEFAULT_MAX_FRAMES = (
    512  # the most frames one answer shows by default (1,024 visual tokens of the tiny model)
)
DEFAULT_FILE_IDLE_TIMEOUT = 10.0
THUMBNAIL_SIDE = 32
_POLL_S = 0.1  # how often a waiting reader re-checks the stop flag, the end marker and the idle clock
_READ_BYTES = 1 << 16
_SCORE_GROUP_BYTES = 32 * 2**20  # features read from the cache per scoring call when ranking frames
_SCORE_BATCH_FRAMES = 256  # frames per step of `_fast_context` (its activations are a few MB)
_RATE_WINDOW_S = 10.0  # the status's frames/s while reading are over this many recent seconds
_SCORED_QUESTIONS = 16  # questions whose per-chunk frame scores are kept (a float per stored frame each)
_CAMERA = re.compile(r"^/dev/video\d+$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WINDOW_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def parse_window(window: str | float | int | None) -> float | None:
    """``None`` (everything) or seconds from ``120``, ``"90s"``, ``"10m"``, ``"1h"``, ``"1h30m"``, ``"2.5m"``."""
    if window is None:
        return None
    if isinstance(window, (int, float)) and not isinstance(window, bool):
        seconds = float(window)
    else:
        text = str(window).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _WINDOW_PART.findall(text)
            if not parts or "".join(a + b for a, b in parts) != text:
                raise InvalidInputError(
                    f"window {window!r} is not a duration; use seconds or e.g. 90s, 10m, 1h30m."
                ) from None
            scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
            seconds = sum(float(amount) * scale[unit] for amount, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInputError(f"window must be a positive duration, got {window!r}.")
    return seconds


def select_by_relevance(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices (sorted) of `count` frames: half that the question singles out, half spread evenly.

    A frame is singled out by how far its context-token score lies from the median score of the window, in
    either direction: with the embedded tiny model the needle frame of "What colour is the shape on the white
    screen?" has the *lowest* score of 1,200 frames, and the highest for "white screen", and is the farthest
    from the median for both (docs/live.md). The evenly spread half keeps the whole window in view for
    questions about its course (how many scenes, what happened first).
    """
    total = len(scores)
    if count >= total:
        return np.arange(total)
    if count <= 0:
        return np.zeros(0, dtype=int)
    deviation = np.abs(scores - np.median(scores))
    picked = np.zeros(total, dtype=bool)
    picked[np.argsort(-deviation, kind="stable")[: (count + 1) // 2]] = True
    rest = np.flatnonzero(~picked)
    spread = np.linspace(0, len(rest) - 1, count - int(picked.sum())).round().astype(int)
    picked[rest[np.unique(spread)]] = True
    if picked.sum() < count:  # rounding merged some evenly spread picks: top up by deviation
        extra = [index for index in np.argsort(-deviation, kind="stable") if not picked[index]]
        picked[extra[: count - int(picked.sum())]] = True
    return np.flatnonzero(picked)


def _cross_attend(block: Any, rows: Any, visual: Any) -> Any:
    """A Q-Former cross-attention block (attention, dense, residual LayerNorm) of query `rows` ``(F or 1, Q, H)``
    over each frame's `visual` ``(F, S, C)``, without projecting the frame's S tokens to keys and values.

    The key projection moves to the queries' side: ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k``, whose last
    term is the same for every token and so leaves the softmax unchanged; and since each row of the softmax sums
    to one, ``P (X W_v^T + b_v) = (P X) W_v^T + b_v``. A frame costs O(Q x S x C) instead of O(S x C x C)
    (`LlamaVidModel.shared_text_queries` computes the same, up to float rounding).
    """
    attention = block.attention
    heads = attention.num_attention_heads
    frames, tokens, width = visual.shape
    queries = attention.query(rows).unflatten(-1, (heads, -1))  # (F|1, Q, heads, d)
    key_weight = attention.key.weight.unflatten(0, (heads, -1))  # (heads, d, C)
    folded = (queries.transpose(1, 2) @ key_weight.unsqueeze(0)) * attention.scaling  # (F|1, heads, Q, C)
    logits = folded.flatten(1, 2) @ visual.transpose(1, 2)  # (F, heads * Q, S)
    mixed = logits.softmax(dim=-1) @ visual  # (F, heads * Q, C)
    value_weight = attention.value.weight.unflatten(0, (heads, -1))  # (heads, d, C)
    values = mixed.unflatten(1, (heads, -1)) @ value_weight.transpose(1, 2).unsqueeze(0)  # (F, heads, Q, d)
    values = values + attention.value.bias.unflatten(0, (heads, -1)).unsqueeze(1)
    return block.output(values.transpose(1, 2).flatten(2), rows.expand(frames, -1, -1))


def _fast_context(model: Any, features: Any, states: Any) -> tuple[Any, Any]:
    """Context tokens ``(F, D)`` and frame scores ``(F,)`` of one question for frames ``(F, 1+N, C)``: what
    `LlamaVidModel.get_context_tokens` computes, with every projection of a frame's tokens moved to the
    question's side (`_cross_attend`), so scoring an hour of frames costs about half as much.

    `states` is the question's `LlamaVidModel.question_states`. The Q-Former's question rows after layer 0 are
    shared by every frame, so layer 1's self-attention projects them once; deeper layers attend per frame.
    """
    import torch

    from llamavid.model.modeling_llamavid import qformer_attend, qformer_key_values

    patches, visual = model.split_vision_features(features, from_pixels=True)
    if model.vlm_att_ln is not None:
        visual = model.vlm_att_ln(visual)
    frames = len(features)
    num_queries = model.config.num_query
    layers = model.qformer_layers()
    rows = states.attended[:, :num_queries]  # (1, Q, H): layer 0's self-attention does not see the frame
    text = states.text  # (1, L, H) question rows entering layer 1, or None
    for index, layer in enumerate(layers):
        is_last = index == len(layers) - 1
        if index:
            query_keys, query_values = qformer_key_values(layer.attention.attention, rows)
            assert text is not None
            text_keys, text_values = qformer_key_values(layer.attention.attention, text)
            keys = torch.cat([query_keys, text_keys.expand(frames, -1, -1, -1)], dim=2)
            values = torch.cat([query_values, text_values.expand(frames, -1, -1, -1)], dim=2)
            hidden = rows if is_last else torch.cat([rows, text.expand(frames, -1, -1)], dim=1)
            attended = qformer_attend(layer.attention, hidden, keys, values, states.key_mask)
            rows = attended[:, :num_queries]
            if not is_last:
                text = layer.feed_forward_chunk(attended[:, num_queries:])
        if layer.has_cross_attention:
            rows = _cross_attend(layer.crossattention, rows, visual)
        rows = layer.feed_forward_chunk_query(rows.expand(frames, -1, -1))
    text_queries = model.vlm_att_projector(rows)  # (F, Q, C)
    projector = model.vlm_att_key_projector
    scale = 1.0 / math.sqrt(projector.out_features)
    folded = text_queries @ projector.weight * scale  # (F, Q, C): the key projection on the queries' side
    logits = folded @ patches.transpose(1, 2)  # (F, Q, N) without the per-query bias term
    offset = (text_queries @ projector.bias) * scale  # (F, Q): shifts each query's logits, not its softmax
    scores = (torch.logsumexp(logits.float(), dim=-1) + offset.float()).mean(dim=-1)
    attended = (logits.softmax(dim=-1) @ patches).mean(dim=1)  # values are the raw patches
    return model.vlm_att_val_projector(attended), scores


def _clock(seconds: float) -> str:
    whole = int(max(seconds, 0.0))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# ---------------------------------------------------------------------------------------------------------
# Sources.


@dataclass(frozen=True)
class LiveSource:
    """What to read and how (see the module docstring).

    Attributes:
        target: a path (regular file, FIFO), ``"-"`` for stdin, or an open binary file object / file descriptor.
        raw_size: ``(width, height)`` when the bytes are raw RGB24 frames instead of a container stream.
        raw_fps: frame rate of raw input (frame i is shown at ``i / raw_fps`` seconds).
        idle_timeout: end the source after this many seconds without new bytes (``None``: never; files default
            to 10 s, pipes to ``None`` since they end with EOF).
        end_marker: for a growing file, a path whose appearance means the writer has finished.
    """

    target: Any
    raw_size: tuple[int, int] | None = None
    raw_fps: float | None = None
    idle_timeout: float | None = None
    end_marker: str | os.PathLike[str] | None = None

    @property
    def description(self) -> str:
        if isinstance(self.target, (str, os.PathLike)):
            return "<stdin>" if str(self.target) == "-" else os.fspath(self.target)
        if isinstance(self.target, int):
            return f"<fd {self.target}>"
        return str(getattr(self.target, "name", None) or f"<{type(self.target).__name__}>")

    def kind(self) -> str:
        """``file`` (followed as it grows), ``pipe`` (FIFO, stdin, a file object), ``camera`` (a V4L2 device,
        ``/dev/videoN``) or ``url`` (refused)."""
        target = self.target
        if isinstance(target, (str, os.PathLike)):
            text = os.fspath(target)
            if text == "-":
                return "pipe"
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
                return "url"
            camera = _CAMERA.match(text) is not None
            try:
                mode = os.stat(text).st_mode
            except OSError as error:
                if camera:
                    raise MediaError(
                        f"{text}: no camera there ({error.strerror}); list the cameras with "
                        "`v4l2-ctl --list-devices` (a container has them only when started with --device).",
                        text,
                    ) from error
                raise MediaError(f"{text}: cannot open the live source ({error.strerror}).", text) from error
            if camera and stat.S_ISCHR(mode):
                return "camera"
            if stat.S_ISREG(mode):
                return "file"
            if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):
                return "pipe"
            raise MediaError(f"{text}: not a file, a FIFO or a device; pass a video stream.", text)
        return "pipe"


class _Reader:
    """A file-like ``read(n)`` that returns the bytes available now and waits (interruptibly) for more.

    PyAV reads through it (it has no ``seek``, so the demuxer never seeks). Waiting happens in short polls, so
    closing the session, the end marker and the idle clock are noticed within `_POLL_S` seconds.
    """

    def __init__(
        self,
        source: LiveSource,
        stop: threading.Event,
        on_wait: Callable[[float], None],
    ) -> None:
        self.source = source
        self.stop = stop
        self.on_wait = on_wait
        self.kind = source.kind()
        self.name = source.description
        self.bytes = 0
        self.ended_by: str | None = None
        self.last_data = time.monotonic()
        idle = source.idle_timeout
        self.idle_timeout = DEFAULT_FILE_IDLE_TIMEOUT if idle is None and self.kind == "file" else idle
        self.tee: Callable[[bytes], None] | None = None  # gets a copy of every read (speech-to-text)
        self._fd: int | None = None
        self._own_fd = False
        self._handle: Any = None
        target = source.target
        if self.kind == "url":
            raise InvalidInputError(
                f"{self.name}: network sources are not supported by live sessions; pipe the stream through "
                "`ffmpeg -i URL -c copy -f mpegts -` instead."
            )
        if self.kind == "camera":
            pass  # opened by PyAV (`LiveSession._camera_frames`)
        elif isinstance(target, int):
            self._fd = target
        elif isinstance(target, (str, os.PathLike)) and os.fspath(target) == "-":
            self._fd = 0
        elif isinstance(target, (str, os.PathLike)):
            path = os.fspath(target)
            flags = os.O_RDONLY | (os.O_NONBLOCK if self.kind == "pipe" else 0)
            try:
                self._fd = os.open(path, flags)  # a FIFO opens at once; select waits for its writer
            except OSError as error:
                raise MediaError(f"{path}: cannot open the live source ({error.strerror}).", path) from error
            self._own_fd = True
        elif hasattr(target, "fileno"):
            self._fd = target.fileno()
        else:
            self._handle = target  # any object with read(n); reads may block

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self._own_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _end(self, reason: str) -> bytes:
        self.ended_by = self.ended_by or reason
        return b""

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else _READ_BYTES
        if self._handle is not None:
            if self.stop.is_set():
                return self._end("closed")
            data = self._handle.read(size)
            return self._got(data) if data else self._end("eof")
        assert self._fd is not None
        while True:
            if self.stop.is_set():
                return self._end("closed")
            if self.kind == "file":
                marker = self.source.end_marker
                finished = marker is not None and os.path.exists(marker)  # checked before reading: no race
                data = os.read(self._fd, size)
                if data:
                    return self._got(data)
                if finished:
                    return self._end("end marker")
                self.stop.wait(_POLL_S)
            else:
                ready, _, _ = select.select([self._fd], [], [], _POLL_S)
                if ready:
                    try:
                        data = os.read(self._fd, size)
                    except BlockingIOError:
                        continue
                    return self._got(data) if data else self._end("eof")
            idle = time.monotonic() - self.last_data
            self.on_wait(idle)
            if self.idle_timeout is not None and idle >= self.idle_timeout:
                return self._end("idle timeout")

    def _got(self, data: bytes) -> bytes:
        self.bytes += len(data)
        self.last_data = time.monotonic()
        if self.tee is not None:
            self.tee(data)
        return data

    def read_exact(self, size: int) -> bytes:
        """Exactly `size` bytes, or fewer at the end of the source (raw frames)."""
        parts: list[bytes] = []
        left = size
        while left > 0:
            data = self.read(min(left, 1 << 20))
            if not data:
                break
            parts.append(data)
            left -= len(data)
        return b"".join(parts)


class _ThreadWarnings(logging.Handler):
    """Collects warnings the decoder logs from one thread (damaged packets, broken timestamps)."""

    def __init__(self, thread: int, notes: deque[str]) -> None:
        super().__init__(logging.WARNING)
        self.thread = thread
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.notes.append(record.getMessage())


class _SubtitleFollower:
    """The cues of an .srt/.vtt file that is still being written, read again whenever it changes.

    Only whole cues count: the text after the last blank line may be a cue the writer is still writing, so it
    waits for the next read. A file that is missing (not started yet) has no cues; one that stops parsing keeps
    the cues read before, and `note` says why.
    """

    def __init__(self, path: str | os.PathLike[str], encoding: str | None = None) -> None:
        self.path = os.fspath(path)
        self.encoding = encoding
        self.note = ""
        self._seen: tuple[int, int] | None = None
        self._cues: list[Any] = []
        self._lock = threading.Lock()

    def cues(self) -> list[Any]:
        from llamavid.data.subtitles import decode_subtitle_bytes, parse_srt, parse_webvtt

        with self._lock:
            try:
                info = os.stat(self.path)
            except OSError:
                self.note = f"subtitles {self.path}: not there yet"
                return self._cues
            if self._seen == (info.st_size, info.st_mtime_ns):
                return self._cues
            with open(self.path, "rb") as handle:
                data = handle.read().replace(b"\r\n", b"\n")
            whole = data[: data.rfind(b"\n\n") + 2] if b"\n\n" in data else b""
            try:
                text = decode_subtitle_bytes(whole, source=self.path, encoding=self.encoding)
                webvtt = self.path.lower().endswith(".vtt") or text.lstrip("\ufeff").startswith("WEBVTT")
                cues = (parse_webvtt if webvtt else parse_srt)(text, source=self.path) if text.strip() else []
            except ValueError as error:  # SubtitleError: a damaged cue; keep what was read
                self.note = f"subtitles: {error}"
                return self._cues
            self._seen, self._cues, self.note = (
                (info.st_size, info.st_mtime_ns),
                sorted(cues, key=lambda cue: cue.start),
                "",
            )
            return self._cues


# ---------------------------------------------------------------------------------------------------------
# Results.


@dataclass(frozen=True)
class LiveStatus:
    """Where a live session stands.

    Attributes:
        session_id: the id; the cache entry is ``live-<session_id>``.
        source: what is read.
        state: ``starting`` (opening the source), ``running``, ``stalled`` (no data for a while, still waiting),
            ``ended`` (the source finished), ``failed`` (the source broke; what was read stays answerable) or
            ``closed`` (stopped by the caller).
        frames: frames that can be asked about (stored or in the chunk being filled).
        position: stream time of the newest of them, seconds (``None`` before the first).
        lag: seconds between the newest frame being decoded and it becoming answerable.
        frames_per_second: frames made answerable per wall-clock second, over the last 10 s while reading (0
            when nothing arrived in that time), over the whole run once the source has finished.
        realtime_factor: stream seconds made answerable per wall-clock second (``10`` = ten times real time),
            over the same span.
        idle: seconds since the source last delivered bytes.
        resumed_frames: frames that came from the cache of an earlier run with this id.
        message: what happened, in words (why it ended, what was damaged).
    """

    session_id: str
    source: str
    state: str
    frames: int
    position: float | None
    lag: float
    frames_per_second: float
    realtime_factor: float
    idle: float
    resumed_frames: int
    message: str

    @property
    def finished(self) -> bool:
        return self.state in ("ended", "failed", "closed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The one-line status the CLI prints on stderr."""
        where = "-" if self.position is None else _clock(self.position)
        text = (
            f"live {self.session_id}: {self.state}, position {where}, {self.frames} frames, lag {self.lag:.2f} s, "
            f"{self.frames_per_second:.1f} frames/s ({self.realtime_factor:.1f}x real time)"
        )
        return f"{text}; {self.message}" if self.message else text


@dataclass
class LiveAnswer:
    """An answer about a live stream, with what it was based on.

    Attributes:
        text: the answer.
        answer: the engine's `Answer` (token counts, timing).
        position: stream time of the newest frame the question saw.
        frames_seen: frames in the window.
        frames_used: frames shown to the model (fewer when the context policy selected).
        policy: the context policy applied, or ``"all"`` when every frame fitted.
        window: the window in seconds (``None``: everything).
        timestamps: stream times of the frames shown.
        subtitles: the subtitle text given with each shown frame (``None`` without subtitles or cues).
    """

    text: str
    answer: Any
    position: float
    frames_seen: int
    frames_used: int
    policy: str
    window: float | None
    timestamps: np.ndarray
    subtitles: list[str] | None = None

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "position": self.position,
            "frames_seen": self.frames_seen,
            "frames_used": self.frames_used,
            "policy": self.policy,
            "window": self.window,
            "prompt_tokens": self.answer.prompt_tokens,
            "completion_tokens": self.answer.completion_tokens,
            "seconds": self.answer.seconds,
        }


@dataclass
class _Snapshot:
    """The frames answerable at one instant: stored chunks (records) plus the in-memory tail."""

    chunks: list[dict[str, Any]]
    offsets: list[int]  # first frame index of each chunk
    stored_timestamps: np.ndarray
    tail_features: Any  # torch (t, 1+N, C) float16 or None
    tail_timestamps: np.ndarray

    @property
    def timestamps(self) -> np.ndarray:
        return np.concatenate([self.stored_timestamps, self.tail_timestamps])


class _ContextRows:
    """Context tokens by position in a scored window, filled as the scoring computes them."""

    def __init__(self, size: int) -> None:
        self.rows: Any = None  # torch (size, D), allocated with the first rows
        self.have = np.zeros(size, dtype=bool)

    def put(self, positions: np.ndarray, values: Any) -> None:
        import torch

        if self.rows is None:
            self.rows = values.new_zeros(len(self.have), values.shape[-1])
        self.rows[torch.as_tensor(positions, device=values.device)] = values
        self.have[positions] = True


# ---------------------------------------------------------------------------------------------------------
# The session.


class LiveSession:
    """Ask about a stream while it plays (see the module docstring).

    Args:
        engine: the `Engine` to encode and answer with.
        source: a `LiveSource`, a path, ``"-"`` (stdin) or a binary file object.
        fps: frames sampled per second of stream time (1, as the model was trained).
        session_id: names the cache entry; an existing entry with this id is resumed. Default: a new id.
        raw_size / raw_fps / idle_timeout / end_marker: see `LiveSource` (used when `source` is not one).
        context_policy: what `ask` does when the frames exceed the context (`CONTEXT_POLICIES`).
        max_frames: the most frames one answer shows (``None``: as many as the context takes); a window with
            more is reduced by the context policy as one that does not fit (``refuse`` ignores it).
        subtitles: an .srt/.vtt file that grows with the stream (cues in stream time); each answer reads its
            whole cues again and gives each shown frame its text, as ``llamavid ask`` lays out a movie's.
        subtitle_encoding: the subtitle file's encoding (default: detected).
        asr: also take cues from the stream's own speech (`llamavid.inference.asr`, the ``[asr]`` extra): the
            audio of a container stream is recognised as it arrives and each utterance is a cue on the same path
            as `subtitles` (both may be given). Refused for raw frames and cameras, which carry no audio.
        cache_dir: feature-cache root for the live entry (default: the engine's cache).
        chunk_frames: frames per stored chunk (the in-memory tail is at most this many frames).
        batch_frames: frames per encoder call.
        stall_after: seconds without data before the state says ``stalled``.
        max_thumbnails: thumbnails kept in memory (the newest ones) for timelines.
        resume: ``"auto"`` (a file is decoded again and the stored frames skipped; a pipe continues after them),
            ``"skip"`` or ``"append"``.
        start: start reading now (else call `start`).

    Raises:
        InvalidInputError: bad options, a bad session id, a network source, or an entry of another encoder.
        MediaError: the source cannot be opened.
    """

    def __init__(
        self,
        engine: Any,
        source: LiveSource | str | os.PathLike[str] | Any,
        *,
        fps: float = 1.0,
        session_id: str | None = None,
        raw_size: tuple[int, int] | None = None,
        raw_fps: float | None = None,
        idle_timeout: float | None = None,
        end_marker: str | os.PathLike[str] | None = None,
        context_policy: str = "relevance",
        max_frames: int | None = DEFAULT_MAX_FRAMES,
        subtitles: str | os.PathLike[str] | None = None,
        subtitle_encoding: str | None = None,
        asr: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        batch_frames: int = DEFAULT_BATCH_FRAMES,
        stall_after: float = 5.0,
        max_thumbnails: int = 512,
        resume: str = "auto",
        start: bool = True,
    ) -> None:
        from llamavid.data import FeatureCache

        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise InvalidInputError(f"fps must be a positive number, got {fps!r}.")
        if context_policy not in CONTEXT_POLICIES:
            raise InvalidInputError(
                f"context_policy must be one of {', '.join(CONTEXT_POLICIES)}, got {context_policy!r}."
            )
        if max_frames is not None and max_frames < 1:
            raise InvalidInputError(f"max_frames must be at least 1 (or None), got {max_frames!r}.")
        if chunk_frames < 1 or batch_frames < 1:
            raise InvalidInputError("chunk_frames and batch_frames must be at least 1.")
        if resume not in ("auto", "skip", "append"):
            raise InvalidInputError(f"resume must be auto, skip or append, got {resume!r}.")
        if not isinstance(source, LiveSource):
            source = LiveSource(source, raw_size, raw_fps, idle_timeout, end_marker)
        if source.raw_size is not None:
            width, height = source.raw_size
            if width < 1 or height < 1:
                raise InvalidInputError(f"raw frame size must be positive, got {width}x{height}.")
        if source.raw_fps is not None and not source.raw_fps > 0:
            raise InvalidInputError(f"raw_fps must be positive, got {source.raw_fps!r}.")
        session_id = session_id or uuid.uuid4().hex[:16]
        if not _SESSION_ID.match(session_id):
            raise InvalidInputError(f"session id {session_id!r} must be 1-64 letters, digits, '-' or '_'.")
        self.engine = engine
        self.source = source
        self.fps = float(fps)
        self.session_id = session_id
        self.context_policy = context_policy
        self.max_frames = max_frames
        self.subtitles = None if subtitles is None else _SubtitleFollower(subtitles, subtitle_encoding)
        self.chunk_frames = int(chunk_frames)
        self.batch_frames = int(batch_frames)
        self.stall_after = float(stall_after)
        if cache_dir is not None:
            self.cache = FeatureCache(cache_dir)
        elif engine.feature_cache is not None:
            self.cache = engine.feature_cache
        else:
            raise InvalidInputError(
                "live sessions store frame features in the feature cache, which is off for this engine; "
                "enable it or pass cache_dir."
            )
        self.path = self.cache.root / f"{ENTRY_PREFIX}{session_id}"
        self.kind = source.kind()  # raises early for a missing path
        if self.kind == "url":
            raise InvalidInputError(
                f"{source.description}: network sources are not supported by live sessions; pipe the stream "
                "through `ffmpeg -i URL -c copy -f mpegts -` instead."
            )
        self._resume_mode = ("skip" if self.kind == "file" else "append") if resume == "auto" else resume
        self.asr: Any = None  # the `LiveTranscriber`, started with the reader
        self._asr = bool(asr)
        if asr:
            from llamavid.inference.asr import check_source, load_recogniser

            check_source(source.raw_size is not None, self.kind == "camera", source.description)
            load_recogniser()  # a missing extra is an error here, not a note later

        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notes: deque[str] = deque(maxlen=20)
        self._state = "starting"
        self._message = ""
        self._meta: dict[str, Any] | None = None
        self._tail_features: list[Any] = []
        self._tail_timestamps: list[float] = []
        self._batch: list[np.ndarray] = []
        self._batch_timestamps: list[float] = []
        self._batch_since = 0.0
        self._thumbnails: deque[tuple[float, np.ndarray]] = deque(maxlen=max(1, int(max_thumbnails)))
        self._latest_frame: np.ndarray | None = None
        self._lag = 0.0
        self._idle = 0.0
        self._started_at: float | None = None
        self._ingested = 0
        # (wall time, frames ingested, stream position) after each encoded batch, for the rates in `status`
        self._progress: deque[tuple[float, int, float]] = deque(maxlen=512)
        self._score_cache: dict[str, dict[str, np.ndarray]] = {}
        self._resumed = self._load_existing()

        if start:
            self.start()

    # Public -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread (once)."""
        if self._thread is not None:
            return
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"llamavid-live-{self.session_id}", daemon=True
        )
        self._thread.start()

    @property
    def status(self) -> LiveStatus:
        with self._cond:
            frames_per_second, realtime_factor = self._rates()
            notes = "; ".join(dict.fromkeys(self._notes))
            for follower in (self.subtitles, self.asr):
                if follower is not None and follower.note:
                    notes = "; ".join(part for part in (notes, follower.note) if part)
            message = "; ".join(part for part in (self._message, notes) if part)
            return LiveStatus(
                session_id=self.session_id,
                source=self.source.description,
                state=self._state,
                frames=self._frame_count(),
                position=self._position(),
                lag=self._lag,
                frames_per_second=frames_per_second,
                realtime_factor=realtime_factor,
                idle=self._idle,
                resumed_frames=self._resumed,
                message=message,
            )

    def _rates(self) -> tuple[float, float]:
        """Frames and stream seconds made answerable per wall second: over the last `_RATE_WINDOW_S` while
        reading (0 when nothing came in that long), over the whole run once the source has finished."""
        samples = self._progress
        if len(samples) < 2:
            return 0.0, 0.0
        last_time, last_count, last_position = samples[-1]
        if self._state in ("ended", "failed", "closed"):
            reference, end = samples[0], last_time
        else:
            end = time.monotonic()
            recent = sum(1 for sample in samples if sample[0] >= end - _RATE_WINDOW_S)
            if recent == 0:
                return 0.0, 0.0
            reference = samples[max(0, len(samples) - recent - 1)]
        wall = max(end - reference[0], 1e-9)
        return (last_count - reference[1]) / wall, (last_position - reference[2]) / wall

    def wait(
        self,
        *,
        frames: int | None = None,
        position: float | None = None,
        states: tuple[str, ...] = (),
        timeout: float | None = 60.0,
    ) -> LiveStatus:
        """Block until `frames` are answerable, `position` (stream seconds) is reached, the state is one of
        `states`, or the source finished. With none of them, wait for the source to finish.

        Returns the status either way (also after `timeout`); check it.
        """

        def reached() -> bool:
            if self._state in ("ended", "failed", "closed") or self._state in states:
                return True
            if frames is not None and self._frame_count() >= frames:
                return True
            current = self._position()
            return position is not None and current is not None and current >= position

        with self._cond:
            self._cond.wait_for(reached, timeout=timeout)
        return self.status

    def close(self, timeout: float = 30.0) -> LiveStatus:
        """Stop reading, store the frames in memory as a last chunk and return the final status."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("live %s: the reader did not stop within %.0f s.", self.session_id, timeout)
        elif thread is None:
            with self._cond:
                self._set_state("closed", "closed before reading")
        return self.status

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latest_frame(self) -> np.ndarray | None:
        """The newest sampled frame (RGB, as decoded), for a live view."""
        with self._cond:
            return self._latest_frame

    def thumbnails(self) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps, (k, s, s, 3) uint8)`` of the newest kept thumbnails."""
        with self._cond:
            items = list(self._thumbnails)
        if not items:
            return np.zeros(0), np.zeros((0, THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3), np.uint8)
        return np.array([t for t, _ in items]), np.stack([image for _, image in items])

    def entry(self) -> Any:
        """The stored part as a `CacheEntry` (what `Engine.media_from_entry` takes), or None before a chunk."""
        from llamavid.data.feature_cache import CacheEntry

        with self._cond:
            if self._meta is None:
                return None
            meta = json.loads(json.dumps(self._meta))
        return CacheEntry(self.path, meta)

    def relevance(self, question: str, window: str | float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps, scores)`` of every frame in the window for `question`: the softmax of the context
        tokens' frame scores, as `Engine.attention` reports them."""
        snapshot = self._snapshot()
        timestamps = snapshot.timestamps
        chosen = self._window_indices(timestamps, parse_window(window))
        scores, _ = self._frame_scores(snapshot, chosen, question.strip() or "?")
        weights = np.exp(scores - scores.max()) if len(scores) else scores
        return timestamps[chosen], weights / weights.sum() if len(weights) else weights

    def ask(
        self,
        question: str,
        window: str | float | None = None,
        *,
        context_policy: str | None = None,
        max_frames: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        history: Sequence[tuple[str, str]] = (),
        on_delta: Callable[[str], None] | None = None,
    ) -> LiveAnswer:
        """Answer `question` about the frames seen so far (or the last `window`: ``"10m"``, ``90``, ...).

        `context_policy` and `max_frames` override the session's for this question (``max_frames=0``: as many
        frames as the context takes).

        Raises:
            InvalidInputError: no frame yet, a bad window or policy. ContextBudgetError: policy ``refuse`` and
                the frames do not fit, or the question alone does not fit.

        Earlier `history` turns ``(user, assistant)`` stay in the prompt as text (docs/architecture.md section 5).
        """
        import torch

        from llamavid.inference.media import PreparedMedia

        policy = context_policy or self.context_policy
        if policy not in CONTEXT_POLICIES:
            raise InvalidInputError(
                f"context_policy must be one of {', '.join(CONTEXT_POLICIES)}, got {policy!r}."
            )
        if max_frames is not None and max_frames < 0:
            raise InvalidInputError(f"max_frames must be 0 (no limit) or more, got {max_frames!r}.")
        limit = self.max_frames if max_frames is None else (max_frames or None)
        seconds = parse_window(window)
        engine = self.engine
        settings = engine.settings(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        snapshot = self._snapshot()
        timestamps = snapshot.timestamps
        if len(timestamps) == 0:
            status = self.status
            detail = f" ({status.message})" if status.message else ""
            raise InvalidInputError(
                f"live session {self.session_id} has no frame yet (state {status.state}{detail}); ask again "
                "once the stream has started."
            )
        window_indices = self._window_indices(timestamps, seconds)
        cues = self._cues()
        end = float(timestamps[-1]) + 1.0 / self.fps
        spoken = self._cue_texts(cues, timestamps[window_indices], end)
        fit = self._frames_that_fit(question, len(window_indices), settings, history, spoken)
        shown = fit if policy == "refuse" or limit is None else min(fit, limit)
        used_policy = "all"
        chosen = window_indices
        context: _ContextRows | None = None
        picks = np.arange(len(window_indices))
        if shown < len(window_indices):
            used_policy = policy
            if policy == "refuse" or fit == 0:
                engine.check_budget(
                    question.strip() or "?", len(window_indices), history=history, settings=settings
                )
                raise ContextBudgetError(  # only reached if the engine's check disagrees with the search
                    f"{len(window_indices)} frames do not fit the context; pass a window or a context policy."
                )
            if policy == "recent":
                picks = picks[-shown:]
            elif policy == "uniform":
                picks = np.unique(np.linspace(0, len(window_indices) - 1, shown).round().astype(int))
            else:
                scores, context = self._frame_scores(
                    snapshot, window_indices, question.strip(), keep_context=True
                )
                picks = select_by_relevance(scores, shown)
            chosen = window_indices[picks]
        features = self._gather(snapshot, chosen)
        tokens = None
        if context is not None:  # the tokens of frames scored for this question are computed already
            tokens = self._selected_tokens(features, context, picks, question.strip())
        features = features.to(device=engine.device, dtype=engine.dtype)
        texts = self._cue_texts(cues, timestamps[chosen], end, per_frame=True) if spoken else None
        media = PreparedMedia(
            source=f"live:{self.session_id}",
            is_image=False,
            timestamps=timestamps[chosen],
            duration=float(timestamps[-1]),
            features=features,
            thumbnails=np.full((len(chosen), 8, 8, 3), 128, dtype=np.uint8),
            subtitles=texts,
        )
        request = engine.build_request(question, media, history, settings=settings, visual_tokens=tokens)
        callback = None if on_delta is None else (lambda row, text: on_delta(text))
        with torch.no_grad():
            answer = engine.answer(request, on_delta=callback)
        return LiveAnswer(
            text=answer.text,
            answer=answer,
            position=float(timestamps[-1]),
            frames_seen=len(window_indices),
            frames_used=len(chosen),
            policy=used_policy,
            window=seconds,
            timestamps=timestamps[chosen],
            subtitles=texts,
        )

    # Answering internals -----------------------------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        import torch

        with self._cond:
            chunks = [] if self._meta is None else list(self._meta["chunks"])
            stored = [] if self._meta is None else list(self._meta["timestamps"])
            tail = torch.cat(self._tail_features) if self._tail_features else None
            tail_times = np.asarray(self._tail_timestamps, dtype=np.float64)
        offsets = np.concatenate([[0], np.cumsum([int(c["frames"]) for c in chunks])]).astype(int).tolist()
        return _Snapshot(chunks, offsets, np.asarray(stored, dtype=np.float64), tail, tail_times)

    @staticmethod
    def _window_indices(timestamps: np.ndarray, seconds: float | None) -> np.ndarray:
        if seconds is None or len(timestamps) == 0:
            return np.arange(len(timestamps))
        first = int(np.searchsorted(timestamps, timestamps[-1] - seconds, side="left"))
        return np.arange(first, len(timestamps))

    def _cues(self) -> list[Any]:
        """The cues of the growing subtitle file and of speech-to-text so far, sorted by start time."""
        cues = [] if self.subtitles is None else list(self.subtitles.cues())
        if self.asr is not None:
            cues = sorted(cues + self.asr.cues(), key=lambda cue: cue.start)
        return cues

    def _cue_texts(self, cues: list[Any], timestamps: np.ndarray, end: float, per_frame: bool = False) -> Any:
        """The subtitle texts of the frames at `timestamps` (``llamavid ask``'s alignment: a cue goes to the last
        frame shown before it ends; cues the stream has not reached are left out): one per frame with
        `per_frame`, else all of them joined (what the budget counts). ``None`` without any text."""
        from llamavid.data.subtitles import align_subtitles

        if not cues or not len(timestamps):
            return None
        reached = [cue for cue in cues if cue.start < end and cue.end > timestamps[0]]
        if not reached:
            return None
        texts = align_subtitles(
            reached,
            timestamps,
            duration=end,
            source=self.subtitles.path if self.subtitles else (self.asr.path if self.asr else ""),
        )
        if not any(text.strip() for text in texts):
            return None
        return texts if per_frame else " ".join(text for text in texts if text.strip())

    def _frames_that_fit(
        self,
        question: str,
        frames: int,
        settings: Any,
        history: Sequence[tuple[str, str]] = (),
        spoken: str | None = None,
    ) -> int:
        """The most frames (up to `frames`) that pass the engine's budget check for this question (and all the
        subtitle text `spoken` in the window, which the shown frames carry whichever they are)."""
        engine = self.engine
        text = question.strip() or "?"

        def fits(count: int) -> bool:
            if spoken is not None and count:  # a few positions of slack: the texts are split over frames
                count, texts = count + 4, [spoken] + [""] * (count + 3)
            else:
                texts = None
            try:
                engine.check_budget(text, count, history=history, settings=settings, per_frame_texts=texts)
            except ContextBudgetError:
                return False
            return True

        if fits(frames):
            return frames
        low, high = 0, frames  # fits(low) is assumed (0 frames: the text alone), fits(high) is False
        while high - low > 1:
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        return low

    def _chunk_features(self, snapshot: _Snapshot, index: int) -> Any:
        """Features of stored chunk `index` (memory-mapped read, checked against the recorded sha256 once)."""
        from safetensors import safe_open

        chunk = snapshot.chunks[index]
        path = self.path / chunk["file"]
        with safe_open(str(path), framework="pt") as handle:
            features = handle.get_tensor("features")
        if len(features) != int(chunk["frames"]):
            raise LlamaVidRuntimeError(f"live entry {self.path}: chunk {chunk['file']} changed on disk.")
        return features

    def _iter_parts(self, snapshot: _Snapshot, indices: np.ndarray) -> Iterator[tuple[np.ndarray, Any]]:
        """``(positions in indices, features rows)`` per stored chunk / tail touched by `indices`, in order."""
        import torch

        stored = len(snapshot.stored_timestamps)
        bounds = snapshot.offsets
        for index in range(len(snapshot.chunks)):
            start, stop = bounds[index], bounds[index + 1]
            left, right = np.searchsorted(indices, [start, stop])
            if left == right:
                continue
            features = self._chunk_features(snapshot, index)
            yield np.arange(left, right), features[torch.as_tensor(indices[left:right] - start)]
        left = int(np.searchsorted(indices, stored))
        if left < len(indices):
            assert snapshot.tail_features is not None
            yield (
                np.arange(left, len(indices)),
                snapshot.tail_features[torch.as_tensor(indices[left:] - stored)],
            )

    def _gather(self, snapshot: _Snapshot, indices: np.ndarray) -> Any:
        import torch

        parts = [rows for _, rows in self._iter_parts(snapshot, indices)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _frame_scores(
        self, snapshot: _Snapshot, indices: np.ndarray, question: str, keep_context: bool = False
    ) -> tuple[np.ndarray, _ContextRows | None]:
        """Unnormalised context-token frame scores for `question` at `indices`, a few chunks (32 MiB) per call.

        Stored chunks never change, so their scores are kept per question (the newest `_SCORED_QUESTIONS`
        questions, a float per frame): a question asked again only scores the chunks stored since, and the tail.
        With `keep_context`, the context tokens computed on the way are kept too (one row of the LLM's width per
        frame scored now), so the frames then shown need not pass through the Q-Former again.
        """
        import torch

        question = question or "?"
        with self._cond:
            known = self._score_cache.pop(question, {})
            self._score_cache[question] = known  # newest last
            while len(self._score_cache) > _SCORED_QUESTIONS:
                self._score_cache.pop(next(iter(self._score_cache)))
        context = _ContextRows(len(indices)) if keep_context else None
        scores = np.zeros(len(indices), dtype=np.float64)
        bounds = snapshot.offsets
        wanted: dict[int, tuple[int, int]] = {}  # chunk index -> first and last position in indices
        for index in range(len(snapshot.chunks)):
            left, right = (int(v) for v in np.searchsorted(indices, [bounds[index], bounds[index + 1]]))
            if left < right:
                wanted[index] = (left, right)
        missing = [index for index in wanted if snapshot.chunks[index]["sha256"] not in known]
        groups: list[list[int]] = [[]]
        held = 0
        for index in missing:
            size = int(snapshot.chunks[index]["bytes"])
            if groups[-1] and held + size > _SCORE_GROUP_BYTES:
                groups.append([])
                held = 0
            groups[-1].append(index)
            held += size
        for group in groups:
            if not group:
                continue
            parts = [self._chunk_features(snapshot, index) for index in group]
            computed, rows = self._score_rows(torch.cat(parts), question)
            first = 0
            for index, part in zip(group, parts, strict=True):
                known[snapshot.chunks[index]["sha256"]] = computed[first : first + len(part)].astype(
                    np.float32
                )
                if context is not None:
                    left, right = wanted[index]
                    local = first + indices[left:right] - bounds[index]
                    context.put(np.arange(left, right), rows[torch.as_tensor(local)])
                first += len(part)
        for index, (left, right) in wanted.items():
            values = known[snapshot.chunks[index]["sha256"]]
            scores[left:right] = values[indices[left:right] - bounds[index]]
        stored = len(snapshot.stored_timestamps)
        first_tail = int(np.searchsorted(indices, stored))
        if first_tail < len(indices):
            assert snapshot.tail_features is not None
            tail = snapshot.tail_features[torch.as_tensor(indices[first_tail:] - stored)]
            scores[first_tail:], rows = self._score_rows(tail, question)
            if context is not None:
                context.put(np.arange(first_tail, len(indices)), rows)
        return scores, context

    def _score_rows(self, features: Any, question: str) -> tuple[np.ndarray, Any]:
        """Frame scores and context tokens ``(t, D)`` of `features` ``(t, 1+N, C)`` for `question`.

        The scores are `LlamaVidModel.get_visual_tokens`' `frame_scores` and the tokens its context tokens; content
        tokens are left to the frames that are shown. A Q-Former with learned queries takes `_fast_context`,
        `_SCORE_BATCH_FRAMES` frames at a time; other text decoders the model's own `get_context_tokens`.
        """
        import torch

        from llamavid.model.modeling_llamavid import index_frame_pairs

        engine = self.engine
        model = engine.model.model
        encoded = engine.processor.qformer_tokenizer(
            [question], truncation=True, max_length=engine.processor.qformer_max_length, return_tensors="pt"
        )
        device = engine.device
        input_ids, attention_mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        fast = (
            model.vlm_att_query is not None
            and model.config.context_token
            and not model.training
            and hasattr(model.vlm_att_key_projector, "weight")
            and getattr(model.vlm_att_key_projector, "bias", None) is not None
        )
        with engine.lock, torch.no_grad():
            if fast:
                states = model.question_states(input_ids, attention_mask, engine.dtype)
                parts = [
                    _fast_context(model, part.to(device=device, dtype=engine.dtype), states)
                    for part in features.split(_SCORE_BATCH_FRAMES)
                ]
                context = torch.cat([tokens for tokens, _ in parts])
                scores = torch.cat([values for _, values in parts])
            else:
                patches, visual = model.split_vision_features(
                    features.to(device=device, dtype=engine.dtype), from_pixels=True
                )
                zero = torch.zeros(1, dtype=torch.long, device=device)
                pairs = index_frame_pairs(torch.tensor([len(features)], device=device), zero, zero)
                context, _, computed = model.get_context_tokens(
                    patches, visual, input_ids, attention_mask, pairs, output_attentions=True
                )
                assert computed is not None
                scores = computed
        return scores.float().cpu().numpy().astype(np.float64), context

    def _selected_tokens(self, features: Any, context: _ContextRows, picks: np.ndarray, question: str) -> Any:
        """Visual tokens of the shown frames (`features`, rows `picks` of the scored window), in prompt order:
        ``[context, content...]`` per frame, as `LlamaVidModel.get_visual_tokens` lays them out. Context tokens
        come from scoring; those of frames whose scores were stored are computed here."""
        import torch

        from llamavid.model.modeling_llamavid import interleave_visual_tokens

        engine = self.engine
        model = engine.model.model
        lacking = np.flatnonzero(~context.have[picks])
        if len(lacking):
            _, rows = self._score_rows(features[torch.as_tensor(lacking)], question)
            context.put(picks[lacking], rows)
        assert context.rows is not None
        with engine.lock, torch.no_grad():
            patches, _ = model.split_vision_features(
                features.to(device=engine.device, dtype=engine.dtype), from_pixels=True
            )
            is_image = torch.zeros(len(patches), dtype=torch.bool, device=engine.device)
            table, offsets, counts = model.get_content_tokens(patches, is_image)
            return interleave_visual_tokens(
                context.rows[torch.as_tensor(picks, device=context.rows.device)],
                table,
                offsets,
                counts,
                with_context=model.config.context_token,
            )

    # Cache entry -------------------------------------------------------------------------------------------
    def _load_existing(self) -> int:
        """Resume the entry of an earlier run with this id; returns its frame count (0 for a new session)."""
        from llamavid.data.feature_cache import CacheEntryError

        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            return 0
        try:
            meta = self.cache.read_sidecar(self.path.name)
        except CacheEntryError as error:
            raise InvalidInputError(f"live session {self.session_id}: cannot resume ({error}).") from error
        live = meta.get("live") or {}
        encoder = self.engine.frame_encoder
        if live.get("session_id") != self.session_id or meta.get("encoder_id") != encoder.encoder_id:
            raise InvalidInputError(
                f"live session {self.session_id}: {self.path} was written by another model or is not a live "
                "entry; use another session id."
            )
        if float(meta.get("fps") or 0) != self.fps:
            raise InvalidInputError(
                f"live session {self.session_id} was sampled at {meta.get('fps')} fps, not {self.fps}; resume it "
                "with the same fps or use another session id."
            )
        # Keep the chunks up to the first one that is missing or truncated (a kill mid-write).
        kept: list[dict[str, Any]] = []
        for chunk in meta.get("chunks", []):
            chunk_path = self.path / chunk["file"]
            if not chunk_path.is_file() or chunk_path.stat().st_size != int(chunk["bytes"]):
                break
            kept.append(chunk)
        frames = sum(int(c["frames"]) for c in kept)
        meta["chunks"] = kept
        meta["timestamps"] = list(meta["timestamps"][:frames])
        meta["num_frames"] = frames
        self._meta = meta if kept else None
        logger.info("live %s: resuming with %d stored frames", self.session_id, frames)
        return frames

    def _write_chunk(
        self, features: np.ndarray, timestamps: np.ndarray, final_state: str | None = None
    ) -> None:
        """Store the tail as the next chunk, then the sidecar: both atomic, chunk first (see the module doc)."""
        index = 0 if self._meta is None else len(self._meta["chunks"])
        # The cache's atomic chunk write (a full disk -> CacheWriteError), then the sidecar listing it.
        written = self.cache.write_chunk(self.path.name, index, features, timestamps)
        record = {name: written[name] for name in ("file", "start", "frames", "bytes", "sha256")}
        meta = self._next_meta(record, timestamps, [int(features.shape[1]), int(features.shape[2])])
        if final_state is not None:
            meta["live"]["state"] = final_state
        self.cache.write_sidecar(self.path.name, meta)
        with self._cond:
            self._meta = meta  # only the reader thread fills the tail, so it holds exactly these frames
            self._tail_features, self._tail_timestamps = [], []

    def _next_meta(self, record: dict[str, Any], timestamps: np.ndarray, shape: list[int]) -> dict[str, Any]:
        from llamavid.data.feature_cache import FORMAT_VERSION

        encoder = self.engine.frame_encoder
        digest = f"{ENTRY_PREFIX}{self.session_id}"
        if self._meta is None:
            meta: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "digest": digest,
                "key": {
                    "video_sha256": digest,
                    "fps": self.fps,
                    "num_frames": None,
                    "max_frames": None,
                    "encoder_id": encoder.encoder_id,
                    "preprocessing_id": encoder.preprocessing_id,
                },
                "source": {"path": self.source.description, "sha256": digest, "bytes": 0},
                "encoder_id": encoder.encoder_id,
                "preprocessing_id": encoder.preprocessing_id,
                "fps": self.fps,
                "feature_shape": shape,
                "dtype": "float16",
                "timestamps": [],
                "subtitles": None,
                "chunks": [],
                "complete": True,  # every sidecar describes a complete, readable prefix of the stream
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        else:
            meta = dict(self._meta)
            meta["chunks"] = list(meta["chunks"])
            meta["timestamps"] = list(meta["timestamps"])
        meta["chunks"].append(record)
        meta["timestamps"].extend(float(t) for t in timestamps)
        meta["num_frames"] = len(meta["timestamps"])
        meta["duration"] = float(meta["timestamps"][-1]) + 1.0 / self.fps
        meta["live"] = {
            "session_id": self.session_id,
            "source": self.source.description,
            "state": self._state,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return meta

    # Reader internals --------------------------------------------------------------------------------------
    def _frame_count(self) -> int:
        stored = 0 if self._meta is None else int(self._meta["num_frames"])
        return stored + len(self._tail_timestamps)

    def _position(self) -> float | None:
        if self._tail_timestamps:
            return float(self._tail_timestamps[-1])
        if self._meta is not None and self._meta["timestamps"]:
            return float(self._meta["timestamps"][-1])
        return None

    def _set_state(self, state: str, message: str | None = None) -> None:
        self._state = state
        if message is not None:
            self._message = message
        self._cond.notify_all()

    def _on_wait(self, idle: float) -> None:
        """Called by the reader while it waits for bytes: encode what is pending, say when the source stalls."""
        if self._batch:
            self._encode_batch()
        with self._cond:
            self._idle = idle
            if idle >= self.stall_after and self._state in ("running", "stalled"):
                self._state = "stalled"
                self._message = f"no data for {idle:.1f} s"
                self._cond.notify_all()
            elif idle < self.stall_after and self._state == "stalled":
                self._set_state("running", "")

    def _frames(self, reader: _Reader) -> Iterator[tuple[float, np.ndarray]]:
        """``(stream seconds, RGB frame)`` of every sampled frame, in order."""
        if reader.kind == "camera":
            yield from self._camera_frames()
            return
        if self.source.raw_size is not None:
            yield from self._raw_frames(reader)
            return
        from llamavid.data.video import iter_video_frames

        # PyAV needs only read(n) from a file object; the reader is one without seek.
        stream: Any = reader
        for chunk in iter_video_frames(stream, fps=self.fps, chunk_size=1):
            for timestamp, frame in zip(chunk.timestamps, chunk.frames, strict=True):
                yield float(timestamp), frame

    def _camera_frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """Frames of a V4L2 camera through PyAV's ``v4l2`` input, sampled by their timestamps (seconds since the
        first frame). `raw_size` and `raw_fps` request a capture size and rate from the driver."""
        import av

        path = os.fspath(self.source.target)
        if "video4linux2,v4l2" not in av.formats_available and "v4l2" not in av.formats_available:
            raise MediaError(
                f"{path}: this PyAV build has no V4L2 input; install a PyAV wheel built with it, or capture with "
                "`ffmpeg -f v4l2 -i DEVICE -c:v libx264 -f mpegts -` and pipe that.",
                path,
            )
        options: dict[str, str] = {}
        if self.source.raw_size is not None:
            options["video_size"] = "{}x{}".format(*self.source.raw_size)
        if self.source.raw_fps is not None:
            options["framerate"] = f"{self.source.raw_fps:g}"
        try:
            container = av.open(path, format="v4l2", options=options)
        except (OSError, av.FFmpegError) as error:
            raise MediaError(f"{path}: cannot open the camera ({error}).", path) from error
        first: float | None = None
        target = 0.0
        try:
            for frame in container.decode(video=0):
                if self._stop.is_set():
                    return
                when = frame.time if frame.time is not None else time.monotonic()
                first = when if first is None else first
                timestamp = when - first
                if timestamp + 1e-9 >= target:
                    target = (math.floor(timestamp * self.fps + 1e-9) + 1) / self.fps
                    yield timestamp, frame.to_ndarray(format="rgb24")
        finally:
            container.close()

    def _raw_frames(self, reader: _Reader) -> Iterator[tuple[float, np.ndarray]]:
        assert self.source.raw_size is not None
        width, height = self.source.raw_size
        rate = self.source.raw_fps or self.fps
        size = width * height * 3
        target = 0.0
        index = 0
        while True:
            data = reader.read_exact(size)
            if len(data) < size:
                if data:
                    self._notes.append(f"dropped a partial raw frame of {len(data)} bytes at the end")
                return
            timestamp = index / rate
            index += 1
            if timestamp + 1e-9 >= target:  # the first frame at or after every k / fps, as for files
                target = (math.floor(timestamp * self.fps + 1e-9) + 1) / self.fps
                yield timestamp, np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)

    def _run(self) -> None:
        handler = _ThreadWarnings(threading.get_ident(), self._notes)
        decoder_log = logging.getLogger("llamavid.data")
        decoder_log.addHandler(handler)
        reader: _Reader | None = None
        final = ("closed", "closed")
        try:
            reader = _Reader(self.source, self._stop, self._on_wait)
            if self._asr:
                from llamavid.inference.asr import LiveTranscriber

                self.asr = LiveTranscriber(self.source.description)
                reader.tee = self.asr.feed
            with self._cond:
                self._set_state("running")
            last = self._position()
            offset = 0.0
            if self._resume_mode == "append" and last is not None:
                offset = last + 1.0 / self.fps  # a pipe restarts its clock: continue after the stored frames
                last = None
            if self.asr is not None:
                self.asr.offset = offset
            for timestamp, frame in self._frames(reader):
                if self._stop.is_set():
                    break
                timestamp += offset
                if last is not None and timestamp <= last + 1e-6:
                    continue  # stored by an earlier run with this id
                self._add_frame(timestamp, frame)
            if not self._stop.is_set():
                words = {
                    "eof": "the source ended",
                    "end marker": "the end marker appeared",
                    "idle timeout": f"no new data for {reader.idle_timeout} s (idle timeout)",
                    "closed": "closed",
                }
                ended_by = reader.ended_by or "eof"
                final = ("ended", words.get(ended_by, ended_by))
        except Exception as error:  # the session must stay answerable whatever the source did
            if not isinstance(error, (MediaError, InvalidInputError)):
                logger.exception("live %s: reader failed", self.session_id)
            if not self._stop.is_set():
                kept = self._frame_count() + len(self._batch)
                position = self._position()
                where = "" if position is None else f" after {position:.1f} s"
                final = ("failed", f"the source failed{where} ({error}); {kept} frames kept")
        finally:
            decoder_log.removeHandler(handler)
            # Everything read is stored before the final state is announced, so a caller that waited for the
            # end finds the whole stream in the cache entry.
            try:
                self._encode_batch()
                self._store_tail(final[0])
            except (
                Exception
            ) as error:  # a full disk at the very end: what was read stays answerable in memory
                logger.warning("live %s: could not store the last chunk: %s", self.session_id, error)
                final = (final[0], f"{final[1]}; the last chunk was not stored ({error})")
            if reader is not None:
                reader.close()
            if self.asr is not None:  # the last utterances are cues before the final state is announced
                if self._stop.is_set():
                    self.asr.close()
                else:
                    self.asr.finish()
            with self._cond:
                self._idle = 0.0 if reader is None else time.monotonic() - reader.last_data
                self._set_state(*final)

    def _add_frame(self, timestamp: float, frame: np.ndarray) -> None:
        from llamavid.inference.media import thumbnails

        small = thumbnails(frame[None], THUMBNAIL_SIDE)[0]
        with self._cond:
            self._latest_frame = frame
            self._thumbnails.append((timestamp, small))
        if not self._batch:
            self._batch_since = time.monotonic()
        self._batch.append(frame)
        self._batch_timestamps.append(timestamp)
        if len(self._batch) >= self.batch_frames or time.monotonic() - self._batch_since > 1.0:
            self._encode_batch()

    def _encode_batch(self) -> None:
        if not self._batch:
            return
        import torch

        frames = np.stack(self._batch)
        times = list(self._batch_timestamps)
        self._batch, self._batch_timestamps = [], []
        engine = self.engine
        with engine.lock, torch.no_grad():
            # (b, 1+N, C) float16 on the CPU, as the cache stores them
            features = engine.frame_encoder(frames)
        now = time.monotonic()
        with self._cond:
            self._tail_features.append(features)
            self._tail_timestamps.extend(times)
            if not self._progress:  # the run's start: no frames, one frame period before the first
                self._progress.append((self._started_at or now, 0, times[0] - 1.0 / self.fps))
            self._ingested += len(times)
            self._progress.append((now, self._ingested, times[-1]))
            if self._state == "stalled":  # frames flow again
                self._state, self._message = "running", ""
            self._lag = now - self._batch_since
            self._cond.notify_all()
        if len(self._tail_timestamps) >= self.chunk_frames:
            self._store_tail()

    def _store_tail(self, final_state: str | None = None) -> None:
        """Write the in-memory tail as a chunk; with `final_state`, also record it in the sidecar."""
        import torch

        with self._cond:
            pending = bool(self._tail_timestamps)
            if pending:
                features = torch.cat(self._tail_features).numpy()
                timestamps = np.asarray(self._tail_timestamps, dtype=np.float64)
                self._tail_features = [torch.from_numpy(features)]
        if pending:
            self._write_chunk(np.ascontiguousarray(features, dtype=np.float16), timestamps, final_state)
        elif final_state is not None and self._meta is not None:
            meta = dict(self._meta)
            meta["live"] = {**meta.get("live", {}), "state": final_state}
            self.cache.write_sidecar(self.path.name, meta)
            with self._cond:
                self._meta = meta
