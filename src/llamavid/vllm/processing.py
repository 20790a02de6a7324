"""vLLM's multimodal processor for LLaMA-VID: prompt layout, media sampling and the question behind the context token.

What vLLM gives the processor is the rendered chat prompt already tokenised as one string. LLaMA-VID tokenises a
prompt chunk by chunk between ``<image>`` markers (docs/architecture.md, section 3), so the processor decodes the
ids back to the prompt text and lets `LlamaVidProcessor.tokenize_prompt` lay it out again, with one marker id per
``<image>``; vLLM then expands each marker into the item's visual positions (`visual_block_lengths`).

The context tokens depend on the question (the last user turn), which vLLM's multimodal hashes know nothing
about: they key the processor cache, the encoder cache and prefix caching by the media and its
``mm_processor_kwargs`` only. `apply` therefore adds the question to those kwargs under `QUESTION_KEY`, which makes
it part of every hash: a second question about the same video gets its own context tokens, while the EVA features
behind them come from the feature cache (`llamavid.vllm.model`).

Subtitles (``mm_processor_kwargs.subtitles``, accepted as `llamavid serve` accepts them) switch a video to the
long-video layout: `LlamaVidProcessor.long_video_prompt` rewrites the prompt with one ``<image>`` per frame and
its subtitle, and the span from the first frame's tokens to the last one's (subtitle tokens included) becomes
the video's placeholder, with only the visual positions taking embeddings.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from llamavid.errors import InvalidInputError
from llamavid.model.configuration_llamavid import IMAGE_TOKEN_INDEX, LlamaVidConfig
from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN
from llamavid.model.processing_llamavid import LlamaVidProcessor
from llamavid.vllm.media import MediaItem, decode_bytes, media_item
from llamavid.vllm.renderer import PROMPT_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCK_KEY",
    "MEDIA_KWARGS",
    "QUESTION_KEY",
    "LlamaVidDummyInputsBuilder",
    "LlamaVidMultiModalProcessor",
    "LlamaVidProcessingInfo",
]

# The request's question, added to mm_processor_kwargs by the processor so that vLLM hashes it with the media.
QUESTION_KEY = "llamavid_question"
# Per-request media options, the names `llamavid serve` uses.
MEDIA_KWARGS = ("fps", "max_frames", "subtitles")
# With subtitles: the video's token span in the movie layout (llamavid ids, IMAGE_TOKEN_INDEX at visual
# positions), set by the processor in place of the subtitles, so that vLLM's hashes cover the texts themselves.
BLOCK_KEY = "llamavid_movie_block"
# Sampled timestamps and durations of recently seen videos, so one request decodes its video at most once.
TIMING_CACHE_SIZE = 64
# Fields of one processed item; each is stored as f"{modality}_{name}".
FIELD_NAMES = (
    "pixel_values",
    "video_bytes",
    "content_sha256",
    "frame_count",
    "sampling",
    "qformer_input_ids",
    "qformer_attention_mask",
)


class LlamaVidProcessingInfo(BaseProcessingInfo):
    """What the processor needs to know about a llamavid folder (tokenizers, layout, feature cache)."""

    def get_hf_config(self) -> LlamaVidConfig:
        return self.ctx.get_hf_config(LlamaVidConfig)

    @cached_property
    def llamavid_processor(self) -> LlamaVidProcessor:
        return LlamaVidProcessor.from_pretrained(self.ctx.model_config.model)

    def get_hf_processor(self, **kwargs: object) -> Any:
        return self.llamavid_processor

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        # One media item per conversation, as `llamavid ask|chat|serve` (the official demo shows one).
        return {"image": 1, "video": 1}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}  # our kwargs are flat (fps, max_frames, subtitles) and read by the processor itself

    @property
    def marker_id(self) -> int:
        """The in-vocabulary id that stands at every visual position (its embedding is replaced)."""
        return self.llamavid_processor.pad_token_id

    def max_video_frames(self, seq_len: int) -> int:
        """Most frames one clip can show within `seq_len` positions (leaving one for the question)."""
        return max(1, (seq_len - 1) // self.llamavid_processor.video_tokens_per_frame)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        processor = self.llamavid_processor
        return {
            "image": processor.image_tokens_per_frame,
            "video": self.max_video_frames(seq_len) * processor.video_tokens_per_frame,
        }

    @cached_property
    def feature_cache(self) -> Any:
        """The feature cache at its default root (``$LLAMAVID_CACHE``), shared with every llamavid command."""
        from llamavid.data import FeatureCache

        return FeatureCache()

    @cached_property
    def video_timings(self) -> OrderedDict[tuple[str, float | None, int | None], tuple[np.ndarray, float]]:
        """``(sha256, fps, max_frames)`` -> (sampled timestamps, duration) of recent videos (an LRU)."""
        return OrderedDict()

    def video_timing(
        self, item: MediaItem, fps: float | None, max_frames: int | None
    ) -> tuple[np.ndarray, float]:
        """Timestamps and duration of the frames llamavid samples from an encoded video.

        From the feature cache entry when the video was encoded before (as `Engine.media_from_entry` reads them),
        else by decoding it with llamavid's decoder.
        """
        key = (item.sha256, fps, max_frames)
        timings = self.video_timings
        if key in timings:
            timings.move_to_end(key)
            return timings[key]
        cache_key = self.feature_cache.make_key(
            "", self.encoder_identity, fps=fps, max_frames=max_frames, video_sha256=item.sha256
        )
        entry, _ = self.feature_cache.lookup(cache_key, verify_checksums=False)
        if entry is not None:
            timestamps = np.asarray(entry.timestamps, dtype=np.float64)
            duration = float(entry.meta.get("duration") or (timestamps[-1] if len(timestamps) else 0.0))
        else:
            assert isinstance(item.data, bytes)
            frames = decode_bytes(item.data, fps=fps, max_frames=max_frames)
            timestamps = np.asarray(frames.timestamps, dtype=np.float64)
            duration = float(frames.duration)
        timings[key] = (timestamps, duration)
        while len(timings) > TIMING_CACHE_SIZE:
            timings.popitem(last=False)
        return timestamps, duration

    @cached_property
    def encoder_identity(self) -> SimpleNamespace:
        """``encoder_id`` / ``preprocessing_id`` of the feature-cache key, as `llamavid ask` computes them."""
        from llamavid.data.feature_cache import checkpoint_sha256, preprocessing_id

        encoder_id = checkpoint_sha256(self.ctx.model_config.model, "model.vision_tower.")
        return SimpleNamespace(
            encoder_id=encoder_id,
            preprocessing_id=preprocessing_id(self.llamavid_processor.image_processor),
        )


class LlamaVidDummyInputsBuilder(BaseDummyInputsBuilder[LlamaVidProcessingInfo]):
    """Largest inputs for vLLM's memory profiling: a blank image, or a blank clip that fills the context."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return DEFAULT_IMAGE_TOKEN * sum(mm_counts.values())

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> Any:
        size = cast(Any, self.info.get_hf_config().vision_config).image_size
        options = mm_options or {}
        return {
            "image": self._get_dummy_images(
                width=size, height=size, num_images=mm_counts.get("image", 0), overrides=options.get("image")
            ),
            "video": self._get_dummy_videos(
                width=size,
                height=size,
                num_frames=self.info.max_video_frames(seq_len),
                num_videos=mm_counts.get("video", 0),
                overrides=options.get("video"),
            ),
        }


