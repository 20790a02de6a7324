"""The serving engine: load a model once, turn media + questions into answers, stream them, batch them.

Every front-end (``llamavid ask|chat|attention``, `llamavid.load`, the OpenAI-compatible server, the web UI)
is a thin adapter over `Engine`, so prompt building, sampling defaults and error messages live here only.

Frame features are computed once per media item (`Engine.load_media`) and kept on the `PreparedMedia`; every
question then only runs the Q-Former (context token, which depends on the question) and the LLM. That is what
makes multi-turn chat cheap and what the official ``cli.py`` behaviour needs (spec §5.5): each turn re-inserts
the visual tokens in front of the *latest* user message only, with context tokens computed from that message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamavid.serve.defaults import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    EMBEDDED_MODEL_DIR,
    RANDOM_MODEL_NAME,
)

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 96

DeltaCallback = Callable[[int, str], None]


# Settings and results ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingSettings:
    """How to sample an answer. ``temperature == 0`` means greedy decoding (deterministic).

    Defaults are the official ``cli.py`` ones (spec §6), so answers match what users of the original demo saw.

    Attributes:
        temperature: softmax temperature; 0 selects greedy search.
        top_p: nucleus sampling mass (ignored when greedy).
        max_new_tokens: answer length limit in tokens.
        seed: seeds torch's generator before sampling; only reproducible for batches of one.
    """

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 5):
            raise ValueError(f"temperature must be between 0 and 5 (0 = greedy), got {self.temperature!r}.")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests can share one `generate` call only when they sample the same way."""
        if not self.do_sample:
            return (False,)
        return (True, self.temperature, self.top_p, self.seed)

    def updated(self, **overrides: Any) -> SamplingSettings:
        """A copy with the non-None overrides applied."""
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})


@dataclass
class PreparedMedia:
    """A decoded media item with its frame features computed once (spec §4 step 1), reusable across questions.

    Attributes:
        source: path or description, for messages and JSON output.
        is_image: still images use the image token layout (`image_compress_type`), videos the video one.
        timestamps: ``(T,)`` seconds of each sampled frame.
        duration: length of the source in seconds (0 for images).
        features: ``(T, 1+N, C)`` EVA features on the engine's device, in the model dtype; ``None`` when the
            video comes from the feature cache, whose chunks are streamed for every question instead (memory
            then does not grow with the video's length).
        thumbnails: ``(T, h, w, 3)`` uint8 small copies of the frames for relevance strips.
        subtitles: one text per frame (``""`` for none) when subtitles were given: the prompt then interleaves
            them with the frames in the long-video format (spec §5.4).
    """

    source: str
    is_image: bool
    timestamps: np.ndarray
    duration: float
    features: Tensor | None
    thumbnails: np.ndarray
    subtitles: list[str] | None = None
    cache_entry: Any = None

    @property
    def num_frames(self) -> int:
        if self.features is None:
            return int(self.cache_entry.num_frames)
        return int(self.features.shape[0])


@dataclass
class GenerationRequest:
    """One prompt ready for the LLM: token ids with placeholders, and the visual tokens that fill them."""

    input_ids: list[int]
    visual_tokens: Tensor | None
    settings: SamplingSettings
    question: str
    media: PreparedMedia | None = None

    @property
    def num_visual_tokens(self) -> int:
        return 0 if self.visual_tokens is None else int(self.visual_tokens.shape[0])


