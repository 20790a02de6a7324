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
"""

from __future__ import annotations

import logging
import math
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
    if kwargs.get("subtitles") is not None:
        raise InvalidInputError(
            "mm_processor_kwargs.subtitles is not supported by the vLLM backend yet (the long-video layout); "
            "ask `llamavid serve` for videos with subtitles."
        )
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
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        text = kwargs.pop(PROMPT_KEY, None)
        if not isinstance(text, str):
            text = self._prompt_text(inputs.prompt)  # a prompt given as token ids
        question = processor.default_question(text)
        marker = self.info.marker_id
        ids = [marker if token == IMAGE_TOKEN_INDEX else token for token in processor.tokenize_prompt(text)]
        kwargs[QUESTION_KEY] = question
        return super().apply(replace(inputs, prompt=ids, hf_processor_mm_kwargs=kwargs), timing_ctx)

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
        info = self.info
        key = info.feature_cache.make_key(
            "", info.encoder_identity, fps=fps, max_frames=max_frames, video_sha256=item.sha256
        )
        entry, _ = info.feature_cache.lookup(key, verify_checksums=False)
        if entry is not None:
            return int(entry.num_frames)
        assert isinstance(item.data, bytes)
        return len(decode_bytes(item.data, fps=fps, max_frames=max_frames))

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
                return PromptUpdateDetails.select_token_id([marker] * length, marker)

            return replacement

        return [
            PromptReplacement(modality=modality, target=[marker], replacement=replacement_for(modality))
            for modality in ("image", "video")
        ]
