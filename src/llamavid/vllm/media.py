"""Media as vLLM hands it to the plugin, turned into what llamavid decodes.

vLLM fetches ``image_url`` / ``video_url`` / ``data:`` media itself and wraps videos in ``MediaWithBytes``, which
keeps the encoded file next to whatever its video loader decoded. LLaMA-VID samples at 1 fps with its own
decoder (vLLM's loaders sample a fixed number of frames), so the processor reads the original bytes and decodes
them with `llamavid.data.decode_video`; the ``llamavid`` loader registered here skips vLLM's decoding entirely.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from llamavid.errors import InvalidInputError

__all__ = ["MediaItem", "media_item", "read_subtitle_track", "register_video_loader", "video_input"]


@dataclass
class MediaItem:
    """One image or video of a request, before sampling.

    Attributes:
        is_image: a still picture (image layout) rather than a clip.
        data: the encoded video file (``bytes``), or decoded frames ``(T, H, W, 3)`` uint8 (images: T = 1).
        sha256: content hash of `data`: the feature-cache key of an encoded file is the hash of its bytes, the
            same that `llamavid ask` computes for the file on disk, so both share cache entries.
    """

    is_image: bool
    data: bytes | np.ndarray
    sha256: str


def _frames_array(value: Any) -> np.ndarray:
    """PIL image(s) or arrays as ``(T, H, W, 3)`` uint8 RGB."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return np.asarray(value.convert("RGB"), dtype=np.uint8)[None]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Image.Image):
        return np.stack([np.asarray(frame.convert("RGB"), dtype=np.uint8) for frame in value])
    array = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InvalidInputError(
            f"media frames must be uint8 RGB (H, W, 3) or (T, H, W, 3), got {array.dtype} {array.shape}; send "
            "the image or video file instead."
        )
    return np.ascontiguousarray(array)


def media_item(value: Any, modality: str) -> MediaItem:
    """Normalise one vLLM multimodal item (``MediaWithBytes``, ``(frames, metadata)``, PIL, array)."""
    from vllm.multimodal.media import MediaWithBytes

    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict | type(None)):
        value = value[0]  # (frames, metadata): llamavid keeps its own timestamps
    if modality == "video" and isinstance(value, MediaWithBytes):
        data = bytes(value.original_bytes)
        return MediaItem(False, data, hashlib.sha256(data).hexdigest())
    if isinstance(value, MediaWithBytes):
        value = value.media
    frames = _frames_array(value)
    is_image = modality == "image"
    if is_image and len(frames) != 1:
        raise InvalidInputError(f"an image item holds {len(frames)} frames; send it as a video.")
    return MediaItem(is_image, frames, hashlib.sha256(frames.tobytes()).hexdigest())


def decode_bytes(data: bytes, *, fps: float | None, max_frames: int | None) -> Any:
    """Decode an encoded video with llamavid's decoder (`llamavid.data.decode_video`), as `llamavid ask` does."""
    from llamavid.data import decode_video

    return decode_video(io.BytesIO(data), fps=fps, max_frames=max_frames)


def video_input(path: str | os.PathLike[str]) -> Any:
    """A video file as `vllm.LLM` takes it in ``multi_modal_data={"video": ...}`` (offline use).

    The file's bytes travel undecoded, so frames are sampled by llamavid (1 fps by default, or the request's
    ``mm_processor_kwargs``) and the features are shared with `llamavid ask` through the feature cache.
    """
    from vllm.multimodal.media import MediaWithBytes

    with open(path, "rb") as handle:
        data = handle.read()
    return MediaWithBytes((_placeholder_frames(data), {"video_backend": "llamavid"}), data)


def _placeholder_frames(data: bytes) -> np.ndarray:
    # vLLM hashes a video by its frames when they are smaller than the file: give it the file's bytes as the
    # "frames", so the hash always covers the whole content.
    return np.frombuffer(data, dtype=np.uint8).reshape(1, 1, -1, 1)


def read_subtitle_track(value: str, allowed_local_media_path: str = "") -> Any:
    """A request's ``mm_processor_kwargs.subtitles`` as a `SubtitleTrack`, accepted as `llamavid serve` accepts it.

    The same forms, limits and refusals, checked by `llamavid serve`'s own resolver: SRT/WebVTT text, a ``data:``
    URL of a subtitle MIME type (at most the server's default upload limit, 64 MiB), or a ``file://`` URL of an
    ``.srt``/``.vtt`` under vLLM's ``--allowed-local-media-path`` (symlinks resolved; without that flag
    ``file://`` is refused); remote URLs are never fetched. Every refusal is an `InvalidInputError` (a 400).
    """
    from llamavid.data.subtitles import SubtitleTrack
    from llamavid.serve.app import APIError, MediaOptions, MediaResolver, ServerConfig

    roots = (Path(allowed_local_media_path),) if allowed_local_media_path else ()
    resolver = MediaResolver(cast(Any, None), ServerConfig(allowed_roots=roots))  # no engine: resolving only
    try:
        subtitles = resolver.sampling(MediaOptions(subtitles=value)).subtitles
    except APIError as error:
        raise InvalidInputError(
            error.message.replace("--allowed-root", "--allowed-local-media-path")
        ) from None
    assert subtitles is not None
    try:
        if subtitles.path is not None:
            track = SubtitleTrack.read(subtitles.path)
            return SubtitleTrack(subtitles.shown_as, track.cues, track.encoding)
        assert subtitles.data is not None
        with tempfile.TemporaryDirectory(prefix="llamavid-subtitles-") as folder:
            path = Path(folder) / f"subtitles{subtitles.suffix}"
            path.write_bytes(subtitles.data)
            try:
                track = SubtitleTrack.read(path)
            except ValueError as error:
                message = str(error).replace(str(path), subtitles.shown_as)
                raise InvalidInputError(f"mm_processor_kwargs.subtitles: {message}") from None
        return SubtitleTrack(subtitles.shown_as, track.cues, track.encoding)
    except InvalidInputError:
        raise
    except ValueError as error:  # SubtitleError / MediaError: the subtitles are the client's problem
        raise InvalidInputError(f"mm_processor_kwargs.subtitles: {error}") from None


def register_video_loader() -> None:
    """Register the ``llamavid`` vLLM video loader: no decoding in vLLM, the bytes go to the processor."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

    from llamavid.vllm import VIDEO_LOADER_BACKEND

    if VIDEO_LOADER_BACKEND in VIDEO_LOADER_REGISTRY.name2class:
        return

    @VIDEO_LOADER_REGISTRY.register(VIDEO_LOADER_BACKEND)
    class LlamaVidVideoLoader(VideoLoader):
        @classmethod
        def load_bytes(cls, data: bytes, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
            if not data:
                raise InvalidInputError("the video is empty (0 bytes).")
            return _placeholder_frames(data), {"video_backend": VIDEO_LOADER_BACKEND}