def _media_options(kwargs: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """``fps`` / ``max_frames`` of a request, checked; defaults: 1 fps (the training rate), no cap."""
    fps = kwargs.get("fps", 1.0)
    max_frames = kwargs.get("max_frames")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0
    ):
        raise InvalidInputError(f"mm_processor_kwargs.fps must be a positive number, got {fps!r}.")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1
    ):
        raise InvalidInputError(
            f"mm_processor_kwargs.max_frames must be a positive integer, got {max_frames!r}."
        )
    return (None if fps is None else float(fps)), max_frames


class LlamaVidMultiModalProcessor(BaseMultiModalProcessor[LlamaVidProcessingInfo]):
    """Prompt layout by `LlamaVidProcessor`, media sampled by llamavid, the question hashed with the media."""

    # Prompt ------------------------------------------------------------------------------------------------
    def _prompt_text(self, prompt_ids: Sequence[int]) -> str:
        """The rendered prompt behind token ids (its leading BOS is added back by `tokenize_prompt`).

        Only for prompts that reach the processor without their text (`llamavid.vllm.renderer` passes it for text
        and chat prompts): exact for byte-level tokenizers (LLaMA/Vicuna), lossy for word-level ones.
        """
        tokenizer = self.info.llamavid_processor.tokenizer
        ids = list(prompt_ids)
        if ids and ids[0] == tokenizer.bos_token_id:
            ids = ids[1:]
        text = str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
        if list(tokenizer(text, add_special_tokens=False)["input_ids"]) != ids:
            logger.warning(
                "the prompt does not survive decode/encode; its layout may differ from llamavid's."
            )
        return text

    def apply(self, inputs: Any, timing_ctx: Any) -> Any:
        items = sum(len(values) for values in inputs.mm_data_items.values())
        if items > 1:
            raise InvalidInputError(
                f"the request holds {items} images/videos; LLaMA-VID answers about one per conversation."
            )
        processor = self.info.llamavid_processor
        # The server's --mm-processor-kwargs (defaults; `llamavid serve --backend vllm` sets fps and max_frames
        # there) under the request's own; hashed merged, so a default change never reuses old entries.
        kwargs = dict(self.info.ctx.get_merged_mm_kwargs(dict(inputs.hf_processor_mm_kwargs)))
        self._check_limits(kwargs)
        text = kwargs.pop(PROMPT_KEY, None)
        if not isinstance(text, str):
            text = self._prompt_text(inputs.prompt)  # a prompt given as token ids
        question = processor.default_question(text)
        marker = self.info.marker_id
        subtitles = kwargs.pop("subtitles", None)
        frame_texts = None
        if subtitles is not None:
            frame_texts = self._frame_texts(subtitles, inputs.mm_data_items, kwargs)
        if frame_texts is None:
            ids = processor.tokenize_prompt(text)
        else:
            # The movie layout: the video's span runs from its first frame's tokens to its last frame's, with
            # the subtitles between them; vLLM's prompt holds one marker there and the span replaces it.
            full = processor.tokenize_prompt(*processor.long_video_prompt(text, frame_texts))
            first = full.index(IMAGE_TOKEN_INDEX)
            last = len(full) - full[::-1].index(IMAGE_TOKEN_INDEX)
            kwargs[BLOCK_KEY] = full[first:last]
            ids = [*full[:first], IMAGE_TOKEN_INDEX, *full[last:]]
        kwargs[QUESTION_KEY] = question
        ids = [marker if token == IMAGE_TOKEN_INDEX else token for token in ids]
        return super().apply(replace(inputs, prompt=ids, hf_processor_mm_kwargs=kwargs), timing_ctx)

    def _check_limits(self, kwargs: Mapping[str, object]) -> None:
        """The server's limits on a request's sampling, as `llamavid serve` checks its --max-fps / --max-frames.

        They are read from the server's own ``--mm-processor-kwargs`` only (never from the request): ``max_fps``,
        and ``max_frames``, which is both the default and the most a request may ask for.
        """
        server = self.info.ctx.get_mm_config().mm_processor_kwargs or {}
        fps, max_frames = _media_options(kwargs)
        max_fps = server.get("max_fps")
        if max_fps is not None and (fps is None or fps > max_fps):
            raise InvalidInputError(
                f"mm_processor_kwargs.fps must be above 0 and at most {max_fps:g} (this server's max_fps), got "
                f"{fps!r}."
            )
        limit = server.get("max_frames")
        if limit is not None and (max_frames is None or max_frames > limit):
            raise InvalidInputError(
                f"mm_processor_kwargs.max_frames must be between 1 and {limit} (this server's max_frames), got "
                f"{max_frames!r}."
            )

    def _frame_texts(
        self, subtitles: object, mm_items: MultiModalDataItems, kwargs: Mapping[str, object]
    ) -> list[str] | None:
        """One subtitle text per sampled frame of the request's video, or None when no cue falls inside it.

        Subtitles are accepted as `llamavid serve` accepts them (`llamavid.vllm.media.read_subtitle_track`) and
        aligned to the frames as `llamavid ask --subtitles` aligns them (`subtitles_for_frames`).
        """
        from llamavid.inference.media import subtitles_for_frames
        from llamavid.vllm.media import read_subtitle_track

        if not isinstance(subtitles, str):
            raise InvalidInputError(
                f"mm_processor_kwargs.subtitles must be a string (SRT/WebVTT text, a data: URL or a file:// "
                f"URL), got {type(subtitles).__name__}."
            )
        videos = mm_items.get("video") if "video" in mm_items else None
        if not videos:
            raise InvalidInputError(
                "mm_processor_kwargs.subtitles was given but no video; add a video_url part (subtitles only "
                "apply to videos)."
            )
        item = media_item(videos.data[0], "video")
        if not isinstance(item.data, bytes):
            raise InvalidInputError(
                "mm_processor_kwargs.subtitles needs the video file (a video_url, or `video_input(path)` "
                "offline), not decoded frames: the frames' timestamps come from the file."
            )
        fps, max_frames = _media_options(kwargs)
        timestamps, duration = self.info.video_timing(item, fps, max_frames)
        track = read_subtitle_track(subtitles, self.info.ctx.model_config.allowed_local_media_path)
        return subtitles_for_frames(timestamps, duration, track, False)

    # Media -------------------------------------------------------------------------------------------------
    def _get_cache_missing_items(
        self, cache: Any, mm_data_items: MultiModalDataItems, mm_hashes: Mapping[str, list[str]]
    ) -> tuple[dict[str, list[bool]], MultiModalDataItems]:
        # As the base class, but the items to process are the raw ones: vLLM's own copy would unwrap
        # `MediaWithBytes` and drop the encoded file that llamavid decodes.
        is_cached = {modality: cache.is_cached(hashes) for modality, hashes in mm_hashes.items()}
        missing = {
            modality: [mm_data_items[modality].data[index] for index, hit in enumerate(hits) if not hit]
            for modality, hits in is_cached.items()
        }
        missing = {modality: items for modality, items in missing.items() if items}
        return is_cached, self.info.parse_mm_data(missing, validate=False)

    def _item_fields(
        self, item: MediaItem, fps: float | None, max_frames: int | None, question: str
    ) -> dict[str, torch.Tensor]:
        """The tensors the model reads for one item (see `FIELD_NAMES`)."""
        processor = self.info.llamavid_processor
        pixels = torch.zeros(0, 3, 1, 1)
        video_bytes = torch.zeros(0, dtype=torch.uint8)
        if isinstance(item.data, bytes):
            frame_count = self._video_frame_count(item, fps, max_frames)
            video_bytes = torch.frombuffer(bytearray(item.data), dtype=torch.uint8)
        else:
            frames = item.data
            if max_frames is not None and len(frames) > max_frames:
                # Uniform sampling over the clip, as `Engine.load_media` caps an array.
                frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
            pixels = processor.image_processor(
                frames[0] if item.is_image else frames, is_video=not item.is_image
            )
            frame_count = len(pixels)
        encoded = processor.qformer_tokenizer(
            question, truncation=True, max_length=processor.qformer_max_length, return_tensors="pt"
        )
        return {
            "pixel_values": pixels,
            "video_bytes": video_bytes,
            "content_sha256": torch.tensor(list(bytes.fromhex(item.sha256)), dtype=torch.uint8),
            "frame_count": torch.tensor(frame_count, dtype=torch.long),
            "sampling": torch.tensor(
                [math.nan if fps is None else fps, 0 if max_frames is None else max_frames],
                dtype=torch.float64,
            ),
            "qformer_input_ids": encoded["input_ids"][0],
            "qformer_attention_mask": encoded["attention_mask"][0],
        }

    def _video_frame_count(self, item: MediaItem, fps: float | None, max_frames: int | None) -> int:
        """Frames llamavid samples from an encoded video: from the feature cache, else by decoding it."""
        return len(self.info.video_timing(item, fps, max_frames)[0])

    def _apply_hf_processor_main(
        self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        fps, max_frames = _media_options(hf_kwargs)
        question = str(hf_kwargs.get(QUESTION_KEY, ""))
        data: dict[str, Any] = {}
        for modality, items in mm_items.items():
            if modality not in ("image", "video"):
                raise InvalidInputError(f"LLaMA-VID reads images and videos, not {modality!r}.")
            rows = [
                self._item_fields(media_item(raw, modality), fps, max_frames, question)
                for raw in items.data  # the raw items keep the encoded bytes (MediaWithBytes)
            ]
            for name in FIELD_NAMES:
                data[f"{modality}_{name}"] = [row[name] for row in rows]
        return BatchFeature(data)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {name: MultiModalFieldConfig.batched(name.split("_", 1)[0]) for name in hf_inputs}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        processor = self.info.llamavid_processor
        marker = self.info.marker_id

        def replacement_for(modality: str) -> Any:
            def replacement(item_idx: int) -> PromptUpdateDetails:
                item = out_mm_kwargs[modality][item_idx]
                assert item is not None
                frames = int(cast(torch.Tensor, item[f"{modality}_frame_count"].data))
                (length,) = processor.visual_block_lengths(frames, is_image=modality == "image")
                block = hf_processor_mm_kwargs.get(BLOCK_KEY)
                if modality == "video" and isinstance(block, list):
                    return _movie_block(block, length, marker)
                return PromptUpdateDetails.select_token_id([marker] * length, marker)

            return replacement

        return [
            PromptReplacement(modality=modality, target=[marker], replacement=replacement_for(modality))
            for modality in ("image", "video")
        ]


def _movie_block(block: list[int], visual_tokens: int, marker: int) -> PromptUpdateDetails:
    """A video's movie-layout span: `marker` at its visual positions (which take the embeddings), text between."""
    is_visual = torch.tensor([token == IMAGE_TOKEN_INDEX for token in block])
    if int(is_visual.sum()) != visual_tokens:
        raise InvalidInputError(
            f"the movie prompt holds {int(is_visual.sum())} visual positions but the video has {visual_tokens} "
            "visual tokens; its subtitles were aligned to other frames."
        )
    full = [marker if token == IMAGE_TOKEN_INDEX else token for token in block]
    return PromptUpdateDetails(full=full, is_embed=lambda _: is_visual)
