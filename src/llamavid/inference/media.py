"""Media as the inference core holds it: decoded, sampled, encoded once, reusable across questions.

A video file goes through the feature cache (`llamavid.data.FeatureCache`) by default: the first command that
sees it encodes its frames and stores fp16 features, every later command (``ingest``, ``ask``, ``chat``,
``serve``, the web UI) reads them back. Features held in memory (arrays, images, frame folders) are rounded to
the same fp16 on the way in, so a video answers the same whether it came from the cache, from a cold run that
just filled it, or from decoded frames handed over as an array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamavid.data.feature_cache import CacheEntry, module_sha256, preprocessing_id
from llamavid.data.subtitles import SubtitleTrack
from llamavid.errors import InvalidInputError
from llamavid.inference.results import THUMBNAIL_SIDE

__all__ = [
    "CACHE_DTYPE",
    "FrameEncoder",
    "PreparedMedia",
    "autocast_dtype",
    "canonical_features",
    "encode_pixels",
    "subtitles_for_frames",
    "thumbnails",
]

# The one dtype features are stored in (cache chunks) and rounded to (in memory).
CACHE_DTYPE = torch.float16
# Cached videos up to this many feature bytes are read into memory once; longer ones stream chunk by chunk for
# every question, so memory follows the visual *tokens* (what the LLM needs anyway), not the features.
IN_MEMORY_FEATURE_BYTES = 256 * 2**20


def canonical_features(features: Tensor) -> Tensor:
    """Round features to the cache's fp16 and back to their dtype (see the module docstring for why)."""
    return features.to(CACHE_DTYPE).to(features.dtype)


def autocast_dtype(core: Any) -> torch.dtype | None:
    """The reduced precision a vision tower runs in: bfloat16 (float16 without bf16 support) for a float32
    tower on CUDA, else None (its own dtype). Features are stored in float16 either way."""
    weight = next(core.vision_tower.parameters())
    if weight.device.type == "cuda" and weight.dtype == torch.float32:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@torch.no_grad()
def encode_pixels(core: Any, pixels: Tensor) -> Tensor:
    """Pixels ``(T, 3, S, S)`` -> features ``(T, 1+N, C)`` in the cache's float16, on the tower's device.

    The one place frames meet the vision tower for inference, so features from the cache and features of an
    array agree: the same precision (`autocast_dtype`), the same float16 rounding. Pixels in pinned memory are
    copied asynchronously.
    """
    weight = next(core.vision_tower.parameters())
    pixels = pixels.to(weight.device, non_blocking=True)
    reduced = autocast_dtype(core)
    if reduced is not None:
        with torch.autocast(weight.device.type, dtype=reduced):
            return core.get_vision_features(pixels).to(CACHE_DTYPE)
    return core.get_vision_features(pixels).to(CACHE_DTYPE)