@dataclass
class Answer:
    """A generated answer and what it cost.

    Attributes:
        text: the answer, stripped, stopped at EOS or the template's stop string.
        finish_reason: ``"stop"`` (EOS), ``"length"`` (hit max_new_tokens) or ``"cancelled"``.
        prompt_tokens: prompt length including visual tokens.
        visual_tokens: how many of those are visual (2 per video frame for the released configs).
        completion_tokens: generated tokens (EOS included when produced).
        frames: frames of the media the question was about (0 for text-only).
        seconds: wall time of the generate call this answer was part of.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    visual_tokens: int
    completion_tokens: int
    frames: int
    seconds: float
    question: str = ""

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "question": self.question,
            "finish_reason": self.finish_reason,
            "frames": self.frames,
            "visual_tokens": self.visual_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class AttentionResult:
    """Where the context tokens looked, for one question about one media item.

    Attributes:
        question: the instruction the Q-Former read.
        timestamps: ``(T,)`` frame times in seconds.
        relevance: ``(T,)`` softmax over frames of the frame scores (our definition, see
            `LlamaVidModel.frame_relevance`); sums to 1.
        weights: ``(T, Q, N)`` softmax of each query over the frame's patches.
        thumbnails: ``(T, h, w, 3)`` uint8 frames the strip is drawn from.
    """

    question: str
    timestamps: np.ndarray
    relevance: np.ndarray
    weights: np.ndarray
    thumbnails: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "timestamps": [round(float(t), 3) for t in self.timestamps],
            "relevance": [round(float(r), 6) for r in self.relevance],
            "most_relevant_frame": int(np.argmax(self.relevance)),
        }

    def strip(self, tile: int = THUMBNAIL_SIDE, per_row: int = 16) -> Any:
        """A PIL image: one tile per frame (patch attention as a red overlay), relevance bars underneath.

        Drawn with PIL only so the serving extra needs no plotting library.
        """
        from PIL import Image, ImageDraw

        frames = len(self.relevance)
        columns = min(frames, per_row)
        rows = math.ceil(frames / columns)
        bar, label = 12, 12
        cell_h = tile + bar + label
        canvas = Image.new("RGB", (columns * tile, rows * cell_h), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        peak = float(self.relevance.max()) or 1.0
        patch_side = math.isqrt(self.weights.shape[-1])
        for index in range(frames):
            x, y = (index % columns) * tile, (index // columns) * cell_h
            picture = Image.fromarray(self.thumbnails[index]).convert("RGB").resize((tile, tile))
            if patch_side * patch_side == self.weights.shape[-1]:
                heat = self.weights[index].mean(axis=0).reshape(patch_side, patch_side)  # (s, s)
                # Contrast within the frame: uniform attention draws no overlay rather than a solid red tile.
                spread = float(heat.max() - heat.min())
                heat = (heat - heat.min()) / spread if spread > 1e-12 else np.zeros_like(heat)
                alpha = Image.fromarray((heat * 140).astype(np.uint8)).resize(
                    (tile, tile), Image.Resampling.BILINEAR
                )
                picture = Image.composite(Image.new("RGB", (tile, tile), (255, 0, 0)), picture, alpha)
            canvas.paste(picture, (x, y))
            width = max(1, int(round((tile - 2) * float(self.relevance[index]) / peak)))
            draw.rectangle([x + 1, y + tile + 2, x + width, y + tile + bar - 2], fill=(30, 90, 200))
            draw.text(
                (x + 2, y + tile + bar), f"{self.timestamps[index]:.0f}s {self.relevance[index]:.0%}", fill=0
            )
        return canvas

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the strip as an image (format from the suffix, e.g. ``.png``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.strip().save(path)
        return path


# Generation plumbing -------------------------------------------------------------------------------------------
def _streamer_classes() -> tuple[type, type]:
    from transformers.generation.stopping_criteria import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    return BaseStreamer, StoppingCriteria


class _RowTracker:
    """Per-row bookkeeping for one batched `generate`: tokens so far, why each row stopped, text deltas.

    transformers' `TextIteratorStreamer` only handles batches of one; this tracker receives the ``(B,)`` tokens
    of every step and decodes each row incrementally, so batched requests can still stream.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        limits: list[int],
        on_delta: DeltaCallback | None,
        is_cancelled: Callable[[int], bool] | None,
    ) -> None:
        self.decode = decode
        self.eos_ids = eos_ids
        self.limits = limits
        self.on_delta = on_delta
        self.is_cancelled = is_cancelled
        self.tokens: list[list[int]] = [[] for _ in limits]
        self.finish: list[str | None] = [None] * len(limits)
        self.emitted: list[str] = [""] * len(limits)
        self.prompt_seen = False

    def check_cancelled(self) -> None:
        if self.is_cancelled is None:
            return
        for row, finish in enumerate(self.finish):
            if finish is None and self.is_cancelled(row):
                self.finish[row] = "cancelled"

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen and value.ndim == 2:
            self.prompt_seen = True  # generate() first hands the streamer the prompt ids
            return
        self.prompt_seen = True
        self.check_cancelled()
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finish[row] is not None:
                continue  # finished rows receive pad ids until the whole batch stops
            self.tokens[row].append(int(token))
            if int(token) in self.eos_ids:
                self.finish[row] = "stop"
            elif len(self.tokens[row]) >= self.limits[row]:
                self.finish[row] = "length"
            self._emit(row, final=False)

    def _emit(self, row: int, final: bool) -> None:
        if self.on_delta is None:
            return
        text = self.decode(self.tokens[row])
        if not final:
            # Hold back the last word: byte-fallback tokens (parts of one UTF-8 character) change how the tail
            # decodes once the rest arrives, but never the text before a following space (TextStreamer's rule).
            text = text[: text.rfind(" ") + 1]
        if text.startswith(self.emitted[row]) and len(text) > len(self.emitted[row]):
            delta = text[len(self.emitted[row]) :]
            self.emitted[row] = text
            self.on_delta(row, delta)

    def end(self) -> None:
        for row in range(len(self.limits)):
            if self.finish[row] is None:
                self.finish[row] = "length"
            self._emit(row, final=True)

    def done(self) -> list[bool]:
        self.check_cancelled()
        return [finish is not None for finish in self.finish]


