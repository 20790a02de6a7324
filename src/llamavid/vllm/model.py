"""LLaMA-VID as a vLLM model: llamavid's vision side in front of vLLM's own Llama.

Each request's visual tokens are computed in `embed_multimodal` from

1. the EVA features of its media: for an encoded video, the feature cache entry (`llamavid.data.FeatureCache`,
   keyed by the file's content hash, the sampling, the vision weights and the preprocessing), encoded once on a
   miss and read back by every later request, in this server or in any llamavid command; for images and frame
   arrays, encoded in the request and rounded through fp16 as `Engine` does, so every path gives the same tokens;
2. the request's question (the processor tokenised it with the Q-Former tokenizer), through
   `LlamaVidModel.get_visual_tokens`: the context token of every frame, interleaved with its content tokens.

vLLM's encoder cache then holds these tokens under a hash that includes the question (`llamavid.vllm.processing`),
so it only ever serves them back to the same question about the same media.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from llamavid.errors import InvalidInputError, LlamaVidRuntimeError
from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN
from llamavid.model.modeling_llamavid import LlamaVidModel
from llamavid.vllm.processing import (
    FIELD_NAMES,
    LlamaVidDummyInputsBuilder,
    LlamaVidMultiModalProcessor,
    LlamaVidProcessingInfo,
)

# Under vLLM's logger tree, so the lines appear in `vllm serve`'s log like vLLM's own.
logger = init_logger("vllm.plugins.llamavid")

__all__ = ["SUPPORTED_TEXT_MODELS", "LlamaVidForConditionalGeneration", "build_vision_side"]

# LLM families whose vLLM implementation takes a LLaMA-VID text_config as it is.
SUPPORTED_TEXT_MODELS = {"llama": "LlamaForCausalLM"}


def build_vision_side(config: Any, device: torch.device | str) -> LlamaVidModel:
    """`LlamaVidModel` without its LLM (vLLM runs the LLM), with uninitialised weights on `device`.

    Built on the meta device first, so the released 7B/13B LLM is never allocated a second time.
    """
    with torch.device("meta"):
        core = LlamaVidModel(config)
    del core.language_model
    core.to_empty(device=device)
    # Non-persistent buffers are not in the checkpoint: restore their values after `to_empty`.
    for module in core.modules():
        position_ids = getattr(module, "position_ids", None)
        if isinstance(position_ids, torch.Tensor) and not isinstance(position_ids, nn.Parameter):
            position_ids.copy_(torch.arange(position_ids.shape[-1], device=device).expand_as(position_ids))
    return core.eval()


def _item_rows(kwargs: Mapping[str, Any], modality: str) -> list[dict[str, torch.Tensor]]:
    """The batched per-item fields of one modality as one dict per item (stacked tensors or lists)."""
    columns = {name: kwargs[f"{modality}_{name}"] for name in FIELD_NAMES}
    count = len(columns["frame_count"])
    return [{name: column[index] for name, column in columns.items()} for index in range(count)]


@MULTIMODAL_REGISTRY.register_processor(
    LlamaVidMultiModalProcessor, info=LlamaVidProcessingInfo, dummy_inputs=LlamaVidDummyInputsBuilder
)
class LlamaVidForConditionalGeneration(nn.Module, SupportsMultiModal):
    """LLaMA-VID for vLLM: `visual` is llamavid's `LlamaVidModel` minus its LLM, `language_model` vLLM's Llama."""

    language_model: Any  # vLLM's LlamaForCausalLM
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.": "visual.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality in ("image", "video"):
            return DEFAULT_IMAGE_TOKEN  # LLaMA-VID marks images and clips alike
        raise InvalidInputError(f"LLaMA-VID reads images and videos, not {modality!r}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        text_type = config.text_config.model_type
        if text_type not in SUPPORTED_TEXT_MODELS:
            raise InvalidInputError(
                f"this LLaMA-VID checkpoint's LLM is {text_type!r}; the vLLM backend supports "
                f"{sorted(SUPPORTED_TEXT_MODELS)}. Serve it with `llamavid serve` instead."
            )
        self.config = config
        self.model_path = vllm_config.model_config.model
        device = vllm_config.device_config.device
        # (mypy without vLLM installed sees these SupportsMultiModal helpers as nn.Module attributes)
        with self._mark_tower_model(vllm_config, {"image", "video"}):  # type: ignore[operator]
            self.visual = build_vision_side(config, device if device is not None else "cpu")
        with self._mark_language_model(vllm_config):  # type: ignore[operator]
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[SUPPORTED_TEXT_MODELS[text_type]],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        self._frame_encoder: Any = None
        self._feature_cache: Any = None

    # Features ------------------------------------------------------------------------------------------------
    @property
    def frame_encoder(self) -> Any:
        """llamavid's feature-cache encoder over `visual`, with the cache key `llamavid ask` uses."""
        if self._frame_encoder is None:
            from llamavid.data.feature_cache import checkpoint_sha256
            from llamavid.inference.media import FrameEncoder
            from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor

            image_processor = LlamaVidImageProcessor.from_pretrained(self.model_path)
            encoder_id = checkpoint_sha256(self.model_path, "model.vision_tower.")
            self._frame_encoder = FrameEncoder(
                self.visual, SimpleNamespace(image_processor=image_processor), encoder_id
            )
        return self._frame_encoder

    @property
    def feature_cache(self) -> Any:
        if self._feature_cache is None:
            from llamavid.data import FeatureCache

            self._feature_cache = FeatureCache()
        return self._feature_cache

    def _video_features(self, row: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """EVA features of an encoded video from the feature cache, ingesting it (one encoding) on a miss."""
        sha256 = bytes(row["content_sha256"].tolist()).hex()
        fps_value, max_frames_value = row["sampling"].tolist()
        fps = None if math.isnan(fps_value) else float(fps_value)
        max_frames = int(max_frames_value) or None
        cache, encoder = self.feature_cache, self.frame_encoder
        key = cache.make_key("", encoder, fps=fps, max_frames=max_frames, video_sha256=sha256)
        entry, reason = cache.lookup(key, verify_checksums=False)
        if entry is None:
            data = row["video_bytes"]
            if not data.numel():
                raise LlamaVidRuntimeError(
                    f"feature cache entry {key.digest} is gone and no video bytes were sent."
                )
            calls = encoder.calls
            cache.root.mkdir(parents=True, exist_ok=True)
            handle, path = tempfile.mkstemp(prefix=".vllm-video-", dir=cache.root)
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data.cpu().numpy().tobytes())
                with torch.no_grad():
                    entry = cache.ingest(path, encoder, fps=fps, max_frames=max_frames).entry
            finally:
                os.unlink(path)
            logger.info(
                "llamavid: encoded %d frames of video %s (%d encoder calls; cache miss: %s)",
                entry.num_frames,
                sha256[:16],
                encoder.calls - calls,
                reason,
            )
        return entry.load_features()

    def _visual_tokens(self, row: Mapping[str, torch.Tensor], is_image: bool) -> torch.Tensor:
        """``(T * (1 + n), D)`` visual tokens of one item for its request's question."""
        from llamavid.inference.media import canonical_features

        parameter = next(self.visual.parameters())
        device, dtype = parameter.device, parameter.dtype
        pixels = row["pixel_values"]
        with torch.no_grad():
            if pixels.numel():
                features = canonical_features(self.visual.get_vision_features(pixels.to(device, dtype)))
            else:
                features = self._video_features(row).to(device, dtype)
            frames = int(row["frame_count"])
            if features.shape[0] != frames:
                raise LlamaVidRuntimeError(
                    f"the media has {features.shape[0]} frames but its prompt was laid out for {frames}."
                )
            zero = torch.zeros(1, dtype=torch.long)
            visual = self.visual.get_visual_tokens(
                features,
                torch.tensor([frames]),
                row["qformer_input_ids"].reshape(1, -1).long(),
                row["qformer_attention_mask"].reshape(1, -1).long(),
                zero,
                zero,
                media_is_image=torch.tensor([is_image]),
                from_pixels=True,
            )
        assert visual.tokens is not None
        return visual.tokens

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        tokens: list[torch.Tensor] = []
        for modality in ("image", "video"):
            if f"{modality}_frame_count" in kwargs:
                tokens += [
                    self._visual_tokens(row, modality == "image") for row in _item_rows(kwargs, modality)
                ]
        return tokens

    # LLM -----------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self)
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)
