"""`Engine`: a loaded model with the one path from media + question to an answer.

Every front-end is a thin adapter over it: the CLI (``ask``, ``chat``, ``attention``, ``ingest``), the Python
API (`llamavid.load`), the OpenAI-compatible server and the web UI (`llamavid.serve`), evaluation
(`llamavid.eval`) and ``eval-synth``. Prompt building, the context-budget check, sampling defaults, the feature
cache and error messages therefore live here once, and every interface gives the same tokens for the same
greedy request.

Flow of one answer::

    load_media: probe -> (budget check) -> feature cache or decode -> EVA features, once per media item
    build_request: chat template + placeholders (the processor's layout) + context tokens for this question
    answer_batch: one left-padded batch through the model's generate, streamed and stopped per row

Multi-turn chat follows the official demo: each turn re-inserts the visual tokens in front of the *latest* user
message only, with context tokens computed from that message; earlier turns stay as text.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamavid.errors import ContextBudgetError, InvalidInputError
from llamavid.inference.budget import Budget, check_context_budget, context_limit
from llamavid.inference.loading import default_model_path, load_model, load_random_model
from llamavid.inference.media import (
    IN_MEMORY_FEATURE_BYTES,
    FrameEncoder,
    PreparedMedia,
    encode_pixels,
    subtitles_for_frames,
    thumbnails,
)
from llamavid.inference.results import Answer, AttentionResult
from llamavid.inference.settings import SamplingSettings
from llamavid.inference.streaming import DeltaCallback, RowTracker, TextStream, make_stopper, make_streamer

logger = logging.getLogger(__name__)

__all__ = ["MEDIA_OPTIONS", "Engine", "GenerationRequest"]

# Keyword options of `Engine.load_media`, accepted by every call that takes media.
MEDIA_OPTIONS = ("fps", "max_frames", "subtitles", "untrusted", "probe_timeout", "max_duration", "max_pixels")


@dataclass
class GenerationRequest:
    """One prompt ready for the LLM: token ids with placeholders, and the visual tokens that fill them."""

    input_ids: list[int]
    visual_tokens: Tensor | None
    settings: SamplingSettings
    question: str
    media: PreparedMedia | None = None
    budget: Budget | None = None

    @property
    def num_visual_tokens(self) -> int:
        return 0 if self.visual_tokens is None else int(self.visual_tokens.shape[0])


def pop_media_options(options: dict[str, Any]) -> dict[str, Any]:
    """Split `load_media`'s keyword options out of a mixed dict (the rest are sampling options)."""
    return {name: options.pop(name) for name in MEDIA_OPTIONS if name in options}


