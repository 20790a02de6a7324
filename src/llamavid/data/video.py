"""Decode videos, images and frame folders into timestamped RGB frames.

One entry point per shape of result: :func:`decode_video` returns every sampled frame at once,
:func:`iter_video_frames` yields fixed-size chunks so an hour-long film never sits in RAM, and
:func:`load_media` dispatches on what the path is (video, image or folder of frames). Everything downstream
(subtitle alignment, feature-cache keys) is keyed by the returned timestamps, never by frame index.

Sampling follows the paper (docs/architecture.md §1): 1 frame per second by default, the first frame at t=0 and then the
first decoded frame at or after every ``k / fps`` seconds. For constant-rate video this picks exactly the
frames of the official ``0, step, 2·step, …`` indexing (``step = round(avg_fps / fps)``), and unlike it stays
correct for variable frame rate and for sources slower than the sampling rate (docs/architecture.md §11).

PyAV is the default and the fallback backend: it bundles its own FFmpeg and opens everything we test,
including non-seekable Matroska that torchcodec rejects. torchcodec is used only when asked for.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from llamavid.errors import InvalidInputError

from .errors import BackendUnavailableError, MediaError, NoVideoStreamError, VideoDecodeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DIMENSION",
    "MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "Frames",
    "VideoInfo",
    "current_max_pixels",
    "decode_video",
    "inspect_video",
    "iter_video_frames",
    "load_image",
    "load_image_folder",
    "load_media",
    "pixel_limit",
    "probe_video",
]

logger = logging.getLogger(__name__)

Backend = Literal["pyav", "torchcodec"]
MediaSource = str | os.PathLike[str] | IO[bytes]

# Larger than any real camera or screen recording (8K is 7680 px) but small enough that one RGB frame
# (16384² · 3 B = 805 MB) cannot exhaust memory by surprise; bigger headers are corrupt or hostile.
MAX_DIMENSION = 16384
# Default cap on the pixels of one image or video frame (width x height, as coded and as shown). 50 megapixels
# is above the cameras and screen recordings people send (8K video is 33 MP, a 48 MP phone photo fits) while
# one RGB copy is 150 MB. It is what stops a decompression bomb: a few KB of PNG declaring 12000x12000 would
# cost about 1.9 GB once decoded, resized and normalised, and is refused from its header instead.
MAX_PIXELS = 50_000_000
# Overrides MAX_PIXELS for a whole process (and the probe children it starts); see current_max_pixels().
MAX_PIXELS_ENV = "LLAMAVID_MAX_PIXELS"
_PIXEL_LIMIT: ContextVar[int | None] = ContextVar("llamavid_max_pixels", default=None)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_CHUNK_SIZE = 64
# Only used when a stream has neither usable timestamps nor a declared rate; FFmpeg assumes the same.
_FALLBACK_RATE = 25.0
# A frame whose timestamp is within this of a target counts as "at" the target: containers round
# timestamps to their time base (Matroska: 1 ms), so 1/3 s is stored as 0.333 s.
_MAX_TIMESTAMP_SLACK_S = 1e-3


@dataclass(frozen=True)
class Frames:
    """Sampled frames with the timestamps they were displayed at.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB, rotation and non-square pixels already applied (display geometry).
        timestamps: ``(T,)`` float64 seconds from the start of the media, strictly increasing.
        fps: The sampling rate that was asked for, or ``None`` for uniform sampling and single images.
        duration: Length of the whole source in seconds (not just of the sampled frames).
        source: The path (or a description of the file object) the frames came from.
    """

    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: np.ndarray  # (T,) float64 seconds
    fps: float | None
    duration: float
    source: str

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise InvalidInputError(
                f"frames must be uint8 (T, H, W, 3), got {self.frames.dtype} {self.frames.shape}"
            )
        if self.timestamps.shape != (self.frames.shape[0],):
            raise InvalidInputError(
                f"timestamps must have shape ({self.frames.shape[0]},), got {self.timestamps.shape}"
            )

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class VideoInfo:
    """What a container holds, read from its headers and its first decoded frame.

    Attributes:
        source: The probed path.
        width: Display width in pixels (after rotation and sample aspect ratio).
        height: Display height in pixels.
        coded_width: Width of the decoded picture before any correction.
        coded_height: Height of the decoded picture before any correction.
        rotation: Counter-clockwise display rotation in degrees stored in the file (0, 90, 180, 270).
        sample_aspect_ratio: Width of one pixel over its height (1.0 for square pixels).
        fps: Average frame rate declared by the container, if any.
        duration: Length in seconds, if the container declares it.
        num_frames: Number of frames, if the container declares it.
        codec: Video codec name as FFmpeg spells it.
        pix_fmt: Pixel format of the coded picture (``yuv420p10le`` for 10-bit), if known.
        stream_index: Index of the chosen video stream in the container.
        has_audio: Whether the container also has an audio stream.
        subtitle_streams: Indices of embedded subtitle streams.
    """

    source: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    sample_aspect_ratio: float
    fps: float | None
    duration: float | None
    num_frames: int | None
    codec: str
    pix_fmt: str | None
    stream_index: int
    has_audio: bool
    subtitle_streams: tuple[int, ...]

    def to_json(self) -> str:
        """Serialise to JSON (how :func:`probe_video` passes results out of its subprocess)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> VideoInfo:
        """Inverse of :meth:`to_json`."""
        fields = json.loads(text)
        fields["subtitle_streams"] = tuple(fields["subtitle_streams"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------------------------
# Input checks shared by all media kinds.


def _describe(source: MediaSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<file object {getattr(source, 'name', type(source).__name__)}>"


def _check_path(path: str | os.PathLike[str], *, allow_dir: bool = False) -> Path:
    """Fail early, with a message naming the file, on the mistakes FFmpeg reports cryptically."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: file not found. Check the path (relative paths start at {os.getcwd()}).", p)
    if p.is_dir():
        if allow_dir:
            return p
        raise MediaError(
            f"{p}: is a directory, expected a video or image file. "
            "To read a folder of frames, use load_media() or load_image_folder().",
            p,
        )
    if p.stat().st_size == 0:
        raise MediaError(
            f"{p}: file is empty (0 bytes). The download or copy probably failed; fetch it again.", p
        )
    return p


def _validate_max_pixels(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{where} must be a positive whole number of pixels, got {value!r}.")
    return value


def current_max_pixels() -> int:
    """The most pixels an image or video frame may have here, checked from headers before decoding.

    The innermost :func:`pixel_limit` block decides; outside any, the ``LLAMAVID_MAX_PIXELS`` environment
    variable; without it, :data:`MAX_PIXELS` (50 megapixels).

    Raises:
        InvalidInputError: ``LLAMAVID_MAX_PIXELS`` is set to something other than a positive whole number.
    """
    limit = _PIXEL_LIMIT.get()
    if limit is not None:
        return limit
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value: object = int(text)
    except ValueError:
        value = text
    return _validate_max_pixels(
        value, f"the {MAX_PIXELS_ENV} environment variable (e.g. {MAX_PIXELS_ENV}=50000000)"
    )


@contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Refuse images and video frames over ``max_pixels`` pixels inside this block.

    The limit holds for the current thread (or asyncio task) only, so a server can give each request its own;
    :func:`probe_video` passes it on to its child process.

    Raises:
        InvalidInputError: ``max_pixels`` is not a positive int.
    """
    token = _PIXEL_LIMIT.set(_validate_max_pixels(max_pixels, "max_pixels"))
    try:
        yield
    finally:
        _PIXEL_LIMIT.reset(token)


def _check_dimensions(
    width: int, height: int, source: str, *, error: type[MediaError] = VideoDecodeError
) -> None:
    """Refuse a picture size read from a header, before a pixel of it is decoded (see `current_max_pixels`)."""
    if width <= 0 or height <= 0 or width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise error(
            f"{source}: picture size {width}x{height} is outside the supported range 1..{MAX_DIMENSION} px per "
            "side; the file is corrupt or not a normal video. Re-encode it at a smaller size "
            "(e.g. ffmpeg -i in -vf scale=-2:720 out.mp4).",
            source,
        )
    limit = current_max_pixels()
    if width * height > limit:
        raise error(
            f"{source}: the picture is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"pixels ({limit / 1e6:g} megapixels) per image or video frame. Downscale it (a video: "
            f"ffmpeg -i in -vf scale=-2:1080 out.mp4), or raise the limit (llamavid serve --max-megapixels, or "
            f"the {MAX_PIXELS_ENV} environment variable).",
            source,
        )


def _check_picture(width: int, height: int, sample_aspect_ratio: float, source: str) -> None:
    """`_check_dimensions` for the coded picture and for the one shown: non-square pixels stretch it."""
    _check_dimensions(width, height, source)
    shown = _display_size(width, height, 0, sample_aspect_ratio)
    if shown != (width, height):
        _check_dimensions(*shown, source)


# ---------------------------------------------------------------------------------------------------------
# Sampling: which decoded frames to keep. Pure logic, shared by every backend and by frame folders.


class _TargetSelector:
    """Keeps the first frame at or after each target time, fed one timestamp at a time.

    Targets are either ``k / fps`` for k = 0, 1, … (open-ended, so streaming needs no duration) or a finite
    list (uniform sampling). A frame that satisfies several targets (a gap in variable-rate video) is kept
    once, so timestamps stay strictly increasing and no frame is duplicated.
    """

    def __init__(self, *, fps: float | None, targets: Sequence[float] | None, slack: float) -> None:
        self._fps = fps
        self._targets = None if targets is None else list(targets)
        self._slack = slack
        self._k = 0

    def _target(self, k: int) -> float | None:
        if self._targets is None:
            assert self._fps is not None
            return k / self._fps
        return self._targets[k] if k < len(self._targets) else None

    @property
    def next_target(self) -> float | None:
        return self._target(self._k)

    @property
    def following_target(self) -> float | None:
        """The target after :attr:`next_target` (``None`` when there is none)."""
        return self._target(self._k + 1) if self.next_target is not None else None

    @property
    def slack(self) -> float:
        return self._slack

    def expected_count(self, duration: float | None) -> int | None:
        """How many frames sampling will keep, from the targets or the duration (``None``: unknown)."""
        if self._targets is not None:
            return len(self._targets)
        if duration is None or self._fps is None or not math.isfinite(duration):
            return None
        return math.floor(max(duration, 0.0) * self._fps + self._slack) + 1

    def restarted(self) -> _TargetSelector:
        """A selector with the same targets, at the first one."""
        return _TargetSelector(fps=self._fps, targets=self._targets, slack=self._slack)

    @property
    def done(self) -> bool:
        return self.next_target is None

    def accept(self, timestamp: float) -> bool:
        """Whether the frame displayed at ``timestamp`` is kept; advances past every target it satisfies."""
        target = self._target(self._k)
        if target is None or timestamp < target - self._slack:
            return False
        while target is not None and target - self._slack <= timestamp:
            self._k += 1
            target = self._target(self._k)
        return True


def _validate_sampling(fps: float | None, num_frames: int | None, max_frames: int | None) -> None:
    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise InvalidInputError(f"num_frames must be a positive int or None, got {num_frames!r}.")
    elif fps is None or not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise InvalidInputError(f"fps must be a positive number (or pass num_frames), got {fps!r}.")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1
    ):
        raise InvalidInputError(f"max_frames must be a positive int or None, got {max_frames!r}.")


def _make_selector(
    *,
    fps: float | None,
    num_frames: int | None,
    max_frames: int | None,
    duration: float | None,
    slack: float,
    source: str,
) -> tuple[_TargetSelector, float | None]:
    """Build the selector; returns it with the effective sampling fps (``None`` when uniform).

    ``max_frames`` switches fps sampling to uniform sampling over the whole video instead of truncating it,
    so a capped long video still covers its ending (and its subtitles).
    """
    if num_frames is None and max_frames is not None and duration is not None:
        assert fps is not None
        expected = math.floor(max(duration - slack, 0.0) * fps) + 1
        if expected > max_frames:
            logger.info(
                "%s: %d frames at %g fps exceed max_frames=%d; sampling %d frames uniformly instead.",
                source,
                expected,
                fps,
                max_frames,
                max_frames,
            )
            num_frames = max_frames
    if num_frames is not None:
        num_frames = min(num_frames, max_frames) if max_frames is not None else num_frames
        span = duration if duration is not None and duration > 0 else 0.0
        targets = [i * span / num_frames for i in range(num_frames)]
        return _TargetSelector(fps=None, targets=targets, slack=slack), None
    return _TargetSelector(fps=fps, targets=None, slack=slack), fps


# ---------------------------------------------------------------------------------------------------------
# Pixel fixes applied identically by every backend.


def _apply_geometry(rgb: np.ndarray, rotation: int, sample_aspect_ratio: float) -> np.ndarray:
    """Turn a coded picture into what a player shows: stretch non-square pixels, then rotate.

    Args:
        rgb: ``(H, W, 3)`` uint8 picture as decoded.
        rotation: Counter-clockwise degrees from the display matrix (FFmpeg/PyAV convention).
        sample_aspect_ratio: Pixel width over height; anamorphic DVD video is 64:45 or 16:15.
    """
    if sample_aspect_ratio > 0 and abs(sample_aspect_ratio - 1.0) > 1e-3:
        from PIL import Image

        height, width = rgb.shape[:2]
        display_width = max(1, round(width * sample_aspect_ratio))
        rgb = np.asarray(Image.fromarray(rgb).resize((display_width, height), Image.Resampling.BICUBIC))
    quarter_turns = (round(rotation / 90) % 4) if rotation else 0
    if quarter_turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=quarter_turns))
    return rgb


def _normalise_rotation(degrees: float | None) -> int:
    if not degrees or not math.isfinite(degrees):
        return 0
    return int(round(degrees / 90.0) * 90) % 360


def _display_size(width: int, height: int, rotation: int, sar: float) -> tuple[int, int]:
    if sar > 0 and abs(sar - 1.0) > 1e-3:
        width = max(1, round(width * sar))
    return (height, width) if rotation in (90, 270) else (width, height)


# ---------------------------------------------------------------------------------------------------------
# Turning a decoded frame into the array returned: full-resolution RGB, or resized inside FFmpeg's scaler.


@dataclass(frozen=True)
class _Resize:
    """Resize the shortest side to ``size`` and centre-crop a ``crop`` square, as the image processor does."""

    size: int
    crop: int


def _validate_resize(size: int | None, crop_size: int | None) -> _Resize | None:
    for name, value in (("size", size), ("crop_size", crop_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidInputError(f"{name} must be a positive int (pixels) or None, got {value!r}.")
    if size is None:
        if crop_size is not None:
            raise InvalidInputError("crop_size needs size (the shortest side to resize to) as well.")
        return None
    crop = size if crop_size is None else crop_size
    if crop > size:
        raise InvalidInputError(f"crop_size {crop} is larger than size {size}; the crop must fit the frame.")
    return _Resize(size, crop)


# FFmpeg's scaler flags for the fast resize: bicubic with chroma interpolated at full horizontal resolution,
# the combination closest to the processor's full-resolution RGB + PIL bicubic (plain bicubic scales the
# subsampled chroma and smears colour edges: 2.4x the mean and 5x the max difference; docs/benchmarks.md).
_RESIZE_INTERPOLATION = ("BICUBIC", "FULL_CHR_H_INT")


def _resize_flags() -> Any:
    interpolation = _import_av().video.reformatter.Interpolation
    flags = interpolation[_RESIZE_INTERPOLATION[0]]
    for name in _RESIZE_INTERPOLATION[1:]:
        flags |= interpolation[name]
    return flags


def _convert_frame(frame: Any, stream: Any, resize: _Resize | None, threads: int, source: str) -> np.ndarray:
    """A decoded frame as ``(H, W, 3)`` uint8 RGB in display geometry, resized and cropped if asked.

    Without ``resize``: full resolution, the conversion sliced over ``threads`` (same pixels for any count).
    With it, one pass of FFmpeg's scaler converts and scales the coded picture straight to the size the
    processor's shortest-side resize gives (non-square pixels folded into the same scale), then the picture is
    rotated and centre-cropped: no full-resolution RGB copy and no PIL resize.
    """
    rotation = _normalise_rotation(getattr(frame, "rotation", 0))
    sar = _frame_sar(frame, stream)
    if resize is None:
        rgb = frame.to_ndarray(format="rgb24", threads=threads)
        return _apply_geometry(rgb, rotation, sar)
    width, height = _display_size(frame.width, frame.height, rotation, sar)
    short, long = (width, height) if width <= height else (height, width)
    # Same rounding as LlamaVidImageProcessor (transformers' get_resize_output_image_size).
    new_long = int(resize.size * long / short)
    new_width, new_height = (resize.size, new_long) if width <= height else (new_long, resize.size)
    if new_long < resize.crop:
        raise VideoDecodeError(
            f"{source}: a {width}x{height} frame resized to {new_width}x{new_height} is smaller than the "
            f"{resize.crop}-px crop.",
            source,
        )
    coded = (new_height, new_width) if rotation in (90, 270) else (new_width, new_height)
    scaled = frame.reformat(
        width=coded[0],
        height=coded[1],
        format="rgb24",
        interpolation=_resize_flags(),
        threads=threads,
    )
    rgb = scaled.to_ndarray()
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns:
        rgb = np.rot90(rgb, k=quarter_turns)
    top = (new_height - resize.crop) // 2
    left = (new_width - resize.crop) // 2
    return np.ascontiguousarray(rgb[top : top + resize.crop, left : left + resize.crop])


# ---------------------------------------------------------------------------------------------------------
# PyAV: opening and inspecting containers.


def _import_av() -> Any:
    try:
        import av
    except ImportError as error:  # pragma: no cover - av is a core dependency
        raise BackendUnavailableError(
            "PyAV is required to decode video but is not installed. Install it with: pip install av"
        ) from error
    return av


def _av_error_types() -> tuple[type[BaseException], ...]:
    av = _import_av()
    return (av.FFmpegError, OSError, EOFError, UnicodeDecodeError, ValueError, IndexError, MemoryError)


@dataclass
class _OpenVideo:
    container: Any
    stream: Any
    source: str
    origin: float  # seconds subtracted from every timestamp so the media starts at 0
    duration: float | None
    rate: float | None
    seekable: bool


def _open_video(source: MediaSource) -> _OpenVideo:
    """Open a container and pick its video stream, turning every failure into one clear error."""
    av = _import_av()
    name = _describe(source)
    seekable = True
    if isinstance(source, (str, os.PathLike)):
        _check_path(source)
        target: Any = os.fspath(source)
    else:
        target = source
        seekable = bool(getattr(source, "seekable", lambda: False)())
    try:
        container = av.open(target, mode="r", metadata_errors="replace")
    except _av_error_types() as error:
        raise VideoDecodeError(
            f"{name}: cannot open as a media container ({type(error).__name__}: {error}). The file is "
            "truncated, corrupted or not audio/video; check it plays (e.g. ffprobe) or re-encode it to MP4/H.264.",
            name,
        ) from error
    try:
        return _select_stream(container, name, seekable)
    except BaseException:
        container.close()
        raise


def _select_stream(container: Any, name: str, seekable: bool) -> _OpenVideo:
    av = _import_av()
    streams = [
        stream
        for stream in container.streams.video
        # Cover art in MP3/M4A/MKV is a one-picture "video" stream; it is not the video.
        if not (stream.disposition & av.stream.Disposition.attached_pic)
    ]
    if not streams:
        if container.streams.audio:
            raise NoVideoStreamError(
                f"{name}: has audio but no video stream. LLaMA-VID needs pictures; pass a video or image file "
                "(to use only the speech, transcribe it and give the text as the prompt).",
                name,
            )
        raise NoVideoStreamError(
            f"{name}: contains no video stream (format '{container.format.name}'). Expected a video file "
            "such as MP4, MKV or WebM.",
            name,
        )
    stream = streams[0]
    codec_context = stream.codec_context
    codec_name = getattr(getattr(codec_context, "codec", None), "name", None) or "unknown"
    if codec_context is None or codec_name in ("none", "unknown"):
        raise VideoDecodeError(
            f"{name}: video codec is not supported by the bundled FFmpeg (codec tag "
            f"'{getattr(stream, 'codec_tag', '?')}'). Re-encode to H.264 (ffmpeg -i in -c:v libx264 out.mp4).",
            name,
        )
    # From the stream header: a frame over the pixel limit is refused before any is decoded.
    _check_picture(codec_context.width, codec_context.height, _frame_sar(None, stream), name)
    stream.thread_type = "AUTO"

    container_start = container.start_time / 1_000_000 if container.start_time is not None else None
    stream_start = (
        float(stream.start_time * stream.time_base)
        if stream.start_time is not None and stream.time_base is not None
        else None
    )
    origin = container_start if container_start is not None else (stream_start or 0.0)
    duration = None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / 1_000_000
    rate = None
    for candidate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if candidate is not None and 0 < float(candidate) < 10_000:
            rate = float(candidate)
            break
    return _OpenVideo(container, stream, name, origin, duration, rate, seekable)


def _scan_duration(opened: _OpenVideo) -> float | None:
    """Duration from packet timestamps, for containers whose header does not declare it (demux only)."""
    stream, end = opened.stream, None
    if not opened.seekable:
        return None
    try:
        for packet in opened.container.demux(stream):
            if packet.pts is None or packet.time_base is None:
                continue
            packet_end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - opened.origin
            end = packet_end if end is None else max(end, packet_end)
        opened.container.seek(0, backward=True, any_frame=False)
    except _av_error_types() as error:
        logger.warning(
            "%s: could not scan for the duration (%s); sampling from the start.", opened.source, error
        )
        return None
    return end


def inspect_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's geometry, rate and length, decoding only its first frame.

    Runs in the calling process; use :func:`probe_video` for untrusted files so a decoder crash or hang
    cannot take the caller down.

    Raises:
        MediaError: Missing, empty or directory path.
        NoVideoStreamError: Audio-only or stream-less container.
        VideoDecodeError: Corrupted/truncated container, unsupported codec, absurd size, undecodable frames.
    """
    opened = _open_video(path)
    try:
        stream, name = opened.stream, opened.source
        first = None
        try:
            for frame in opened.container.decode(stream):
                first = frame
                break
        except _av_error_types() as error:
            raise VideoDecodeError(
                f"{name}: the first video frame cannot be decoded ({type(error).__name__}: {error}). "
                "The file is corrupted or uses an unsupported codec profile; re-encode it to H.264.",
                name,
            ) from error
        if first is None:
            raise VideoDecodeError(
                f"{name}: the video stream holds no decodable frame. The file is truncated or empty; "
                "fetch it again.",
                name,
            )
        rotation = _normalise_rotation(getattr(first, "rotation", 0))
        sar = _frame_sar(first, stream)
        width, height = _display_size(first.width, first.height, rotation, sar)
        num_frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
        return VideoInfo(
            source=name,
            width=width,
            height=height,
            coded_width=first.width,
            coded_height=first.height,
            rotation=rotation,
            sample_aspect_ratio=sar,
            fps=opened.rate,
            duration=opened.duration,
            num_frames=num_frames,
            codec=stream.codec_context.codec.name,
            pix_fmt=getattr(first.format, "name", None),
            stream_index=stream.index,
            has_audio=bool(opened.container.streams.audio),
            subtitle_streams=tuple(s.index for s in opened.container.streams.subtitles),
        )
    finally:
        opened.container.close()


def _frame_sar(frame: Any, stream: Any) -> float:
    for owner in (frame, stream.codec_context, stream):
        ratio = getattr(owner, "sample_aspect_ratio", None)
        if ratio is not None and ratio.numerator > 0 and ratio.denominator > 0:
            return float(Fraction(ratio.numerator, ratio.denominator))
    return 1.0


# ---------------------------------------------------------------------------------------------------------
# Probing in a subprocess.

_PROBE_ERRORS: dict[str, type[MediaError]] = {
    cls.__name__: cls for cls in (MediaError, VideoDecodeError, NoVideoStreamError, BackendUnavailableError)
}


def probe_video(path: str | os.PathLike[str], *, timeout: float = 30.0) -> VideoInfo:
    """:func:`inspect_video` in a child process, for files from untrusted users.

    FFmpeg parses hostile input in C; a crash (segfault, abort) or an endless loop there would take the
    whole server down. The child reports back through JSON on stdout, so nothing but plain data crosses the
    process boundary.

    Args:
        path: Video file to probe.
        timeout: Seconds before the child is killed and the file rejected.

    Raises:
        MediaError: Same as :func:`inspect_video`, plus a ``VideoDecodeError`` when the child crashes or hangs.
    """
    name = os.fspath(path)
    _check_path(path)
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[MAX_PIXELS_ENV] = str(current_max_pixels())  # the child refuses oversized frames from the header
    command = [sys.executable, "-m", "llamavid.data._probe", os.path.abspath(name)]
    try:
        completed = subprocess.run(command, capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as error:
        raise VideoDecodeError(
            f"{name}: probing took longer than {timeout:g} s and was stopped; the file is probably malformed. "
            "Re-encode it, or raise the timeout if it lives on a very slow disk.",
            name,
        ) from error
    stdout = completed.stdout.decode("utf-8", "replace").strip()
    if completed.returncode == 0:
        return replace(VideoInfo.from_json(stdout), source=name)
    try:
        report = json.loads(stdout.splitlines()[-1]) if stdout else None
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict) and report.get("error") in _PROBE_ERRORS:
        raise _PROBE_ERRORS[report["error"]](str(report.get("message")), name)
    how = (
        f"signal {-completed.returncode}" if completed.returncode < 0 else f"exit code {completed.returncode}"
    )
    detail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    raise VideoDecodeError(
        f"{name}: the decoder crashed while probing ({how}) {detail[0]}. The file is corrupted or hostile; "
        "re-encode it from a trusted source.",
        name,
    )


# ---------------------------------------------------------------------------------------------------------
# Decoding backends (private): each yields (timestamp, (H, W, 3) uint8) for the selected frames.


def _iter_pyav(
    opened: _OpenVideo, selector: _TargetSelector, max_frames: int | None, resize: _Resize | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode sequentially, seeking only over gaps longer than two observed keyframe intervals.

    Sequential decoding is what makes 1 fps sampling of high-rate video cheap (every frame has to be
    decoded from the previous keyframe anyway); seeking pays off only for sparse uniform sampling.
    """
    container, stream, name = opened.container, opened.stream, opened.source
    time_base = stream.time_base
    rate = opened.rate or _FALLBACK_RATE
    previous_ts: float | None = None
    last_kept: float | None = None
    timestamps_reliable = True
    gop = _KeyframeInterval()
    seek_allowed = opened.seekable
    kept = bad_packets = 0
    warned_timestamps = False
    checked_size: tuple[int, int, float] | None = None
    skipper = _NonReferenceSkipper(opened, rate)
    packets = _skip_to_keyframes(container.demux(stream), opened, selector, gop)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except _av_error_types() as error:
            if kept == 0:
                raise VideoDecodeError(
                    f"{name}: reading the container failed before any frame ({type(error).__name__}: {error}). "
                    "The file is truncated or corrupted; re-encode or fetch it again.",
                    name,
                ) from error
            logger.warning(
                "%s: stopped reading at a damaged part (%s); keeping %d frames.", name, error, kept
            )
            break
        skipper.before(packet, selector, timestamps_reliable)
        try:
            decoded = packet.decode()
        except _av_error_types():
            bad_packets += 1
            continue
        for frame in decoded:
            if frame.pts is not None and time_base is not None:
                ts = float(frame.pts * time_base) - opened.origin
            else:
                ts = None
            if ts is None or (previous_ts is not None and ts <= previous_ts):
                # Broken or missing timestamps: count frames at the declared rate instead.
                timestamps_reliable = False
                if not warned_timestamps:
                    logger.warning(
                        "%s: missing or non-increasing frame timestamps; using frame index / %g fps.",
                        name,
                        rate,
                    )
                    warned_timestamps = True
                ts = 0.0 if previous_ts is None else previous_ts + 1.0 / rate
            size = (frame.width, frame.height, _frame_sar(frame, stream))
            if size != checked_size:  # headers can lie about the size, and it can change mid-stream
                _check_picture(*size, name)
                checked_size = size
            previous_ts = ts
            if selector.accept(ts):
                yield ts, _convert_frame(frame, stream, resize, _SCALER_THREADS, name)
                kept += 1
                last_kept = ts
                if (max_frames is not None and kept >= max_frames) or selector.done:
                    return
        target = selector.next_target
        if (
            seek_allowed
            and timestamps_reliable
            and target is not None
            and previous_ts is not None
            and gop.longest is not None
            and target - previous_ts > max(2 * gop.longest, 1.0)
        ):
            seek_allowed = _seek_before(opened, target, last_kept)
            if seek_allowed:
                gop.last = previous_ts = None
                packets = _skip_to_keyframes(container.demux(stream), opened, selector, gop)
    if bad_packets:
        logger.warning("%s: skipped %d undecodable packets.", name, bad_packets)
    if kept == 0:
        raise VideoDecodeError(
            f"{name}: no frame could be decoded from the video stream. The file is truncated, corrupted or uses "
            "an unsupported codec profile; re-encode it to H.264.",
            name,
        )


# Threads for the YUV -> RGB conversion of kept frames (output identical for any count; more than 4 gains little).
_SCALER_THREADS = max(1, min(4, os.cpu_count() or 1))
# Non-reference frames that cannot be a sample are not decoded (see _NonReferenceSkipper); False restores the
# decoder as it was before (benchmarks/decode.py measures both, tests check they return the same frames).
_SKIP_NONREFERENCE = True
# Codecs whose decoders honour AVDISCARD_NONREF by dropping only frames that nothing references (checked
# frame for frame against full decoding in tests/data/test_video.py).
_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video", "vp8", "vp9"})


class _NonReferenceSkipper:
    """Switches the decoder's frame skipping per packet: non-reference frames that cannot be a sample are skipped.

    A frame no other frame references can be left undecoded without changing any other frame. The sample for
    the next target time T is the first frame shown at or after T, so a packet (whose presentation time is its
    frame's) cannot give it when it is shown

    * clearly before T (a margin of two frame durations absorbs rounding), or
    * after a frame already sent to the decoder in full that is itself at or after T, and clearly before the
      target after T (frames arrive in decode order, so the earliest one at or after T is always decoded).

    Such packets are decoded with ``skip_frame = "NONREF"``, all others with ``"DEFAULT"``. Targets only move
    forward, so a frame skipped for one target cannot be the sample of a later one. With frame threading FFmpeg
    hands the setting to the worker that decodes the packet, so switching per packet is exact. Streams without
    packet timestamps, or whose frame timestamps turned out unreliable, are decoded in full.
    """

    def __init__(self, opened: _OpenVideo, rate: float) -> None:
        self._context = opened.stream.codec_context
        self._time_base = opened.stream.time_base
        self._origin = opened.origin
        self._margin = 2.0 / rate + _MAX_TIMESTAMP_SLACK_S
        codec = getattr(getattr(self._context, "codec", None), "name", None)
        self._enabled = _SKIP_NONREFERENCE and codec in _NONREF_CODECS and self._time_base is not None
        self._skipping = False
        self._decoded: list[float] = []  # times of packets recently decoded in full

    def before(self, packet: Any, selector: _TargetSelector, timestamps_reliable: bool) -> None:
        """Set the skipping for the packet about to be decoded."""
        if not self._enabled:
            return
        target = selector.next_target
        skip = False
        if timestamps_reliable and target is not None and packet.pts is not None:
            time = float(packet.pts * self._time_base) - self._origin
            if time < target - self._margin:
                skip = True
            else:
                after = selector.following_target
                if after is None or time < after - self._margin:
                    floor = target - selector.slack
                    skip = any(floor <= earlier < time for earlier in self._decoded)
            if not skip:
                self._decoded = [t for t in self._decoded if t >= target - self._margin]
                self._decoded.append(time)
        if skip != self._skipping:
            self._context.skip_frame = "NONREF" if skip else "DEFAULT"
            self._skipping = skip


# Bounds the look-ahead of _skip_to_keyframes (packets are small; 4096 is minutes of 30 fps video).
_MAX_LOOKAHEAD_PACKETS = 4096


@dataclass
class _KeyframeInterval:
    """Longest distance between consecutive keyframe packets seen so far (what a seek can save)."""

    last: float | None = None
    longest: float | None = None

    def observe(self, keyframe_time: float) -> None:
        if self.last is not None and keyframe_time > self.last:
            self.longest = max(self.longest or 0.0, keyframe_time - self.last)
        self.last = keyframe_time


def _skip_to_keyframes(
    packets: Iterator[Any], opened: _OpenVideo, selector: _TargetSelector, gop: _KeyframeInterval
) -> Iterator[Any]:
    """Pass packets on to the decoder, dropping whole GOPs that end before the next target.

    Demuxing is cheap and decoding is not: packets are buffered until one reaches the next target time; if
    the buffer holds a keyframe at or before the target, everything before that keyframe cannot be the
    kept frame nor a reference of it (keyframes start a GOP), so it is never decoded. This gives sequential
    decoding the benefit of seeking without a seek per sampled frame (at 1 fps with a 2 s GOP it halves the
    frames decoded) and works on non-seekable input.
    """
    stream = opened.stream
    time_base = stream.time_base
    pending: list[Any] = []
    for packet in packets:
        pending.append(packet)
        target = selector.next_target
        if target is None or packet.pts is None or time_base is None:
            yield from pending
            pending = []
            continue
        packet_time = float(packet.pts * time_base) - opened.origin
        if packet.is_keyframe:
            gop.observe(packet_time)
        reached = packet_time >= target
        if not reached and len(pending) < _MAX_LOOKAHEAD_PACKETS:
            continue
        start = 0
        for index, candidate in enumerate(pending):
            if (
                candidate.is_keyframe
                and candidate.pts is not None
                and float(candidate.pts * time_base) - opened.origin <= target
            ):
                start = index
        if start > 0:
            # Frames still delayed inside the decoder precede the keyframe, hence the target: drop them too.
            stream.codec_context.flush_buffers()
        if reached:
            yield from pending[start:]
            pending = []
        else:
            # Look-ahead full and the target still ahead: keep only the GOP that may contain it.
            pending = pending[start:]
            if len(pending) >= _MAX_LOOKAHEAD_PACKETS:
                yield from pending
                pending = []
    yield from pending


def _seek_before(opened: _OpenVideo, target: float, last_kept: float | None) -> bool:
    """Seek to the keyframe before ``target``; returns whether seeking should stay enabled."""
    stream = opened.stream
    try:
        offset = int((target + opened.origin) / stream.time_base)
        opened.container.seek(offset, stream=stream, backward=True, any_frame=False)
    except _av_error_types() as error:
        logger.debug("%s: seek failed (%s); decoding sequentially.", opened.source, error)
        if last_kept is not None:
            # A failed seek may leave the demuxer anywhere; go back to a known point and never seek again.
            back = int((last_kept + opened.origin) / stream.time_base)
            opened.container.seek(back, stream=stream, backward=True, any_frame=False)
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# PyAV, segment-parallel: keyframe-aligned segments decoded at once by several decoders.

# Most decoders run at once by default (one per core up to this; more gains little at 1 fps).
_MAX_AUTO_WORKERS = 8


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        return min(_available_cores(), _MAX_AUTO_WORKERS)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"workers must be a positive int or None (one per core), got {workers!r}.")
    return workers


@dataclass(frozen=True)
class _Segment:
    """A run of packets one decoder handles alone, starting at a keyframe.

    The segment owns the frames shown in ``[low, high)`` seconds: those of its keyframe group, plus the leading
    frames of the next group (shown before the next keyframe but decoded after it, in open GOPs), for which its
    packet range extends over the next keyframe. ``before`` is the latest time shown before ``low`` (where the
    sampling stands when the segment starts); ``last`` the latest time it owns.
    """

    start: int  # decode-order index of the first packet
    stop: int  # index after the last packet
    key_pts: int | None  # pts of the keyframe to seek to; None: read from the beginning
    low: float
    high: float
    before: float | None
    last: float


def _plan_segments(opened: _OpenVideo, path: str) -> list[_Segment] | None:
    """Demux the file once (no decoding) and cut it at keyframes; ``None`` when it cannot be cut exactly.

    Cutting is exact when every packet has a distinct timestamp, and each keyframe group's frames are shown
    after its keyframe but for leading frames that directly follow the keyframe in decode order.
    """
    av = _import_av()
    time_base = opened.stream.time_base
    if time_base is None:
        return None
    pts_list: list[int | None] = []
    keys: list[int] = []
    try:
        with av.open(path, mode="r", metadata_errors="replace") as container:
            stream = container.streams[opened.stream.index]
            for index, packet in enumerate(container.demux(stream)):
                if not packet.size:
                    pts_list.append(None)
                    continue
                if packet.pts is None:
                    return None
                pts_list.append(packet.pts)
                if packet.is_keyframe and index > 0:
                    keys.append(index)
    except _av_error_types():
        return None
    present = [p for p in pts_list if p is not None]
    if len(keys) < 1 or len(set(present)) != len(present):
        return None

    def seconds(pts: int) -> float:
        return float(pts * time_base) - opened.origin

    starts = [0, *keys]
    bounds = [*starts, len(pts_list), len(pts_list)]
    segments: list[_Segment] = []
    before: float | None = None
    for g, start in enumerate(starts):
        end = bounds[g + 1]
        low_pts = pts_list[start] if g > 0 else None
        high_pts = pts_list[end] if end < len(pts_list) else None
        # This group's frames, but for its own leading frames (owned by the previous segment, checked there).
        own = [p for p in pts_list[start:end] if p is not None and (low_pts is None or p >= low_pts)]
        stop = end
        if high_pts is not None:
            if any(p >= high_pts for p in own):
                return None  # a frame of this group shown after the next keyframe
            index = end + 1
            while index < len(pts_list) and (pts_list[index] is None or pts_list[index] < high_pts):  # type: ignore[operator]
                index += 1
            leading = [p for p in pts_list[end + 1 : index] if p is not None]
            if any(p is not None and p < high_pts for p in pts_list[index : bounds[g + 2]]):
                return None  # a frame shown before its keyframe, but not right after it: not cut exactly
            if leading:
                stop = index
                own += leading
        if not own:
            return None
        last = seconds(max(own))
        segments.append(
            _Segment(
                start=start,
                stop=stop,
                key_pts=low_pts,
                low=-math.inf if low_pts is None else seconds(low_pts),
                high=math.inf if high_pts is None else seconds(high_pts),
                before=before,
                last=last,
            )
        )
        before = last
    return segments


class _SegmentDecoder:
    """One decoder per worker thread, each with its own container (FFmpeg releases the GIL while decoding)."""

    def __init__(self, opened: _OpenVideo, path: str, threads: int, resize: _Resize | None) -> None:
        self._opened = opened
        self._path = path
        self._threads = threads
        self._resize = resize
        self._local = threading.local()
        self._lock = threading.Lock()
        self._containers: list[Any] = []

    def _open(self) -> _OpenVideo:
        av = _import_av()
        container = av.open(self._path, mode="r", metadata_errors="replace")
        with self._lock:
            self._containers.append(container)
        stream = container.streams[self._opened.stream.index]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self._threads
        return replace(self._opened, container=container, stream=stream)

    def close(self) -> None:
        with self._lock:
            for container in self._containers:
                container.close()
            self._containers.clear()

    def _packets(self, segment: _Segment) -> tuple[_OpenVideo, Iterator[Any]]:
        """The packets of ``segment`` from a container positioned at its first one."""
        opened: _OpenVideo | None = getattr(self._local, "opened", None)
        if opened is None or segment.key_pts is None:
            # The first segment (and a thread's first job) reads from the beginning of a fresh container.
            fresh = self._open()
            if segment.key_pts is None:
                return fresh, itertools.islice(fresh.container.demux(fresh.stream), segment.stop)
            self._local.opened = opened = fresh
        opened.stream.codec_context.flush_buffers()
        stream = opened.stream
        try:
            opened.container.seek(segment.key_pts, stream=stream, backward=True, any_frame=False)
            packets = opened.container.demux(stream)
            for packet in packets:
                if packet.is_keyframe and packet.pts == segment.key_pts:
                    return opened, itertools.chain(
                        [packet], itertools.islice(packets, segment.stop - segment.start - 1)
                    )
                if packet.pts is not None and packet.pts > segment.key_pts and packet.is_keyframe:
                    break  # the seek went past the keyframe
        except _av_error_types():
            pass
        # The seek did not land on the keyframe: read from the beginning instead (slow, exact).
        fresh = self._open()
        self._local.opened = fresh
        packets = itertools.islice(fresh.container.demux(fresh.stream), segment.stop)
        for _ in range(segment.start):
            next(packets)
        return fresh, packets

    def decode(
        self, segment: _Segment, selector: _TargetSelector
    ) -> tuple[list[tuple[float, np.ndarray]], int]:
        """The sampled frames of ``segment`` (time, picture) and the number of undecodable packets."""
        opened, packets = self._packets(segment)
        stream, name = opened.stream, opened.source
        context = stream.codec_context
        context.skip_frame = "DEFAULT"
        skipper = _NonReferenceSkipper(opened, opened.rate or _FALLBACK_RATE)
        out: list[tuple[float, np.ndarray]] = []
        bad = 0
        checked: tuple[int, int, float] | None = None

        def take(frames: list[Any]) -> None:
            nonlocal checked
            for frame in frames:
                if frame.pts is None:
                    continue
                ts = float(frame.pts * stream.time_base) - opened.origin
                if not (segment.low <= ts < segment.high):
                    continue  # a leading frame the previous segment owns, or the next keyframe
                size = (frame.width, frame.height, _frame_sar(frame, stream))
                if size != checked:
                    _check_picture(*size, name)
                    checked = size
                if selector.accept(ts):
                    out.append((ts, _convert_frame(frame, stream, self._resize, self._threads, name)))

        def finished() -> bool:
            target = selector.next_target
            return target is None or target - selector.slack > segment.last

        try:
            for packet in packets:
                skipper.before(packet, selector, True)
                try:
                    take(packet.decode())
                except _av_error_types():
                    bad += 1
                if finished():
                    break
            else:
                try:
                    take(context.decode(None))  # frames still delayed in the decoder
                except _av_error_types():
                    pass
        finally:
            context.flush_buffers()
        return out, bad


def _selector_after(template: _TargetSelector, before: float | None) -> _TargetSelector:
    """A fresh selector standing where ``template`` would after seeing frames up to time ``before``."""
    selector = template.restarted()
    if before is not None:
        selector.accept(before)
    return selector


def _iter_pyav_segments(
    opened: _OpenVideo,
    path: str,
    segments: list[_Segment],
    selector: _TargetSelector,
    max_frames: int | None,
    resize: _Resize | None,
    workers: int,
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode the segments that hold a sample on ``workers`` threads; yields what `_iter_pyav` would.

    Each segment starts from its keyframe with a decoder of its own and a selector standing where sequential
    decoding would be at that point, so it keeps the same frames; results come back in order, with at most
    ``workers + 1`` segments in flight (memory stays bounded).
    """
    # At least 2 threads per decoder: frame threading keeps a core decoding while the worker's Python code (demux,
    # skip decisions, conversion) holds the GIL; with 1 the workers wait on each other (measured on 2 busy cores).
    threads = max(2, _available_cores() // workers)
    decoder = _SegmentDecoder(opened, path, threads, resize)

    def needed() -> Iterator[tuple[_Segment, _TargetSelector]]:
        for segment in segments:
            start = _selector_after(selector, segment.before)
            target = start.next_target
            if target is None:
                return
            if target - start.slack <= segment.last:
                yield segment, start

    kept = bad = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llamavid-decode")
    try:
        in_flight: deque[Future[tuple[list[tuple[float, np.ndarray]], int]]] = deque()
        jobs = needed()
        exhausted = False
        while True:
            while not exhausted and len(in_flight) <= workers:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                else:
                    # In the caller's context: a pixel_limit() block holds in the decoding threads too.
                    run = functools.partial(contextvars.copy_context().run, decoder.decode, *job)
                    in_flight.append(pool.submit(run))
            if not in_flight:
                break
            frames, bad_packets = in_flight.popleft().result()
            bad += bad_packets
            for item in frames:
                yield item
                kept += 1
                if max_frames is not None and kept >= max_frames:
                    return
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        decoder.close()
        if bad:
            logger.warning("%s: skipped %d undecodable packets.", opened.source, bad)
    if kept == 0:
        raise VideoDecodeError(
            f"{opened.source}: no frame could be decoded from the video stream. The file is truncated, corrupted "
            "or uses an unsupported codec profile; re-encode it to H.264.",
            opened.source,
        )


def _load_torchcodec() -> Any:
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as error:  # ImportError, or OSError when FFmpeg/CUDA libraries are missing
        raise BackendUnavailableError(
            f"torchcodec backend requested but it cannot be imported ({type(error).__name__}: {error}). "
            "Install it with `pip install torchcodec==0.13.0` plus the system FFmpeg libraries "
            "(apt-get install ffmpeg), or drop backend='torchcodec' to use PyAV."
        ) from error
    return VideoDecoder


def _check_cuda(device: str) -> None:
    """Refuse a CUDA device this machine does not have, before anything is opened."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - torch is a core dependency
        raise BackendUnavailableError(f"device={device!r} needs PyTorch with CUDA: {error}") from error
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device={device!r} asks for GPU decoding, but PyTorch sees no CUDA device here (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Drop device= to decode on the CPU, "
            "or install a CUDA build of torch and torchcodec on a machine with an NVIDIA GPU."
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(
            f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible here."
        )


def _iter_torchcodec(
    opened: _OpenVideo,
    selector: _TargetSelector,
    max_frames: int | None,
    chunk_size: int,
    device: str = "cpu",
) -> Iterator[tuple[float, np.ndarray]]:
    """Pick frames from packet timestamps (PyAV demux, no decode), then let torchcodec decode them.

    Sharing the timestamp logic with the PyAV path is what guarantees both backends return the same frames.
    torchcodec applies the rotation itself; non-square pixels are corrected here like for PyAV. On a CUDA
    ``device`` the GPU's decoder does the work and the sampled frames are copied back to host memory.
    """
    video_decoder = _load_torchcodec()
    name, stream = opened.source, opened.stream
    packet_times: list[float] = []
    for packet in opened.container.demux(stream):
        if packet.size and packet.pts is not None and stream.time_base is not None:
            packet_times.append(float(packet.pts * stream.time_base) - opened.origin)
    packet_times.sort()
    indices = []
    for index, ts in enumerate(packet_times):
        if selector.accept(ts):
            indices.append(index)
            if (max_frames is not None and len(indices) >= max_frames) or selector.done:
                break
    if not indices:
        raise VideoDecodeError(f"{name}: no frame with a timestamp found for torchcodec to decode.", name)
    sar = _frame_sar(None, stream)
    try:
        # 0: FFmpeg picks the thread count from the cores (torchcodec's default of 1 leaves the others idle).
        decoder = video_decoder(
            name,
            stream_index=stream.index,
            dimension_order="NHWC",
            seek_mode="exact",
            num_ffmpeg_threads=0,
            device=device,
        )
        for start in range(0, len(indices), chunk_size):
            batch = decoder.get_frames_at(indices[start : start + chunk_size])
            pixels = batch.data.cpu().numpy()
            for i, ts in enumerate(batch.pts_seconds.tolist()):
                yield ts - opened.origin, _apply_geometry(pixels[i], 0, sar)
    except MediaError:
        raise
    except Exception as error:
        raise VideoDecodeError(
            f"{name}: torchcodec failed to decode ({type(error).__name__}: {error}). Use backend='pyav' "
            "(the default), which reads more files.",
            name,
        ) from error


def _resolve_backend(backend: str | None, source: MediaSource, device: str | None = None) -> Backend:
    if device is not None and not isinstance(device, str):
        raise InvalidInputError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}.")
    on_gpu = device is not None and device != "cpu"
    if on_gpu and not (device == "cuda" or re.fullmatch(r"cuda:\d+", device or "")):
        raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if on_gpu and backend is None:
        backend = "torchcodec"  # only torchcodec decodes on the GPU
    if backend is None or backend == "pyav":
        if on_gpu:
            raise InvalidInputError(
                f"device={device!r} needs backend='torchcodec' (PyAV decodes on the CPU only)."
            )
        return "pyav"
    if backend == "torchcodec":
        if not isinstance(source, (str, os.PathLike)):
            raise InvalidInputError(
                "backend='torchcodec' needs a file path; file objects are decoded with PyAV."
            )
        return "torchcodec"
    raise InvalidInputError(f"backend must be 'pyav', 'torchcodec' or None, got {backend!r}.")


# ---------------------------------------------------------------------------------------------------------
# Public decoding API.


def iter_video_frames(
    path: MediaSource,
    *,
    fps: float | None = 1.0,
    num_frames: int | None = None,
    max_frames: int | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
    size: int | None = None,
    crop_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
) -> Iterator[Frames]:
    """Stream sampled frames in chunks, so memory stays flat however long the video is.

    Args:
        path: Video file path, or a binary file object (decoded with PyAV; non-seekable objects such as
            pipes are read strictly sequentially).
        fps: Sampling rate in frames per second; 1 matches LLaMA-VID's training data, and changing it
            shifts which subtitles land on which frame. Ignored when ``num_frames`` is given.
        num_frames: Sample this many frames uniformly instead (targets ``i · duration / num_frames``).
        max_frames: Upper bound on the number of frames. With fps sampling, a video that would exceed it is
            sampled uniformly with ``max_frames`` frames instead, so the end of the video is never cut off.
        backend: ``"pyav"`` (default, also used for ``None``) or ``"torchcodec"``.
        chunk_size: Frames per yielded chunk (default 64).
        size: Opt-in fast resize (PyAV backend): return frames whose shortest side FFmpeg's scaler resized to
            ``size`` (bicubic, in the same pass as the RGB conversion) and then centre-cropped to
            ``crop_size`` × ``crop_size``, the geometry of the image processor's resize + crop. Much cheaper
            than full-resolution RGB + PIL, but not bit-identical to the processor's PIL bicubic resize
            (docs/benchmarks.md gives the measured difference). ``None`` (default): full-resolution frames.
        crop_size: Side of the centre crop with ``size`` (default: ``size``, as the released processors).
        workers: Decoders working at once on keyframe-aligned segments of a seekable video file (PyAV
            backend); each starts at a keyframe, so the frames are identical to one decoder's. ``None``
            (default): one per available core, at most 8; ``1``: a single sequential decoder (use it when
            many videos are decoded at once, e.g. one per Ray task). File objects, and files whose timestamps
            do not allow an exact cut, are decoded by one decoder whatever this says.
        device: ``"cuda"`` / ``"cuda:N"`` decodes on the GPU with torchcodec (implies
            ``backend="torchcodec"``; frames are copied back to host memory, and GPU colour conversion is not
            bit-identical to FFmpeg's on the CPU). ``None`` or ``"cpu"``: decode on the CPU.

    Yields:
        :class:`Frames` chunks in time order; concatenated they equal :func:`decode_video`'s result.

    Raises:
        MediaError: See :func:`inspect_video`; ``BackendUnavailableError`` if torchcodec is asked for but missing.
        ValueError: Invalid sampling arguments.
        BackendUnavailableError: ``device="cuda"`` on a machine without CUDA.
    """
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    yield from _iter_chunks(
        path,
        fps=fps,
        num_frames=num_frames,
        max_frames=max_frames,
        backend=backend,
        chunk_size=chunk_size,
        decode_batch=chunk_size,
        size=size,
        crop_size=crop_size,
        workers=workers,
        device=device,
    )


def _iter_chunks(
    path: MediaSource,
    *,
    fps: float | None,
    num_frames: int | None,
    max_frames: int | None,
    backend: str | None,
    chunk_size: int,
    decode_batch: int,
    size: int | None = None,
    crop_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    whole: bool = False,
) -> Iterator[Frames]:
    """`iter_video_frames` with the torchcodec batch (`decode_batch`) apart from the chunk size.

    ``whole``: one :class:`Frames` for the whole video (``chunk_size`` is ignored), each frame copied into
    it as soon as it is decoded, so the decoder's buffer is reused for the next frame.
    """
    _validate_sampling(fps, num_frames, max_frames)
    resize = _validate_resize(size, crop_size)
    worker_count = _resolve_workers(workers)
    chosen = _resolve_backend(backend, path, device)
    if chosen == "torchcodec":
        _load_torchcodec()  # fail before opening anything
        if device is not None and device != "cpu":
            _check_cuda(device)
        if resize is not None:
            raise InvalidInputError(
                "size= resizes inside PyAV's scaler; with backend='torchcodec' decode at full size and let the "
                "image processor resize."
            )
    opened = _open_video(path)
    try:
        duration = opened.duration
        needs_duration = num_frames is not None or max_frames is not None
        if duration is None and needs_duration:
            duration = _scan_duration(opened)
        if duration is None and num_frames is not None:
            raise VideoDecodeError(
                f"{opened.source}: the video declares no duration and cannot be scanned (not seekable), so "
                "uniform sampling is impossible. Use fps sampling or save the stream to a file first.",
                opened.source,
            )
        slack = min(float(opened.stream.time_base or 0.0), _MAX_TIMESTAMP_SLACK_S)
        slack = max(slack, 1e-6)
        selector, sampling_fps = _make_selector(
            fps=fps,
            num_frames=num_frames,
            max_frames=max_frames,
            duration=duration,
            slack=slack,
            source=opened.source,
        )
        frames_iter: Iterator[tuple[float, np.ndarray]] | None = None
        if chosen == "torchcodec":
            frames_iter = _iter_torchcodec(opened, selector, max_frames, decode_batch, device or "cpu")
        elif worker_count > 1 and isinstance(path, (str, os.PathLike)) and opened.seekable:
            segments = _plan_segments(opened, os.fspath(path))
            if segments is not None and len(segments) > 1:
                frames_iter = _iter_pyav_segments(
                    opened, os.fspath(path), segments, selector, max_frames, resize, worker_count
                )
        if frames_iter is None:
            frames_iter = _iter_pyav(opened, selector, max_frames, resize)
        known_duration = duration
        if whole:
            try:
                yield _collect(
                    frames_iter, selector.expected_count(duration), sampling_fps, duration, opened.source
                )
            finally:
                getattr(frames_iter, "close", lambda: None)()  # stops decoding threads before the file closes
            return
        batch: list[np.ndarray] = []
        times: list[float] = []
        for ts, rgb in frames_iter:
            if batch and rgb.shape != batch[0].shape:
                # Resolution changed mid-stream (e.g. adaptive streaming): a chunk must be one array.
                yield _chunk(batch, times, sampling_fps, known_duration, opened.source)
                batch, times = [], []
            batch.append(rgb)
            times.append(ts)
            if len(batch) >= chunk_size:
                yield _chunk(batch, times, sampling_fps, known_duration, opened.source)
                batch, times = [], []
        if batch:
            yield _chunk(batch, times, sampling_fps, known_duration, opened.source)
    finally:
        opened.container.close()


# The first allocation for a whole video holds at most this many bytes; a longer one grows as frames come.
_MAX_PREALLOCATED_BYTES = 1 << 31


def _collect(
    frames: Iterator[tuple[float, np.ndarray]],
    expected: int | None,
    fps: float | None,
    duration: float | None,
    source: str,
) -> Frames:
    """Copy every frame once, straight into one array sized from the expected count (grown if exceeded)."""
    out: np.ndarray | None = None
    times: list[float] = []
    for ts, rgb in frames:
        count = len(times)
        if out is None:
            capacity = max(1, min(expected or 64, _MAX_PREALLOCATED_BYTES // max(rgb.nbytes, 1)))
            out = np.empty((capacity, *rgb.shape), dtype=np.uint8)  # pages are mapped when first written
        elif rgb.shape != out.shape[1:]:
            raise VideoDecodeError(
                f"{source}: the picture size changes inside the video (from {out.shape[1:]} to {rgb.shape} at "
                f"{ts:.3f} s); frames cannot be stacked. Re-encode to one size, or use iter_video_frames() which "
                "yields one chunk per size.",
                source,
            )
        if count == len(out):
            grown = np.empty((2 * count, *rgb.shape), dtype=np.uint8)
            grown[:count] = out
            out = grown
        out[count] = rgb
        times.append(ts)
    if out is None:
        raise VideoDecodeError(f"{source}: no frame could be decoded from the video stream.", source)
    timestamps = np.asarray(times, dtype=np.float64)
    return Frames(
        frames=out[: len(times)],
        timestamps=timestamps,
        fps=fps,
        duration=float(duration) if duration is not None else float(timestamps[-1]),
        source=source,
    )


def _chunk(
    batch: list[np.ndarray], times: list[float], fps: float | None, duration: float | None, source: str
) -> Frames:
    timestamps = np.asarray(times, dtype=np.float64)
    return Frames(
        frames=np.stack(batch),
        timestamps=timestamps,
        fps=fps,
        duration=float(duration) if duration is not None else float(timestamps[-1]),
        source=source,
    )


def decode_video(
    path: MediaSource,
    *,
    fps: float | None = 1.0,
    num_frames: int | None = None,
    max_frames: int | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
    size: int | None = None,
    crop_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
) -> Frames:
    """Decode and sample a video into one :class:`Frames` (all sampled frames in memory).

    The single decode entry point of the package; for long videos prefer :func:`iter_video_frames` (same
    arguments), which keeps memory flat. See it for the arguments (``size`` / ``crop_size`` for the opt-in fast
    resize, ``workers`` for segment-parallel decoding, ``device`` for GPU decoding); here ``chunk_size`` only
    sets how many frames the torchcodec backend decodes per call, the result being one array either way.

    Raises:
        MediaError: The file is missing, empty, a directory, corrupted, audio-only or has an unsupported codec.
        ValueError: Invalid sampling arguments.
    """
    decode_batch = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if decode_batch < 1:
        raise InvalidInputError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    # One array for the whole video, each frame copied into it once as it is decoded (stacking a list of frames
    # would be a second copy of every full-resolution frame, as slow as the decoding before it).
    (frames,) = _iter_chunks(
        path,
        fps=fps,
        num_frames=num_frames,
        max_frames=max_frames,
        backend=backend,
        chunk_size=sys.maxsize,
        decode_batch=decode_batch,
        size=size,
        crop_size=crop_size,
        workers=workers,
        device=device,
        whole=True,
    )
    return frames


# ---------------------------------------------------------------------------------------------------------
# Images and folders of frames.


def load_image(path: str | os.PathLike[str]) -> Frames:
    """Load one image as a single-frame :class:`Frames` at t=0.

    Grayscale, palette and alpha images become RGB; EXIF orientation is applied (phone photos); an animated
    GIF or WebP contributes its first frame, as an image model expects one picture.

    The size is read from the header and checked against :func:`current_max_pixels` before decoding, so a
    small file declaring a huge picture (a decompression bomb) costs nothing. Pillow's own guard also applies:
    it refuses more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 megapixels) whatever the limit here.

    Raises:
        MediaError: Missing, empty or unreadable file, or a picture over the pixel limit.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = _check_path(path)
    try:
        with Image.open(p) as image:  # reads the header only
            _check_dimensions(image.width, image.height, str(p), error=MediaError)
            image.seek(0)
            rgb = ImageOps.exif_transpose(image).convert("RGB")
            array = np.asarray(rgb, dtype=np.uint8)
    except MediaError:
        raise
    except Image.DecompressionBombError as error:
        limit = current_max_pixels()
        raise MediaError(
            f"{p}: the picture is too large to decode safely ({error}); at most {limit:,} pixels "
            f"({limit / 1e6:g} megapixels) are accepted per image. Downscale it.",
            p,
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise MediaError(
            f"{p}: cannot read as an image ({type(error).__name__}: {error}). Expected JPEG, PNG, WebP, BMP, "
            "GIF or TIFF; the file may be truncated.",
            p,
        ) from error
    return Frames(frames=array[None], timestamps=np.zeros(1), fps=None, duration=0.0, source=str(p))


def _natural_key(name: str) -> list[int | str]:
    # frame_2.png before frame_10.png, as a person numbering files expects.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    fps: float | None = 1.0,
    num_frames: int | None = None,
    max_frames: int | None = None,
    frame_rate: float = 1.0,
) -> Frames:
    """Load a folder of extracted frames as a video.

    Files are ordered naturally (``2.jpg`` before ``10.jpg``) and frame ``i`` is given the timestamp
    ``i / frame_rate``: frame dumps rarely record their times, and 1 fps is how LLaMA-VID's data was
    extracted. Sampling then works exactly as for a video, and only the kept files are read.

    Args:
        path: Directory holding image files (other files are ignored).
        fps: Sampling rate, as in :func:`decode_video`.
        num_frames: Uniform sampling, as in :func:`decode_video`.
        max_frames: Frame cap, as in :func:`decode_video`.
        frame_rate: Rate at which the frames were extracted.

    Raises:
        MediaError: Missing folder, no image in it, unreadable image, or images of different sizes.
    """
    _validate_sampling(fps, num_frames, max_frames)
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        raise InvalidInputError(f"frame_rate must be a positive number, got {frame_rate!r}.")
    folder = _check_path(path, allow_dir=True)
    if not folder.is_dir():
        raise MediaError(
            f"{folder}: expected a folder of frames, got a file. Use load_media() for files.", folder
        )
    files = sorted(
        (f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda f: _natural_key(f.name),
    )
    if not files:
        raise MediaError(
            f"{folder}: no image files found; expected frames named like 0001.jpg "
            f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}).",
            folder,
        )
    duration = len(files) / frame_rate
    selector, sampling_fps = _make_selector(
        fps=fps,
        num_frames=num_frames,
        max_frames=max_frames,
        duration=duration,
        slack=1e-9,
        source=str(folder),
    )
    chosen = [i for i in range(len(files)) if selector.accept(i / frame_rate)]
    if max_frames is not None:
        chosen = chosen[:max_frames]
    images = [load_image(files[i]).frames[0] for i in chosen]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise MediaError(
            f"{folder}: frames have different sizes {sorted(shapes)}; expected one size for a video. "
            "Resize them to one size first.",
            folder,
        )
    return Frames(
        frames=np.stack(images),
        timestamps=np.asarray([i / frame_rate for i in chosen], dtype=np.float64),
        fps=sampling_fps,
        duration=duration,
        source=str(folder),
    )


def load_media(
    path: str | os.PathLike[str],
    *,
    fps: float | None = 1.0,
    num_frames: int | None = None,
    max_frames: int | None = None,
    backend: str | None = None,
    frame_rate: float = 1.0,
) -> Frames:
    """Load a video, an image or a folder of frames through one call.

    Dispatches on what ``path`` is: a directory is a frame folder, a file with an image extension is one
    image (GIFs included: first frame), anything else is decoded as video.

    Args:
        path: Video file, image file or folder of frames.
        fps: Sampling rate for videos and folders.
        num_frames: Uniform sampling for videos and folders.
        max_frames: Frame cap for videos and folders.
        backend: Video backend, see :func:`decode_video`.
        frame_rate: Extraction rate of a frame folder, see :func:`load_image_folder`.
    """
    p = Path(path)
    if p.is_dir():
        return load_image_folder(
            p, fps=fps, num_frames=num_frames, max_frames=max_frames, frame_rate=frame_rate
        )
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return load_image(p)
    return decode_video(p, fps=fps, num_frames=num_frames, max_frames=max_frames, backend=backend)
