"""Errors raised by media ingestion.

Every error derives from :class:`MediaError`, itself a ``ValueError``, so callers that only care about "the
input was bad" catch one type, while the serving layer can map subclasses to precise HTTP/CLI messages.
Messages follow the house rule: what was received, what was expected, what to do.
"""

from __future__ import annotations

import os

from llamavid.errors import LlamaVidError

__all__ = [
    "BackendUnavailableError",
    "MediaError",
    "NoVideoStreamError",
    "SubtitleError",
    "VideoDecodeError",
]


class MediaError(LlamaVidError, ValueError):
    """A media file (video, image, frame folder or subtitles) could not be used.

    Attributes:
        path: The offending file as given by the caller (``None`` for in-memory data).
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class VideoDecodeError(MediaError):
    """A container or stream could not be opened, probed or decoded."""


class NoVideoStreamError(VideoDecodeError):
    """The container opened fine but holds no decodable video stream (for example an audio-only file)."""


class BackendUnavailableError(MediaError, ImportError):
    """A decoding backend (or speech-to-text engine) was requested but is not installed or cannot load."""


class SubtitleError(MediaError):
    """A subtitle file or stream is malformed, undecodable, or does not overlap the video."""