class FrameEncoder:
    """The cache's encoder for a model + processor: uint8 frames -> EVA features ``(T, 1+N, C)`` (CLS kept).

    The encoder id identifies the vision tower's weights: a fine-tuned tower with the same checkpoint name gets
    other features, so it must get another cache key. A model loaded from a folder passes the id of the saved
    weights (`llamavid.data.feature_cache.checkpoint_sha256`, the same in every dtype); otherwise the weights in
    memory are hashed here, once.

    Two steps, which the feature cache runs as separate pipeline stages (`llamavid.data.pipeline`):
    :meth:`preprocess` (resize, crop, normalise on the CPU) and :meth:`encode` (the vision tower, where the
    model is). On CUDA the pixels are put in pinned memory so the copy to the GPU is asynchronous, and a tower
    held in float32 runs under bfloat16 autocast (float16 where the GPU has no bfloat16): the features are
    stored in float16 anyway, and the cache key does not depend on the compute dtype.

    Args:
        model: a ``LlamaVidForConditionalGeneration`` (or its ``.model``).
        processor: the matching ``LlamaVidProcessor``.
        encoder_id: the id of the tower's weights, when the caller knows it.
        fast_resize: opt-in: the decoder's scaler (FFmpeg, bicubic) resizes and centre-crops each frame to the
            processor's size while converting it to RGB, and :meth:`preprocess` only normalises. Faster, not
            bit-identical to the processor's PIL resize (docs/benchmarks.md: mean |Δpixel_values| ≈ 0.018), so
            the preprocessing id (and the cache key) differs from the faithful path's.

    Attributes:
        on_frames: called with every batch of frames before encoding (thumbnails for relevance strips).
        device: where the tower's weights are (the pixels go there).
        autocast_dtype: the reduced precision the tower runs in through autocast, or None (its own dtype).
        decode_resize: ``(size, crop_size)`` the feature cache asks the decoder for with ``fast_resize``, else
            None (full-size frames).
    """

    def __init__(
        self, model: Any, processor: Any, encoder_id: str | None = None, *, fast_resize: bool = False
    ) -> None:
        self.core = getattr(model, "model", model)
        self.image_processor = processor.image_processor
        self.encoder_id = encoder_id or module_sha256(self.core.vision_tower)
        self.fast_resize = bool(fast_resize)
        self.preprocessing_id = preprocessing_id(self.image_processor, fast_resize=self.fast_resize)
        self.decode_resize: tuple[int, int] | None = (
            (int(self.image_processor.size), int(self.image_processor.crop_size))
            if self.fast_resize
            else None
        )
        self.on_frames: Any = None
        self.calls = 0
        self.device = next(self.core.vision_tower.parameters()).device
        self.autocast_dtype = autocast_dtype(self.core)

    def preprocess(self, frames: np.ndarray) -> Tensor:
        """``(T, H, W, 3)`` uint8 -> ``(T, 3, S, S)`` normalised pixels on the CPU (pinned when encoding on CUDA)."""
        if self.on_frames is not None:
            self.on_frames(frames)
        if self.fast_resize:  # the decoder resized and cropped already
            pixels = self.image_processor.normalize(frames)
        else:
            pixels = self.image_processor(frames, is_video=True)
        return pixels.pin_memory() if self.device.type == "cuda" else pixels

    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels from :meth:`preprocess` -> ``(T, 1+N, C)`` float16 features on the CPU (`encode_pixels`)."""
        self.calls += 1
        return encode_pixels(self.core, pixels).to("cpu")

    def __call__(self, frames: np.ndarray) -> Tensor:
        return self.encode(self.preprocess(frames))


@dataclass
class PreparedMedia:
    """A decoded media item with its frame features computed once, reusable across questions.

    Attributes:
        source: path or description, for messages and JSON output.
        is_image: still images use the image token layout (`image_compress_type`), videos the video one.
        timestamps: ``(T,)`` seconds of each sampled frame.
        duration: length of the source in seconds (0 for images).
        features: ``(T, 1+N, C)`` EVA features on the engine's device, in the model dtype (rounded through fp16);
            ``None`` for a long cached video, whose chunks stream for every question instead.
        thumbnails: ``(T, h, w, 3)`` uint8 small copies of the frames for relevance strips (grey tiles when
            the frames were never decoded in this process).
        subtitles: one text per frame (``""`` for none) when subtitles were given: the prompt then interleaves
            them with the frames in the long-video layout (one ``<image>`` per frame).
        cache_entry: the feature-cache entry the features came from, if any.
        frames_capped: sampling was cut short by ``max_frames``.
    """

    source: str
    is_image: bool
    timestamps: np.ndarray
    duration: float
    features: Tensor | None
    thumbnails: np.ndarray
    subtitles: list[str] | None = None
    cache_entry: CacheEntry | None = None
    frames_capped: bool = False

    @property
    def num_frames(self) -> int:
        if self.features is None:
            assert self.cache_entry is not None
            return int(self.cache_entry.num_frames)
        return int(self.features.shape[0])

    @property
    def sampled_fps(self) -> float | None:
        """Frames per second actually sampled (``None`` for images and single frames)."""
        if self.is_image or len(self.timestamps) < 2:
            return None
        span = float(self.timestamps[-1] - self.timestamps[0])
        return (len(self.timestamps) - 1) / span if span > 0 else None


def thumbnails(frames: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 -> ``(T, side, side, 3)`` small copies for relevance strips."""
    from PIL import Image

    small = [
        np.asarray(Image.fromarray(frame).resize((side, side), Image.Resampling.BILINEAR)) for frame in frames
    ]
    return np.stack(small) if small else np.zeros((0, side, side, 3), dtype=np.uint8)


def subtitles_for_frames(
    timestamps: np.ndarray,
    duration: float | None,
    subtitles: str | os.PathLike[str] | SubtitleTrack | Sequence[str] | None,
    is_image: bool,
) -> list[str] | None:
    """One subtitle text per sampled frame, from an .srt/.vtt path, a `SubtitleTrack` (a file the CLI already
    read, with the encoding it was given) or a list with one text per frame.

    A subtitle file none of whose cues falls inside the video (a trimmed clip) gives ``None``: the media is then
    used as without subtitles, as an entry ingested with those subtitles is (`Engine.media_from_entry`), so both
    paths give the same prompt. `align_subtitles` logs what was dropped.
    """
    if subtitles is None:
        return None
    if is_image:
        raise InvalidInputError("subtitles were given for a still image; they only apply to videos.")
    if isinstance(subtitles, (str, os.PathLike, SubtitleTrack)):
        from llamavid.data import align_subtitles, read_subtitles

        if isinstance(subtitles, SubtitleTrack):
            cues, source = list(subtitles.cues), subtitles.path
        else:
            cues, source = read_subtitles(subtitles), str(subtitles)
        texts = align_subtitles(cues, timestamps, duration=duration or None, source=source)
        return texts if any(text.strip() for text in texts) else None
    texts = [str(text) for text in subtitles]
    if len(texts) != len(timestamps):
        raise InvalidInputError(
            f"{len(texts)} subtitle texts for {len(timestamps)} frames; give one per sampled frame."
        )
    return texts