class Engine:
    """A loaded model and processor, with every operation the front-ends need.

    The model is used under one lock: PyTorch modules are not safe to run from several threads at once, and
    the HTTP server gets concurrency from batching (`generate` with several requests), not from threads.

    Args:
        model: a `LlamaVidForConditionalGeneration` in eval mode, already on its device.
        processor: the matching `LlamaVidProcessor`.
        name: model name reported by the API and JSON outputs.
        is_random: the weights are random (no trained model available); answers are noise.
        encoder_id: id of the saved vision weights for feature-cache keys (default: hash the weights in memory).

    Attributes:
        default_settings: sampling used when a call gives none; starts from the checkpoint's
            ``generation_config.json`` (`SamplingSettings.from_generation_config`).
        feature_cache: the `FeatureCache` video files go through, or None (`use_feature_cache`).
        max_memory: KV-cache budget in bytes, checked before generating (None: no budget).
        progress: show a progress bar on stderr for decoding/encoding that takes more than ~2 s.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        name: str = "llamavid",
        is_random: bool = False,
        encoder_id: str | None = None,
    ) -> None:
        self.model = model
        self.encoder_id = encoder_id
        self.processor = processor
        self.name = name
        self.is_random = is_random
        parameter = next(model.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self._lock = threading.RLock()
        self.default_settings = SamplingSettings.from_generation_config(
            getattr(model, "generation_config", None)
        )
        self.feature_cache: Any = None
        self.max_memory: int | None = None
        self.progress = True
        self._frame_encoder: FrameEncoder | None = None

    @property
    def lock(self) -> threading.RLock:
        """The lock every use of the model holds (re-entrant): code that runs the model's parts directly, such
        as live sessions scoring frames, takes it too."""
        return self._lock

    # Loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
        *,
        feature_cache: bool | str | os.PathLike[str] = True,
    ) -> Engine:
        """Load a llamavid model folder once (default: the embedded tiny model); see `load_model`.

        Args:
            feature_cache: ``True`` (default) sends video files through the feature cache at its default root
                (``$LLAMAVID_CACHE`` or ``~/.cache/llamavid/features``); a path uses that root; ``False`` decodes
                and encodes every time and writes nothing.
        """
        loaded = load_model(path, device=device, dtype=dtype, quantization=quantization)
        engine = cls(
            loaded.model, loaded.processor, loaded.name, loaded.is_random, encoder_id=loaded.encoder_id
        )
        if feature_cache is not False:
            engine.use_feature_cache(None if feature_cache is True else feature_cache)
        return engine

    @classmethod
    def random(
        cls, seed: int = 0, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> Engine:
        """The random tiny demo model; for tests and for trying the plumbing offline (no feature cache)."""
        loaded = load_random_model(seed, device=device, dtype=dtype)
        return cls(loaded.model, loaded.processor, name=loaded.name, is_random=True)

    def use_feature_cache(self, root: str | os.PathLike[str] | None = None) -> None:
        """Send video files through the feature cache at `root` (default root when None): read, and write."""
        from llamavid.data import FeatureCache

        self.feature_cache = FeatureCache(root)

    @property
    def frame_encoder(self) -> FrameEncoder:
        """The feature cache's encoder for this model (hashes the vision weights once, on first use)."""
        if self._frame_encoder is None:
            self._frame_encoder = FrameEncoder(self.model, self.processor, self.encoder_id)
        return self._frame_encoder

    @property
    def max_context(self) -> int:
        """Positions the LLM can attend to: ``max_position_embeddings`` times any RoPE scaling (64K for stage 3)."""
        return context_limit(self.model.config.text_config)

    def describe(self) -> dict[str, Any]:
        """Model facts for JSON outputs and the API's model list."""
        return {
            "model": self.name,
            "random_weights": self.is_random,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

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
        admit: Callable[[int, bool], None] | None = None,
        max_pixels: int | None = None,
    ) -> PreparedMedia:
        """Decode a media item and compute its frame features once.

        Args:
            media: a path (video, image or folder of frames), a decoded `llamavid.data.Frames`, a
                ``(T, H, W, 3)`` uint8 video or ``(H, W, 3)`` image array, or an already prepared item (returned
                unchanged).
            fps: sampling rate; 1 fps matches the training data (changing it shifts subtitle alignment).
            max_frames: cap on sampled frames; a longer video is sampled uniformly with this many frames.
            subtitles: an ``.srt``/``.vtt`` path, or one text per sampled frame; interleaved per frame.
            untrusted: probe the file in a child process first (`llamavid.data.probe_video`), so a hostile file
                that crashes or hangs FFmpeg cannot take the server down.
            probe_timeout: seconds allowed to that probe.
            max_duration: refuse videos longer than this many seconds (checked before decoding).
            admit: called as ``admit(frames, is_image)`` once the frame count is known from the probe and
                before anything is decoded; raise from it to refuse (the budget check does).
            max_pixels: largest image or video frame accepted, checked from the file's header before decoding
                (default: ``$LLAMAVID_MAX_PIXELS`` or 50 megapixels; see `llamavid.data.video.pixel_limit`).

        Raises:
            MediaError: unreadable media or subtitles. InvalidInputError: bad arguments or a too long video.
        """
        if isinstance(media, PreparedMedia):
            return media
        if max_pixels is not None:
            from llamavid.data.video import pixel_limit

            with pixel_limit(max_pixels):
                return self.load_media(
                    media,
                    fps=fps,
                    max_frames=max_frames,
                    subtitles=subtitles,
                    untrusted=untrusted,
                    probe_timeout=probe_timeout,
                    max_duration=max_duration,
                    admit=admit,
                )
        from llamavid.data import Frames, load_media
        from llamavid.data.video import IMAGE_EXTENSIONS

        if isinstance(media, Frames):
            is_image = media.fps is None and len(media) == 1 and media.duration == 0
            return self._encode_frames(media, bool(is_image), subtitles, max_frames, admit)
        if isinstance(media, np.ndarray):
            if media.dtype != np.uint8 or media.ndim not in (3, 4) or media.shape[-1] != 3:
                raise InvalidInputError(
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
            return self._encode_frames(frames, is_image, subtitles, max_frames, admit)
        path = Path(media)
        is_image = path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()
        if is_image or path.is_dir():
            frames = load_media(path, fps=fps, max_frames=max_frames)
            return self._encode_frames(frames, is_image, subtitles, max_frames, admit)
        return self._load_video_file(
            path, fps, max_frames, subtitles, untrusted, probe_timeout, max_duration, admit
        )

    def _load_video_file(
        self,
        path: Path,
        fps: float | None,
        max_frames: int | None,
        subtitles: Any,
        untrusted: bool,
        probe_timeout: float,
        max_duration: float | None,
        admit: Callable[[int, bool], None] | None,
    ) -> PreparedMedia:
        from llamavid.data import load_media, probe_video
        from llamavid.data.feature_cache import expected_frames
        from llamavid.data.video import inspect_video

        # Untrusted files are parsed in a child process first; a local file is inspected in-process (no spawn).
        info = probe_video(path, timeout=probe_timeout) if untrusted else inspect_video(path)
        if max_duration is not None and info.duration is not None and info.duration > max_duration:
            raise InvalidInputError(
                f"{path.name}: the video lasts {info.duration:.0f} s but at most {max_duration:.0f} s is "
                "accepted; cut it or raise --max-video-seconds."
            )
        expected = expected_frames(info, fps=fps, max_frames=max_frames)
        uncapped = expected_frames(info, fps=fps)
        capped = bool(max_frames and uncapped and uncapped > max_frames)
        if admit is not None and expected is not None:
            try:
                admit(expected, False)  # refuse an over-budget request before decoding anything
            except ContextBudgetError as error:
                if not info.duration:
                    raise
                # A damaged header can declare days of video: say where the frame count came from.
                raise ContextBudgetError(
                    f"{expected} frames to sample from the {info.duration:.0f} s the file declares; {error}"
                ) from None
        if self.feature_cache is None:
            frames = load_media(path, fps=fps, max_frames=max_frames)
            prepared = self._encode_frames(frames, False, subtitles, max_frames, None)
            prepared.frames_capped = capped
            return prepared
        entry, shown = self._cache_entry(path, fps, max_frames, info)
        prepared = self.media_from_entry(entry, subtitles, source=str(path), thumbnails=shown)
        prepared.frames_capped = capped
        return prepared

    def media_from_entry(
        self,
        entry: Any,
        subtitles: str | os.PathLike[str] | Sequence[str] | None = None,
        *,
        source: str | None = None,
        thumbnails: np.ndarray | None = None,
    ) -> PreparedMedia:
        """A complete feature-cache entry as media to ask about (the features exactly as stored).

        Subtitles given here replace those stored at ingestion time; without either the clip layout is used.
        A short entry is read into memory once; a long one streams its chunks for every question.
        """
        timestamps = np.asarray(entry.timestamps, dtype=np.float64)
        duration = float(entry.meta.get("duration") or (timestamps[-1] if len(timestamps) else 0.0))
        if subtitles is not None:
            per_frame = subtitles_for_frames(timestamps, duration, subtitles, False)
        else:  # subtitles given at ingestion time come with the entry
            stored = entry.frame_texts
            per_frame = stored if any(text.strip() for text in stored) else None
        tokens, channels = entry.feature_shape
        features = None
        if entry.num_frames * tokens * channels * 2 <= IN_MEMORY_FEATURE_BYTES:
            features = entry.load_features().to(device=self.device, dtype=self.dtype)
        return PreparedMedia(
            source=source or str(entry.path),
            is_image=False,
            timestamps=timestamps,
            duration=duration,
            features=features,
            thumbnails=thumbnails
            if thumbnails is not None
            else np.full((entry.num_frames, 8, 8, 3), 128, dtype=np.uint8),
            subtitles=per_frame,
            cache_entry=entry,
        )

    def _cache_entry(
        self, path: Path, fps: float | None, max_frames: int | None, info: Any = None
    ) -> tuple[Any, Any]:
        """The complete cache entry for this video and sampling, encoding (and storing) it on a miss.

        Returns the entry and, when frames were decoded here, their thumbnails (else None).
        """
        cache = self.feature_cache
        encoder = self.frame_encoder
        shown: list[np.ndarray] = []
        encoder.on_frames = lambda frames: shown.append(thumbnails(frames))
        try:
            with self._progress_bar("encode", path.name) as progress, self._lock:
                # A complete, verified entry; bad chunks (corrupted on disk) are re-encoded, nothing else.
                report = cache.ensure(
                    path, encoder, fps=fps, max_frames=max_frames, progress=progress, info=info
                )
        finally:
            encoder.on_frames = None
        entry = report.entry
        if report.hit:
            logger.info("feature cache: hit %s (%s, %d frames)", entry.digest[:16], path, entry.num_frames)
            return entry, None
        logger.info("feature cache: miss (%s) for %s", report.miss_reason, path)
        complete = sum(len(part) for part in shown) == entry.num_frames
        return entry, (np.concatenate(shown) if shown and complete else None)

    def _progress_bar(self, description: str, name: str) -> Any:
        """A tqdm bar on stderr that appears only after ~2 s, on a terminal, unless `progress` is off."""
        import contextlib
        import sys

        from tqdm import tqdm

        @contextlib.contextmanager
        def bar() -> Any:
            with tqdm(
                desc=f"{description} {name}",
                unit="frame",
                file=sys.stderr,
                disable=None if self.progress else True,
                delay=2.0,
                dynamic_ncols=True,
                leave=False,
            ) as progress:

                def update(done: int, expected: int | None) -> None:
                    if expected and progress.total != expected:
                        progress.total = expected
                    progress.update(done - progress.n)

                yield update

        return bar()

    def _encode_frames(
        self,
        frames: Any,
        is_image: bool,
        subtitles: Any,
        max_frames: int | None,
        admit: Callable[[int, bool], None] | None,
    ) -> PreparedMedia:
        from llamavid.data import Frames

        capped = False
        if max_frames is not None and len(frames) > max_frames:
            index = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)  # uniform, like decoding
            frames = Frames(
                frames.frames[index], frames.timestamps[index], frames.fps, frames.duration, frames.source
            )
            capped = True
        if admit is not None:
            admit(len(frames), is_image)
        per_frame = subtitles_for_frames(
            np.asarray(frames.timestamps, dtype=np.float64), float(frames.duration), subtitles, is_image
        )
        pixels = self.processor.image_processor(
            frames.frames[0] if is_image else frames.frames, is_video=not is_image
        )
        with self._lock:
            # As the cache's encoder does it (precision, fp16 rounding): an array answers as its cached video.
            features = encode_pixels(self.model.model, pixels).to(self.dtype)  # (T, 1+N, C)
        return PreparedMedia(
            source=str(frames.source),
            is_image=bool(is_image),
            timestamps=np.asarray(frames.timestamps, dtype=np.float64),
            duration=float(frames.duration),
            features=features,
            thumbnails=thumbnails(frames.frames),
            subtitles=per_frame,
            frames_capped=capped,
        )

    def ingest(
        self,
        video: str | os.PathLike[str],
        *,
        fps: float | None = 1.0,
        max_frames: int | None = None,
        subtitles: str | os.PathLike[str] | None = None,
        batch_size: int = 16,
        fast_resize: bool = False,
    ) -> Any:
        """Encode a video's frames into the feature cache (resumable; a no-op when already complete).

        Returns the cache's `IngestReport`. Uses the same encoder and key as every question, so a later `ask` about
        the video (in any process, any dtype) reads the features instead of encoding again.

        ``fast_resize=True`` (opt-in): the decoder's scaler resizes each frame to the processor's size (see
        `FrameEncoder`); not bit-identical to the official PIL resize (docs/benchmarks.md), so the entry gets its
        own cache key and questions, which use the faithful path, do not read it.
        """
        if self.feature_cache is None:
            self.use_feature_cache()
        encoder = self.frame_encoder
        if fast_resize:
            encoder = FrameEncoder(self.model, self.processor, encoder.encoder_id, fast_resize=True)
        with self._progress_bar("ingest", Path(video).name) as progress, self._lock:
            return self.feature_cache.ingest(
                video,
                encoder,
                fps=fps,
                max_frames=max_frames,
                subtitles=subtitles,
                batch_size=batch_size,
                progress=progress,
            )

    # Visual tokens -------------------------------------------------------------------------------------------
    def _qformer_inputs(self, questions: Sequence[str]) -> dict[str, Tensor]:
        processor = self.processor
        return processor.qformer_tokenizer(
            list(questions),
            padding="longest",
            truncation=True,
            max_length=processor.qformer_max_length,
            return_tensors="pt",
        )

    def visual_output(self, media: PreparedMedia, question: str, output_attentions: bool = False) -> Any:
        """Visual tokens of `media` with context tokens computed from `question` (`LlamaVidVisualOutput`).

        With subtitles each frame is its own block (one ``<image>`` per frame); otherwise the whole media is one
        block. Both give the same per-frame tokens, since every (frame, question) pair is independent.
        ``from_pixels=True``: features (cached or not) came from the tower, so the Q-Former's CLS setting is the
        one for pixels.
        """
        if media.features is not None:
            return self._in_memory_visual_output(media, [question], output_attentions)
        from llamavid.inference.long_video import stream_visual_output

        assert media.cache_entry is not None
        encoded = self._qformer_inputs([question])
        with self._lock, torch.no_grad():
            return stream_visual_output(
                self.model,
                media.cache_entry,
                encoded["input_ids"],
                encoded["attention_mask"],
                frame_blocks=media.subtitles is not None,
                output_attentions=output_attentions,
            )

    def visual_tokens_many(self, media: PreparedMedia, questions: Sequence[str]) -> list[Tensor]:
        """Visual tokens of `media` for each of `questions`, all questions in one Q-Former pass.

        Each frame's question-free work (its projected features, the cross-attention keys and values) is done
        once for all questions instead of once per question, so asking Q questions about one video costs far
        less than Q `visual_output` calls. Row q equals ``visual_output(media, questions[q]).tokens`` up to float
        rounding (shorter questions are padded and masked). A long cached video (no features in memory)
        streams its chunks once per question, as `visual_output` does.
        """
        questions = [question.strip() for question in questions]
        if not questions:
            return []
        if media.features is None:
            return [self.visual_output(media, question).tokens for question in questions]
        output = self._in_memory_visual_output(media, questions)
        return list(output.tokens.chunk(len(questions)))

    def _in_memory_visual_output(
        self, media: PreparedMedia, questions: list[str], output_attentions: bool = False
    ) -> Any:
        """One `get_visual_tokens` call over features in memory: every question sees every block, question after
        question (with per-frame blocks every frame is its own medium)."""
        assert media.features is not None
        counts = self.processor.block_frame_counts(
            media.num_frames, is_image=media.is_image, per_frame=media.subtitles is not None
        )
        blocks = len(counts)
        encoded = self._qformer_inputs(questions)
        with self._lock, torch.no_grad():
            return self.model.model.get_visual_tokens(
                media.features,
                torch.tensor(counts, dtype=torch.long),
                encoded["input_ids"],
                encoded["attention_mask"],
                torch.arange(blocks).repeat(len(questions)),
                torch.arange(len(questions)).repeat_interleave(blocks),
                media_is_image=torch.full((blocks,), media.is_image, dtype=torch.bool),
                from_pixels=True,
                output_attentions=output_attentions,
            )

    # Prompts -------------------------------------------------------------------------------------------------
    def _messages(
        self,
        question: str,
        frames: int,
        per_frame_texts: Sequence[str] | None,
        history: Sequence[tuple[str, str]],
    ) -> list[dict[str, str]]:
        from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN, build_long_video_message

        messages: list[dict[str, str]] = []
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if frames == 0:
            content = question
        elif per_frame_texts is not None:
            content = build_long_video_message(per_frame_texts, question)
        else:
            content = f"{DEFAULT_IMAGE_TOKEN}\n{question}"
        messages.append({"role": "user", "content": content})
        return messages

    def _prompt_ids(self, prompt: str, frames: int, is_image: bool, per_frame: bool) -> tuple[list[int], int]:
        """Token ids of a rendered prompt with the processor's placeholder layout, and the visual token count."""
        processor = self.processor
        lengths = (
            processor.visual_block_lengths(frames, is_image=is_image, per_frame=per_frame) if frames else []
        )
        return processor.tokenize_prompt(prompt, lengths), sum(lengths)

    def _budget(self, prompt_tokens: int, visual_tokens: int, settings: SamplingSettings) -> Budget:
        """The one budget check with this engine's model, dtype and ``max_memory``."""
        return check_context_budget(
            self.model.config.text_config,
            prompt_tokens,
            settings.max_new_tokens,
            self.dtype,
            self.max_memory,
            visual_tokens=visual_tokens,
        )

    def check_budget(
        self,
        question: str,
        frames: int,
        is_image: bool = False,
        history: Sequence[tuple[str, str]] = (),
        settings: SamplingSettings | None = None,
        per_frame_texts: Sequence[str] | None = None,
    ) -> Budget:
        """The budget of a question about a media item of `frames` frames; raises `ContextBudgetError`.

        Without the subtitle texts (not aligned yet) the prompt length is a lower bound, which is enough to
        refuse before decoding.
        """
        settings = settings or self.default_settings
        prompt = self.processor.apply_chat_template(
            self._messages(question, frames, per_frame_texts, history)
        )
        ids, visual = self._prompt_ids(prompt, frames, is_image, per_frame_texts is not None)
        return self._budget(len(ids), visual, settings)

    def build_request(
        self,
        question: str,
        media: PreparedMedia | None = None,
        history: Sequence[tuple[str, str]] = (),
        settings: SamplingSettings | None = None,
        visual_tokens: Tensor | None = None,
    ) -> GenerationRequest:
        """Render the prompt of one turn and compute its visual tokens.

        Only the latest user turn carries the media: earlier turns appear as plain text, and the context tokens
        are computed from the current question.

        Args:
            question: the user's latest message (no ``<image>``; it is added here).
            media: the media the conversation is about, or ``None`` for text-only.
            history: earlier ``(user, assistant)`` turns, as plain text.
            settings: sampling settings (default: the engine's defaults).
            visual_tokens: the media's visual tokens for this question when the caller has them already (a live
                session keeps those computed while scoring frames): exactly what
                ``visual_output(media, question).tokens`` gives, so only their count is checked.

        Raises:
            InvalidInputError: empty question, or `visual_tokens` of the wrong count. ContextBudgetError: the
                prompt does not fit.
        """
        settings = settings or self.default_settings
        question, input_ids, visual_count, budget = self._render(question, media, history, settings)
        if visual_tokens is not None and (media is None or len(visual_tokens) != visual_count):
            raise InvalidInputError(
                f"visual_tokens has {len(visual_tokens)} rows; the prompt has {visual_count} visual positions."
            )
        if visual_tokens is None and media is not None:
            visual_tokens = self.visual_output(media, question).tokens
        return GenerationRequest(input_ids, visual_tokens, settings, question, media, budget)

    def build_requests(
        self,
        questions: Sequence[str],
        media: PreparedMedia | None = None,
        history: Sequence[tuple[str, str]] = (),
        settings: SamplingSettings | None = None,
    ) -> list[GenerationRequest]:
        """`build_request` for several questions about the same media, their visual tokens in one pass
        (`visual_tokens_many`). Every prompt is checked (empty question, context budget) before that pass.

        Raises:
            InvalidInputError / ContextBudgetError: as `build_request`, for the first question that fails.
        """
        settings = settings or self.default_settings
        rendered = [self._render(question, media, history, settings) for question in questions]
        stripped = [question for question, *_ in rendered]
        tokens = [None] * len(rendered) if media is None else self.visual_tokens_many(media, stripped)
        return [
            GenerationRequest(input_ids, visual, settings, question, media, budget)
            for (question, input_ids, _, budget), visual in zip(rendered, tokens, strict=True)
        ]

    def _render(
        self,
        question: str,
        media: PreparedMedia | None,
        history: Sequence[tuple[str, str]],
        settings: SamplingSettings,
    ) -> tuple[str, list[int], int, Budget]:
        """Check `question`, render its prompt and check the context budget: ``(question stripped, prompt ids,
        visual positions, budget)``. Nothing visual is computed yet."""
        from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN

        question = question.strip()
        if not question:
            raise InvalidInputError("the question is empty; type a question about the media.")
        if DEFAULT_IMAGE_TOKEN in question:
            raise InvalidInputError(
                f"the question contains {DEFAULT_IMAGE_TOKEN!r}; the media is inserted automatically."
            )
        frames = 0 if media is None else media.num_frames
        per_frame = None if media is None else media.subtitles
        prompt = self.processor.apply_chat_template(self._messages(question, frames, per_frame, history))
        is_image = media is not None and media.is_image
        input_ids, visual_count = self._prompt_ids(prompt, frames, is_image, per_frame is not None)
        budget = self._budget(len(input_ids), visual_count, settings)
        logger.info("prompt: %s", budget.describe())
        return question, input_ids, visual_count, budget

    def build_prompt_request(
        self,
        prompt: str,
        media: PreparedMedia | Sequence[PreparedMedia] | None,
        question: str,
        settings: SamplingSettings | None = None,
    ) -> GenerationRequest:
        """A request from a prompt already rendered in the chat template, with ``<image>`` where media goes
        (evaluation harnesses that build their own conversations).

        With one media item every ``<image>`` shows it (several turns may each show it); with several, the i-th
        ``<image>`` shows the i-th item. Media with subtitles use the long-video layout (one ``<image>`` per
        frame). Context tokens follow `question` for every placeholder.
        """
        from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN

        settings = settings or self.default_settings
        items = [] if media is None else [media] if isinstance(media, PreparedMedia) else list(media)
        placeholders = prompt.count(DEFAULT_IMAGE_TOKEN)
        if len(items) == 1 and items[0].subtitles is not None:
            shown, per_frame = [0], True
        elif len(items) == 1:
            shown, per_frame = [0] * placeholders, False
        else:
            shown, per_frame = list(range(len(items))), False
        lengths: list[int] = []
        for index in shown:
            item = items[index]
            lengths += self.processor.visual_block_lengths(
                item.num_frames, is_image=item.is_image, per_frame=per_frame
            )
        input_ids = self.processor.tokenize_prompt(
            prompt, lengths
        )  # raises when placeholders and media differ
        budget = self._budget(len(input_ids), sum(lengths), settings)
        visual_tokens = None
        if items:
            tokens = [self.visual_output(item, question.strip()).tokens for item in items]
            visual_tokens = torch.cat([tokens[index] for index in shown])
        return GenerationRequest(
            input_ids, visual_tokens, settings, question, items[0] if len(items) == 1 else None, budget
        )

    # Generation ----------------------------------------------------------------------------------------------
    def _generation_config(self, settings: SamplingSettings, max_new_tokens: int) -> Any:
        """The checkpoint's generation config with this request's sampling on top."""
        base = getattr(self.model, "generation_config", None)
        if base is None:
            from transformers import GenerationConfig

            base = GenerationConfig()
        config = copy.deepcopy(base)
        tokenizer = self.processor.tokenizer
        config.update(
            do_sample=settings.do_sample,
            temperature=settings.temperature if settings.do_sample else None,
            top_p=settings.top_p if settings.do_sample else None,
            top_k=None if settings.do_sample else config.top_k,
            max_new_tokens=max_new_tokens,
            max_length=None,
            pad_token_id=self.processor.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        return config

    def answer_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_delta: DeltaCallback | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[Answer]:
        """Answer several requests in one left-padded batch on the device: the one path to the model's
        ``generate``, which every interface reaches.

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
            raise InvalidInputError(
                f"requests in one batch must sample the same way, got {sorted(map(str, keys))}."
            )
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
        tracker = RowTracker(
            self.processor.decode, {int(eos)} if eos is not None else set(), limits, on_delta, is_cancelled
        )
        generation_config = self._generation_config(settings, max(limits))
        started = time.perf_counter()
        with self._lock, torch.no_grad():
            if settings.seed is not None and settings.do_sample:
                torch.manual_seed(settings.seed)
            self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                visual_tokens=visual,
                generation_config=generation_config,
                streamer=make_streamer(tracker),
                stopping_criteria=[make_stopper(tracker)],
            )
        seconds = time.perf_counter() - started
        return [
            Answer(
                text=self.processor.decode(tracker.tokens[row]),
                finish_reason=tracker.finish[row] or "length",
                prompt_tokens=len(request.input_ids),
                visual_tokens=request.num_visual_tokens,
                completion_tokens=len(tracker.tokens[row]),
                frames=0 if request.media is None else request.media.num_frames,
                seconds=seconds,
                question=request.question,
                token_ids=list(tracker.tokens[row]),
            )
            for row, request in enumerate(requests)
        ]

    def answer(self, request: GenerationRequest, on_delta: DeltaCallback | None = None) -> Answer:
        """Answer one request (`answer_batch` with a batch of one)."""
        return self.answer_batch([request], on_delta=on_delta)[0]

    def generate(self, requests: Sequence[GenerationRequest], **kwargs: Any) -> list[Answer]:
        """Deprecated name of `answer_batch` (kept for one release)."""
        import warnings

        warnings.warn("Engine.generate is now Engine.answer_batch.", DeprecationWarning, stacklevel=2)
        return self.answer_batch(requests, **kwargs)

    # Conveniences over load_media + build_request + answer_batch -------------------------------------------------
    def settings(self, **overrides: Any) -> SamplingSettings:
        """The default settings with the non-None `overrides` (temperature, top_p, max_new_tokens, seed)."""
        return self.default_settings.updated(**overrides)

    def _admit(
        self, question: str, history: Sequence[tuple[str, str]], settings: SamplingSettings
    ) -> Callable[[int, bool], None]:
        def admit(frames: int, is_image: bool) -> None:
            self.check_budget(question.strip() or "?", frames, is_image, history, settings)

        return admit

    def prepare_question(
        self,
        media: Any,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        settings: SamplingSettings | None = None,
        **media_options: Any,
    ) -> GenerationRequest:
        """Load `media` (refusing an over-budget request before decoding) and build the request for `question`."""
        settings = settings or self.default_settings
        prepared = None
        try:
            if media is not None:
                prepared = self.load_media(
                    media, admit=self._admit(question, history, settings), **media_options
                )
            return self.build_request(question, prepared, history, settings)
        except ContextBudgetError as error:
            raise _naming_files(error, media, media_options.get("subtitles")) from None

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
        settings = self.settings(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        request = self.prepare_question(media, question, settings=settings, **media_options)
        callback = None if on_delta is None else (lambda row, text: on_delta(text))
        return self.answer(request, on_delta=callback)

    def stream(self, media: Any, question: str, **options: Any) -> TextStream:
        """Like `ask`, but returns an iterator over answer pieces; `.answer` holds the `Answer` afterwards."""
        media_options = pop_media_options(options)
        request = self.prepare_question(media, question, settings=self.settings(**options), **media_options)
        return TextStream(self, request)

    def ask_many(
        self,
        items: Sequence[tuple[Any, str]],
        *,
        batch_size: int = 8,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        **media_options: Any,
    ) -> list[Answer]:
        """Answer ``[(media, question), ...]`` in left-padded batches of `batch_size` on the device.

        Media given more than once by the same path (or object) is decoded and encoded once, and the visual
        tokens of all its questions come from one Q-Former pass (`build_requests`).
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}.")
        settings = self.settings(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        groups: dict[Any, tuple[Any, list[int]]] = {}  # media key -> (media, indices of its questions)
        for index, (media, _) in enumerate(items):
            key = media if isinstance(media, (str, os.PathLike)) else id(media)
            groups.setdefault(key, (media, []))[1].append(index)
        requests: list[GenerationRequest | None] = [None] * len(items)
        for media, indices in groups.values():
            prepared = None if media is None else self.load_media(media, **media_options)
            built = self.build_requests([items[i][1] for i in indices], prepared, settings=settings)
            for index, request in zip(indices, built, strict=True):
                requests[index] = request
        answers: list[Answer] = []
        ready = [request for request in requests if request is not None]
        for start in range(0, len(ready), batch_size):
            answers += self.answer_batch(ready[start : start + batch_size])
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

    def chat(self, media: Any = None, **options: Any) -> Any:
        """Start a multi-turn conversation about one media item (features computed once, here)."""
        from llamavid.inference.session import ChatSession

        media_options = pop_media_options(options)
        settings = self.settings(**options)
        prepared = None
        if media is not None:
            try:
                prepared = self.load_media(media, admit=self._admit("?", (), settings), **media_options)
            except ContextBudgetError as error:
                raise _naming_files(error, media, media_options.get("subtitles")) from None
        return ChatSession(self, prepared, settings)


def _naming_files(error: ContextBudgetError, media: Any, subtitles: Any) -> ContextBudgetError:
    """The refusal prefixed with the media and subtitle files it is about (their size is usually the cause)."""
    names = [os.fspath(media)] if isinstance(media, (str, os.PathLike)) else []
    subtitle_file = getattr(subtitles, "path", subtitles)  # a SubtitleTrack or a path
    if isinstance(subtitle_file, (str, os.PathLike)):
        names.append(f"the subtitles {os.fspath(subtitle_file)}")
    return ContextBudgetError(f"{' with '.join(names)}: {error}") if names else error


__all__ += ["default_model_path", "pop_media_options"]