def _make_streamer(tracker: _RowTracker) -> Any:
    base_streamer, _ = _streamer_classes()

    class _Streamer(base_streamer):  # type: ignore[misc, valid-type]
        def put(self, value: Tensor) -> None:
            tracker.put(value)

        def end(self) -> None:
            tracker.end()

    return _Streamer()


def _make_stopper(tracker: _RowTracker) -> Any:
    _, stopping_criteria = _streamer_classes()

    class _Stopper(stopping_criteria):  # type: ignore[misc, valid-type]
        # Per-row limits, EOS and cancellation in one place: finished rows stop without stopping the batch.
        def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
            return torch.tensor(tracker.done(), dtype=torch.bool, device=input_ids.device)

    return _Stopper()


# Devices -------------------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else must name an available device."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device {device!r} is not a device name; expected auto, cpu, cuda[:N] or mps."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use --device cpu.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {device!r} requested but Apple MPS is not available here; use --device cpu."
        )
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported; expected auto, cpu, cuda[:N] or mps.")
    return resolved


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: float32 on CPU (half precision is slow there), bfloat16 on CUDA when supported,
    else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected auto, {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def default_model_path() -> Path | None:
    """The embedded tiny model when the package ships one, else ``None`` (the caller falls back to random)."""
    return EMBEDDED_MODEL_DIR if (EMBEDDED_MODEL_DIR / "config.json").is_file() else None


# Engine ----------------------------------------------------------------------------------------------------------
class Engine:
    """A loaded model and processor, with every operation the front-ends need.

    The model is used under one lock: PyTorch modules are not safe to run from several threads at once, and
    the HTTP server gets concurrency from batching (`generate` with several requests), not from threads.

    Args:
        model: a `LlamaVidForConditionalGeneration` in eval mode, already on `device`.
        processor: the matching `LlamaVidProcessor`.
        name: model name reported by the API and JSON outputs.
        is_random: the weights are random (no trained model available); answers are noise.
    """

    def __init__(self, model: Any, processor: Any, name: str = "llamavid", is_random: bool = False) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.is_random = is_random
        parameter = next(model.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self._lock = threading.RLock()
        self.default_settings = SamplingSettings()
        # Optional: reuse videos ingested with `llamavid ingest`, and a KV-cache budget checked before generating.
        self.feature_cache: Any = None
        self.max_memory: int | None = None
        self._frame_encoder: Any = None

    def use_feature_cache(self, root: str | os.PathLike[str] | None = None) -> None:
        """Answer questions about videos already in the feature cache (`llamavid ingest`) from the cache.

        Cached features are streamed chunk by chunk for each question, so an hour-long movie costs memory for
        its visual *tokens* only. Videos not in the cache are decoded as usual (nothing is written).
        """
        from llamavid.data import FeatureCache

        self.feature_cache = FeatureCache(root)

    def _cached_entry(self, path: Path, fps: float | None, max_frames: int | None) -> Any:
        """The complete cache entry for this video, model and sampling, or ``None``."""
        if self.feature_cache is None:
            return None
        from llamavid.inference.long_video import FrameEncoder

        if self._frame_encoder is None:
            self._frame_encoder = FrameEncoder(self.model, self.processor)  # hashes the vision weights once
        key = self.feature_cache.make_key(path, self._frame_encoder, fps=fps, max_frames=max_frames)
        # Sizes are checked here; chunk checksums are verified while the chunks stream.
        entry, reason = self.feature_cache.lookup(key, verify_checksums=False)
        if entry is None:
            logger.info("%s: not served from the feature cache (%s)", path, reason)
        return entry

    # Loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
    ) -> Engine:
        """Load a llamavid model folder once.

        Args:
            path: a folder written by ``save_pretrained``/``llamavid convert``. ``None`` uses the embedded tiny
                model; until that ships, a random tiny model is built (seed 0) and a warning says the answers
                are noise.
            device: ``auto`` (default), ``cpu``, ``cuda[:N]`` or ``mps``.
            dtype: ``auto`` (default: float32 on CPU, bfloat16/float16 on GPUs), ``float32``, ``float16`` or
                ``bfloat16``.
            quantization: ``"8bit"`` or ``"4bit"`` loads the LLM layers through bitsandbytes (vision tower,
                text decoder, projectors and lm_head stay in `dtype`; see `llamavid.model.quantization`).

        Raises:
            FileNotFoundError: `path` is not a llamavid model folder.
            ImportError: quantization asked for without bitsandbytes installed.
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        folder = Path(path) if path is not None else default_model_path()
        if folder is None:
            logger.warning(
                "No trained model given and none embedded at %s: using a RANDOM tiny LLaMA-VID. Its answers "
                "are noise; pass --model FOLDER for real answers.",
                EMBEDDED_MODEL_DIR,
            )
            return cls.random(seed=0, device=torch_device, dtype=torch_dtype)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder}: not a llamavid model folder (no config.json). Pass a folder written by "
                "save_pretrained or `llamavid convert`."
            )
        from llamavid.model import LlamaVidForConditionalGeneration, LlamaVidProcessor

        started = time.perf_counter()
        from llamavid.model.quantization import quantization_config

        bnb_config = quantization_config(quantization, compute_dtype=torch_dtype)
        if bnb_config is None:
            model = LlamaVidForConditionalGeneration.from_pretrained(str(folder), dtype=torch_dtype)
            model = model.to(device=torch_device).eval()  # type: ignore[arg-type, call-arg]
        else:
            # Quantised weights cannot be moved after loading: place them on the device while loading.
            model = LlamaVidForConditionalGeneration.from_pretrained(
                str(folder), dtype=torch_dtype, quantization_config=bnb_config, device_map=str(torch_device)
            ).eval()
        processor = LlamaVidProcessor.from_pretrained(folder)
        logger.info(
            "loaded %s on %s (%s%s) in %.1f s",
            folder,
            torch_device,
            torch_dtype,
            f", LLM in {quantization}" if bnb_config is not None else "",
            time.perf_counter() - started,
        )
        return cls(model, processor, name=folder.resolve().name)

    @classmethod
    def random(
        cls, seed: int = 0, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> Engine:
        """The random tiny demo model (`llamavid demo`'s); for tests and for trying the plumbing offline."""
        from llamavid.demo import build_random_demo_model

        torch_device = resolve_device(device)
        model, processor = build_random_demo_model(seed)
        model = model.to(device=torch_device, dtype=resolve_dtype(dtype, torch_device)).eval()
        return cls(model, processor, name=RANDOM_MODEL_NAME, is_random=True)

    @property
    def max_context(self) -> int:
        """Positions the LLM can attend to: ``max_position_embeddings`` times any RoPE scaling (64K for stage 3)."""
        from llamavid.inference.long_video import context_limit

        return context_limit(self.model.config.text_config)

    # Media ---------------------------------------------------------------------------------------------------
    def load_media(
        self,
        media: Any,
        *,
        fps: float | None = 1.0,
        max_frames: int | None = None,
        subtitles: str | os.PathLike[str] | Sequence[str] | None = None,
        untrusted: bool = False,
        probe_timeout: float = 30.0,
        max_duration: float | None = None,
    ) -> PreparedMedia:
        """Decode a media item and compute its frame features once.

        Args:
            media: a path (video, image or folder of frames, via `llamavid.data.load_media`), a decoded
                `llamavid.data.Frames`, a ``(T, H, W, 3)`` uint8 video or ``(H, W, 3)`` image array, or an
                already prepared item (returned unchanged).
            fps: sampling rate; 1 fps matches the training data (changing it shifts subtitle alignment).
            max_frames: cap on sampled frames, so a long "short" video cannot exceed the context (spec §11.18).
            subtitles: an ``.srt``/``.vtt`` path, or one text per sampled frame; interleaved per frame.
            untrusted: probe the file in a child process first (`llamavid.data.probe_video`), so a hostile file
                that crashes or hangs FFmpeg cannot take the server down.
            probe_timeout: seconds allowed to that probe.
            max_duration: refuse videos longer than this many seconds (checked before decoding).

        Raises:
            MediaError: unreadable media or subtitles; ValueError: bad arguments or a too long video.
        """
        if isinstance(media, PreparedMedia):
            return media
        from llamavid.data import Frames, load_media, probe_video
        from llamavid.data.video import IMAGE_EXTENSIONS

        if isinstance(media, Frames):
            frames, is_image = media, media.fps is None and len(media) == 1 and media.duration == 0
        elif isinstance(media, np.ndarray):
            if media.dtype != np.uint8 or media.ndim not in (3, 4) or media.shape[-1] != 3:
                raise ValueError(
                    f"array media must be uint8 (H, W, 3) or (T, H, W, 3), got {media.dtype} {media.shape}."
                )
            is_image = media.ndim == 3
            video = media[None] if is_image else media
            frames = Frames(
                frames=np.ascontiguousarray(video),
                timestamps=np.arange(len(video), dtype=np.float64) / (fps or 1.0),
                fps=None if is_image else fps,
                duration=0.0 if is_image else len(video) / (fps or 1.0),
                source="<array>",
            )
        else:
            path = Path(media)
            is_image = path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()
            entry = (
                None if is_image or path.is_dir() or untrusted else self._cached_entry(path, fps, max_frames)
            )
            if entry is not None:
                return self._media_from_cache(path, entry, subtitles)
            if untrusted and not is_image and not path.is_dir():
                info = probe_video(path, timeout=probe_timeout)
                if max_duration is not None and info.duration is not None and info.duration > max_duration:
                    raise ValueError(
                        f"{path.name}: the video lasts {info.duration:.0f} s but this server accepts at most "
                        f"{max_duration:.0f} s; cut it or ask the operator to raise --max-video-seconds."
                    )
            frames = load_media(path, fps=fps, max_frames=max_frames)
        if max_frames is not None and len(frames) > max_frames:
            frames = Frames(
                frames.frames[:max_frames],
                frames.timestamps[:max_frames],
                frames.fps,
                frames.duration,
                frames.source,
            )
        if max_duration is not None and not is_image and float(frames.duration) > max_duration:
            raise ValueError(
                f"{frames.source}: the video lasts {frames.duration:.0f} s but at most {max_duration:.0f} s is "
                "accepted; cut it or raise --max-video-seconds."
            )
        per_frame_subtitles = self._subtitles_for(frames, subtitles, is_image)
        pixels = self.processor.image_processor(
            frames.frames[0] if is_image else frames.frames, is_video=not is_image
        )
        with self._lock, torch.no_grad():
            features = self.model.model.get_vision_features(pixels)  # (T, 1+N, C)
        return PreparedMedia(
            source=str(frames.source),
            is_image=bool(is_image),
            timestamps=np.asarray(frames.timestamps, dtype=np.float64),
            duration=float(frames.duration),
            features=features,
            thumbnails=_thumbnails(frames.frames),
            subtitles=per_frame_subtitles,
        )

    def _media_from_cache(self, path: Path, entry: Any, subtitles: Any) -> PreparedMedia:
        timestamps = np.asarray(entry.timestamps, dtype=np.float64)
        duration = float(entry.meta.get("duration") or (timestamps[-1] if len(timestamps) else 0.0))
        if subtitles is not None:
            per_frame = self._subtitles_for(_SampledTimes(timestamps, duration), subtitles, False)
        else:
            # Subtitles given at ingestion time come with the entry.
            stored = list(entry.frame_texts or [])
            per_frame = stored if any(text.strip() for text in stored) else None
        logger.info(
            "%s: %d frames served from the feature cache %s", path, entry.num_frames, entry.digest[:12]
        )
        return PreparedMedia(
            source=str(path),
            is_image=False,
            timestamps=timestamps,
            duration=duration,
            features=None,
            # No pixels are kept in the cache: relevance strips show grey tiles for cached videos.
            thumbnails=np.full((entry.num_frames, 8, 8, 3), 128, dtype=np.uint8),
            subtitles=per_frame,
            cache_entry=entry,
        )

    @staticmethod
    def _subtitles_for(frames: Any, subtitles: Any, is_image: bool) -> list[str] | None:
        if subtitles is None:
            return None
        if is_image:
            raise ValueError("subtitles were given for a still image; they only apply to videos.")
        if isinstance(subtitles, (str, os.PathLike)):
            from llamavid.data import align_subtitles, read_subtitles

            cues = read_subtitles(subtitles)
            return align_subtitles(
                cues, frames.timestamps, duration=frames.duration or None, source=str(subtitles)
            )
        texts = [str(text) for text in subtitles]
        if len(texts) != len(frames):
            raise ValueError(
                f"{len(texts)} subtitle texts for {len(frames)} frames; give one per sampled frame."
            )
        return texts

    # Prompts -------------------------------------------------------------------------------------------------
    def _tokens_per_frame(self, media: PreparedMedia) -> int:
        processor = self.processor
        return processor.image_tokens_per_frame if media.is_image else processor.video_tokens_per_frame

    def visual_output(self, media: PreparedMedia, question: str, output_attentions: bool = False) -> Any:
        """Visual tokens of `media` with context tokens computed from `question` (`LlamaVidVisualOutput`).

        With subtitles each frame is its own block (one ``<image>`` per frame, spec §5.4); otherwise the whole
        media is one block. Both give the same per-frame tokens, since every (frame, question) pair is
        independent. ``from_pixels=True`` because the cached features came from the tower, so the Q-Former's
        CLS setting is the one for pixels and answers equal the uncached path.
        """
        processor = self.processor
        frames = media.num_frames
        if media.subtitles is not None:
            frame_counts = torch.ones(frames, dtype=torch.long)
            block_media = torch.arange(frames)
        else:
            frame_counts = torch.tensor([frames])
            block_media = torch.zeros(1, dtype=torch.long)
        encoded = processor.qformer_tokenizer(
            [question],
            padding="longest",
            truncation=True,
            max_length=processor.qformer_max_length,
            return_tensors="pt",
        )

        with self._lock, torch.no_grad():
            if media.features is not None:
                return self.model.model.get_visual_tokens(
                    media.features,
                    frame_counts,
                    encoded["input_ids"],
                    encoded["attention_mask"],
                    block_media,
                    torch.zeros(len(block_media), dtype=torch.long),
                    media_is_image=torch.full((len(frame_counts),), media.is_image, dtype=torch.bool),
                    from_pixels=True,
                    output_attentions=output_attentions,
                )
            # Cached video: stream its chunks; frames are independent, so the concatenation equals one pass.
            from llamavid.inference.long_video import stream_visual_output

            return stream_visual_output(
                self.model,
                media.cache_entry,
                encoded["input_ids"],
                encoded["attention_mask"],
                frame_blocks=media.subtitles is not None,
                output_attentions=output_attentions,
            )

    def build_request(
        self,
        question: str,
        media: PreparedMedia | None = None,
        history: Sequence[tuple[str, str]] = (),
        settings: SamplingSettings | None = None,
    ) -> GenerationRequest:
        """Render the prompt of one turn and compute its visual tokens.

        Following the official ``cli.py`` (spec §5.5), only the latest user turn carries the media: earlier
        turns appear as plain text, and the context tokens are computed from the current question.

        Args:
            question: the user's latest message (no ``<image>``; it is added here).
            media: the media the conversation is about, or ``None`` for text-only.
            history: earlier ``(user, assistant)`` turns, as plain text.
            settings: sampling settings (default: the engine's defaults).

        Raises:
            ValueError: empty question, or a prompt longer than the model's context.
        """
        from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN, build_long_video_message

        question = question.strip()
        if not question:
            raise ValueError("the question is empty; type a question about the media.")
        if DEFAULT_IMAGE_TOKEN in question:
            raise ValueError(
                f"the question contains {DEFAULT_IMAGE_TOKEN!r}; the media is inserted automatically."
            )
        settings = settings or self.default_settings
        messages: list[dict[str, str]] = []
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        lengths: list[int] = []
        visual_tokens = None
        if media is None:
            content = question
        else:
            per_frame = self._tokens_per_frame(media)
            if media.subtitles is not None:
                content = build_long_video_message(media.subtitles, question)
                lengths = [per_frame] * media.num_frames
            else:
                content = f"{DEFAULT_IMAGE_TOKEN}\n{question}"
                lengths = [per_frame * media.num_frames]
            visual_tokens = self.visual_output(media, question).tokens
        messages.append({"role": "user", "content": content})
        prompt = self.processor.apply_chat_template(messages)
        input_ids = self.processor.tokenize_prompt(prompt, lengths)
        needed = len(input_ids) + settings.max_new_tokens
        if needed > self.max_context:
            raise ValueError(
                f"the prompt has {len(input_ids)} tokens ({sum(lengths)} visual) and up to "
                f"{settings.max_new_tokens} new tokens were asked for, but the model's context is {self.max_context}. "
                "Lower --max-frames or --fps, shorten the chat (/reset) or lower --max-new-tokens."
            )
        from llamavid.inference.long_video import estimate_kv_cache_bytes

        kv_bytes = estimate_kv_cache_bytes(self.model.config.text_config, needed, self.dtype)
        logger.info(
            "prompt: %d tokens (%d visual); KV cache about %.1f MiB",
            len(input_ids),
            sum(lengths),
            kv_bytes / 2**20,
        )
        if self.max_memory is not None and kv_bytes > self.max_memory:
            raise ValueError(
                f"the KV cache for {needed} tokens ({sum(lengths)} visual) needs about {kv_bytes / 2**20:.1f} MiB, "
                f"over --max-memory {self.max_memory / 2**20:.1f} MiB; lower --max-frames or --fps, or raise the budget."
            )
        return GenerationRequest(input_ids, visual_tokens, settings, question, media)

    # Generation ----------------------------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_delta: DeltaCallback | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[Answer]:
        """Answer several requests in one left-padded batch on the device.

        Greedy answers equal those of one-by-one calls (left padding with an attention mask leaves each row's
        computation unchanged, up to float rounding); sampled ones are drawn from the same distribution.

        Args:
            requests: requests sharing `SamplingSettings.batch_key` (max_new_tokens may differ per row).
            on_delta: called as ``on_delta(row, text)`` with each new piece of a row's answer (streaming).
            is_cancelled: polled every step; a row for which it returns True stops (finish_reason
                ``"cancelled"``) without stopping the others (client gone, timeout).
        """
        if not requests:
            return []
        keys = {request.settings.batch_key for request in requests}
        if len(keys) > 1:
            raise ValueError(f"requests in one batch must sample the same way, got {sorted(map(str, keys))}.")
        from transformers import GenerationConfig

        settings = requests[0].settings
        pad_id = self.processor.pad_token_id
        longest = max(len(request.input_ids) for request in requests)
        input_ids = torch.full((len(requests), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(requests), longest), dtype=torch.long)
        for row, request in enumerate(requests):
            # Left padding: every row's last prompt token sits at the same position, where generation starts.
            input_ids[row, longest - len(request.input_ids) :] = torch.tensor(request.input_ids)
            attention_mask[row, longest - len(request.input_ids) :] = 1
        parts = [request.visual_tokens for request in requests if request.visual_tokens is not None]
        visual = torch.cat(parts) if parts else None  # placeholder order = row-major, as masked_scatter fills
        eos = self.processor.tokenizer.eos_token_id
        limits = [request.settings.max_new_tokens for request in requests]
        tracker = _RowTracker(
            self.processor.decode, {int(eos)} if eos is not None else set(), limits, on_delta, is_cancelled
        )
        sampling = (
            {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
        )
        generation_config = GenerationConfig(
            do_sample=settings.do_sample,
            max_new_tokens=max(limits),
            pad_token_id=pad_id,
            eos_token_id=eos,
            bos_token_id=self.processor.tokenizer.bos_token_id,
            **sampling,
        )
        started = time.perf_counter()
        with self._lock, torch.no_grad():
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                visual_tokens=visual,
                generation_config=generation_config,
                streamer=_make_streamer(tracker),
                stopping_criteria=[_make_stopper(tracker)],
            )
        seconds = time.perf_counter() - started
        answers = []
        for row, request in enumerate(requests):
            answers.append(
                Answer(
                    text=self.processor.decode(tracker.tokens[row]),
                    finish_reason=tracker.finish[row] or "length",
                    prompt_tokens=len(request.input_ids),
                    visual_tokens=request.num_visual_tokens,
                    completion_tokens=len(tracker.tokens[row]),
                    frames=0 if request.media is None else request.media.num_frames,
                    seconds=seconds,
                    question=request.question,
                )
            )
        return answers

    def _settings(self, settings: SamplingSettings | None, **overrides: Any) -> SamplingSettings:
        return (settings or self.default_settings).updated(**overrides)

    def ask(
        self,
        media: Any,
        question: str,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        on_delta: Callable[[str], None] | None = None,
        **media_options: Any,
    ) -> Answer:
        """Answer one question about one media item (path, array, `Frames` or `PreparedMedia`; None = text).

        `on_delta` receives the answer piece by piece as it is generated. `media_options` go to `load_media`
        (``fps``, ``max_frames``, ``subtitles``, ...).
        """
        prepared = None if media is None else self.load_media(media, **media_options)
        settings = self._settings(
            None, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        request = self.build_request(question, prepared, settings=settings)
        callback = None if on_delta is None else (lambda row, text: on_delta(text))
        return self.generate([request], on_delta=callback)[0]

    def stream(self, media: Any, question: str, **options: Any) -> TextStream:
        """Like `ask`, but returns an iterator over answer pieces; `.answer` holds the `Answer` afterwards."""
        prepared = None if media is None else self.load_media(media, **_pop_media_options(options))
        settings = self._settings(None, **options)
        return TextStream(self, self.build_request(question, prepared, settings=settings))

    def ask_many(
        self,
        items: Sequence[tuple[Any, str]],
        *,
        batch_size: int = 8,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        **media_options: Any,
    ) -> list[Answer]:
        """Answer ``[(media, question), ...]`` in left-padded batches of `batch_size` on the device.

        Media given more than once by the same path (or object) is decoded and encoded once.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        settings = self._settings(None, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        prepared: dict[Any, PreparedMedia | None] = {}
        requests = []
        for media, question in items:
            key = media if isinstance(media, (str, os.PathLike)) else id(media)
            if key not in prepared:
                prepared[key] = None if media is None else self.load_media(media, **media_options)
            requests.append(self.build_request(question, prepared[key], settings=settings))
        answers: list[Answer] = []
        for start in range(0, len(requests), batch_size):
            answers += self.generate(requests[start : start + batch_size])
        return answers

    def attention(self, media: Any, question: str, **media_options: Any) -> AttentionResult:
        """Per-frame relevance and patch attention of the context tokens for `question` (no generation)."""
        prepared = self.load_media(media, **media_options)
        visual = self.visual_output(prepared, question.strip(), output_attentions=True)
        blocks = visual.per_block()
        weights = torch.cat([block["weights"] for block in blocks])  # (T, Q, N)
        scores = torch.cat([block["scores"] for block in blocks])  # (T,)
        return AttentionResult(
            question=question.strip(),
            timestamps=prepared.timestamps,
            relevance=scores.softmax(dim=-1).float().cpu().numpy(),
            weights=weights.float().cpu().numpy(),
            thumbnails=prepared.thumbnails,
        )

    def chat(self, media: Any = None, **options: Any) -> ChatSession:
        """Start a multi-turn conversation about one media item (features computed once, here)."""
        prepared = None if media is None else self.load_media(media, **_pop_media_options(options))
        return ChatSession(self, prepared, self._settings(None, **options))

    def describe(self) -> dict[str, Any]:
        """Model facts for JSON outputs and the API's model list."""
        return {
            "model": self.name,
            "random_weights": self.is_random,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


_MEDIA_OPTIONS = ("fps", "max_frames", "subtitles", "untrusted", "probe_timeout", "max_duration")


@dataclass
class _SampledTimes:
    """What subtitle alignment needs from sampled frames: their timestamps and the video's duration."""

    timestamps: np.ndarray
    duration: float

    def __len__(self) -> int:
        return len(self.timestamps)


def _pop_media_options(options: dict[str, Any]) -> dict[str, Any]:
    return {name: options.pop(name) for name in _MEDIA_OPTIONS if name in options}


def _thumbnails(frames: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    from PIL import Image

    small = [
        np.asarray(Image.fromarray(frame).resize((side, side), Image.Resampling.BILINEAR)) for frame in frames
    ]
    return np.stack(small)  # (T, side, side, 3)


class TextStream:
    """Iterate over answer pieces while `generate` runs in a worker thread; `.answer` is set at the end.

    Leaving the loop early (``break``) cancels the generation instead of letting it run to the limit.
    """

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self.engine = engine
        self.request = request
        self.answer: Answer | None = None
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._cancel = threading.Event()

    def _run(self) -> None:
        try:
            answer = self.engine.generate(
                [self.request],
                on_delta=lambda row, text: self._queue.put(("delta", text)),
                is_cancelled=lambda row: self._cancel.is_set(),
            )[0]
            self._queue.put(("done", answer))
        except BaseException as error:  # re-raised in the consumer's thread
            self._queue.put(("error", error))

    def __iter__(self) -> Iterator[str]:
        thread = threading.Thread(target=self._run, name="llamavid-generate", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = self._queue.get()
                if kind == "delta":
                    yield value
                elif kind == "done":
                    self.answer = value
                    return
                else:
                    raise value
        finally:
            self._cancel.set()
            thread.join()


@dataclass
class ChatSession:
    """A multi-turn conversation about one media item, reusing its frame features every turn.

    Only the latest user turn carries the visual tokens and its context tokens follow that turn's question
    (official ``cli.py``, spec §5.5); earlier turns stay in the prompt as text.
    """

    engine: Engine
    media: PreparedMedia | None
    settings: SamplingSettings
    history: list[tuple[str, str]] = field(default_factory=list)

    def ask(self, question: str, on_delta: Callable[[str], None] | None = None, **overrides: Any) -> Answer:
        """Answer the next question; the turn is appended to the history."""
        request = self.engine.build_request(
            question, self.media, self.history, self.settings.updated(**overrides)
        )
        callback = None if on_delta is None else (lambda row, text: on_delta(text))
        answer = self.engine.generate([request], on_delta=callback)[0]
        self.history.append((request.question, answer.text))
        return answer

    def stream(self, question: str, **overrides: Any) -> Iterator[str]:
        """Yield the answer piece by piece; the turn is added to the history when the answer is complete."""
        request = self.engine.build_request(
            question, self.media, self.history, self.settings.updated(**overrides)
        )
        text_stream = TextStream(self.engine, request)
        yield from text_stream
        if text_stream.answer is not None:
            self.history.append((request.question, text_stream.answer.text))

    def reset(self) -> None:
        """Forget the conversation; the media and its features stay."""
        self.history.clear()

    @property
    def last_question(self) -> str | None:
        return self.history[-1][0] if self.history else None

    def attention(self, question: str | None = None) -> AttentionResult:
        """Attention for `question`, by default the last question asked."""
        if self.media is None:
            raise ValueError("this chat has no media, so there is no attention to show.")
        question = question or self.last_question
        if not question:
            raise ValueError("ask a question first (or pass one): attention depends on the question.")
        return self.engine.attention(self.media, question)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.engine.describe(),
            "media": None if self.media is None else self.media.source,
            "frames": 0 if self.media is None else self.media.num_frames,
            "turns": [{"user": user, "assistant": assistant} for user, assistant in self.history],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the conversation as JSON (model, media, turns)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


__all__ = [
    "Answer",
    "AttentionResult",
    "ChatSession",
    "EMBEDDED_MODEL_DIR",
    "Engine",
    "GenerationRequest",
    "PreparedMedia",
    "SamplingSettings",
    "TextStream",
    "default_model_path",
    "resolve_device",
    "resolve_dtype",
]
