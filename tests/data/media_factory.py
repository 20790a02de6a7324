"""Media generated on the fly with PyAV (helpers shared by the tests/data modules): tiny, deterministic, and checkable frame by frame.

Every video frame is one flat colour that encodes its index (see :func:`index_colour`), so a test can read
back which source frame a decoder returned, whatever the codec, rate or container.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

LEVELS = 16  # per channel; 16**3 = 4096 distinct frame indices
STEP = 256 // LEVELS


def index_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of frame ``index``; levels 16 apart so lossy codecs cannot blur one into the next."""
    digits = (index % LEVELS, (index // LEVELS) % LEVELS, (index // LEVELS**2) % LEVELS)
    return tuple(d * STEP + STEP // 2 for d in digits)  # type: ignore[return-value]


def frame_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_colour` on a decoded ``(H, W, 3)`` frame (centre pixels, robust to edges)."""
    h, w = frame.shape[:2]
    centre = frame[h // 4 : h - h // 4 or None, w // 4 : w - w // 4 or None].reshape(-1, 3).mean(axis=0)
    digits = np.clip(np.round((centre - STEP // 2) / STEP), 0, LEVELS - 1).astype(int)
    return int(digits[0] + digits[1] * LEVELS + digits[2] * LEVELS**2)


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    rate: Fraction | int = 2,
    num_frames: int = 10,
    size: tuple[int, int] = (32, 32),
    pix_fmt: str = "yuv420p",
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
    sample_aspect_ratio: Fraction | None = None,
    options: dict[str, str] | None = None,
    picture: Callable[[int, int, int], np.ndarray] | None = None,
    audio: bool = False,
) -> Path:
    """Encode ``num_frames`` index-coloured frames of ``size`` = (width, height) into ``path``."""
    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec in ("libx264", "libx265"):
            stream.options = {"preset": "ultrafast", "tune": "zerolatency", **(options or {})}
        elif options:
            stream.options = options
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        if sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = container.add_stream("aac", rate=8000) if audio else None
        for i in range(num_frames):
            array = (
                picture(i, width, height)
                if picture is not None
                else np.broadcast_to(np.array(index_colour(i), np.uint8), (height, width, 3)).copy()
            )
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            _write_tone(container, audio_stream, seconds=1.0)
    return path


def _write_tone(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    samples = (0.1 * np.sin(np.arange(int(rate * seconds)) * 0.05)).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: Path) -> Path:
    """A WAV file: a container with sound and no picture."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        _write_tone_pcm(container, stream)
    return path


def _write_tone_pcm(container: av.container.OutputContainer, stream: av.AudioStream) -> None:
    samples = (3000 * np.sin(np.arange(8000) * 0.05)).astype(np.int16)[None]
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def require_module(name: str) -> None:
    """Skip when an optional backend is missing locally, but fail under CI, where it must be installed."""
    import importlib
    import os

    try:
        importlib.import_module(name)
    except Exception as error:  # ImportError, or OSError from a missing shared library
        message = f"optional backend {name!r} unavailable: {type(error).__name__}: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: optional backends must be installed)")
        pytest.skip(message)


def require_encoder(name: str) -> None:
    """Skip when the bundled FFmpeg of PyAV lacks an encoder (HEVC, AV1); fail under CI, where wheels have them."""
    import os

    if name not in av.codecs_available:
        message = f"encoder {name!r} is not in this PyAV build"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: PyAV wheels bundle it)")
        pytest.skip(message)
