"""Configuration of LLaMA-VID (architecture only; run settings live in the training schema).

Defaults reproduce the released ``llama-vid-7b-full-224-video-fps-1`` checkpoint: EVA ViT-g/14 at 224 px
(39 blocks, features taken before any final norm), an InstructBLIP Q-Former on BERT-base with 32 queries,
Vicuna-7B, a ``mlp2x_gelu`` content projector and ``mean`` compression (2 tokens per frame).
"""

from __future__ import annotations

import re
from typing import TypeVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.clip.configuration_clip import CLIPVisionConfig
from transformers.models.instructblip.configuration_instructblip import (
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
)

from llamavid.errors import InvalidInputError, InvalidTypeError

# Placeholder id for one visual token in `input_ids`. It lies outside every vocabulary, so the LLM
# embedding table is never resized; the model swaps these positions for visual tokens before the LLM runs.
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100

BERT_TYPES = (
    "qformer",
    "qformer_pretrain",
    "qformer_pretrain_freeze",
    "qformer_pretrain_freeze_all",
    "raw_bert",
)
_PROJECTOR_RE = re.compile(r"^mlp(\d+)x_gelu$")
_GRID_RE = re.compile(r"^grid:(\d+)$")


def parse_compress_type(value: str | None) -> tuple[str, int]:
    """Return ``(kind, grid)`` for a compression setting; kind is ``"none"``, ``"off"``, ``"mean"`` or ``"grid"``.

    ``"off"`` (no content tokens at all) exists for the paper's context-only ablation.

    Raises:
        ValueError: for anything but ``None``/``"none"``, ``"off"``, ``"mean"`` or ``"grid:g"`` with ``g > 1``.
    """
    if value is None or value == "none":
        return "none", 0
    if value == "off":
        return "off", 0
    if value == "mean":
        return "mean", 1
    match = _GRID_RE.match(value)
    if match and int(match.group(1)) > 1:
        return "grid", int(match.group(1))
    raise InvalidInputError(
        f"compress_type={value!r} is not supported; expected None (all patches), 'mean' (one content token), "
        "'grid:g' with an integer g > 1 (g*g pooled tokens) or 'off' (no content token)."
    )


def parse_bert_type(value: str) -> tuple[str, int | None]:
    """Split a ``bert_type`` such as ``"qformer_pretrain_freeze_all layer:6"`` into (variant, kept layers)."""
    variant, layers = value, None
    if "layer" in value:
        # The official rule: any string containing "layer" keeps the first K layers, K after the last ':'.
        head, _, tail = value.rpartition(":")
        if not tail.isdigit() or int(tail) < 1:
            raise InvalidInputError(f"bert_type={value!r}: expected 'layer:K' with a positive integer K.")
        layers = int(tail)
        variant = head.rsplit("layer", 1)[0].strip(" _-:")
    if "raw" in variant:
        return "raw_bert", layers
    if variant not in BERT_TYPES:
        raise InvalidInputError(
            f"bert_type={value!r} is not supported; expected one of {BERT_TYPES} (optionally + ' layer:K')."
        )
    return variant, layers


def check_text_config(text_config: PreTrainedConfig) -> None:
    """Refuse an LLM config LLaMA-VID cannot wrap, naming its family (docs/llms.md).

    Any decoder-only family transformers builds with `AutoModelForCausalLM` works: its base model (`AutoModel`)
    takes ``inputs_embeds``, which is where the visual tokens go. Encoder-decoder families and multimodal configs
    (whose text model is a nested ``text_config``) cannot be the language model.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    family = getattr(text_config, "model_type", None) or type(text_config).__name__
    if family == "llama_vid":
        raise InvalidInputError("text_config is itself a LLaMA-VID config; give the LLM's config.")
    if getattr(text_config, "is_encoder_decoder", False):
        raise InvalidInputError(
            f"text_config is the encoder-decoder family {family!r}; LLaMA-VID needs a decoder-only causal LM "
            "(e.g. llama, qwen2, qwen3, mistral, phi3)."
        )
    if family in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        # BERT-like encoders are listed as causal LMs too, but only run causally as cross-attention decoders.
        raise InvalidInputError(
            f"text_config is the encoder family {family!r}; LLaMA-VID needs a decoder-only causal LM "
            "(e.g. llama, qwen2, qwen3, mistral, phi3)."
        )
    nested = text_config.get_text_config(decoder=True)
    if nested is not text_config:
        raise InvalidInputError(
            f"text_config is the multimodal family {family!r}; use its language model's config "
            f"({getattr(nested, 'model_type', 'its text_config')!r}) as text_config."
        )
    if family not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or family not in MODEL_MAPPING_NAMES:
        raise InvalidInputError(
            f"text_config has model_type {family!r}, which transformers cannot build as a causal LM "
            "(AutoModelForCausalLM); LLaMA-VID needs a decoder-only LLM family such as llama, qwen2, qwen3, "
            "mistral or phi3."
        )


_Config = TypeVar("_Config", bound=PreTrainedConfig)


def _sub_config(value: object, config_class: type[_Config], name: str) -> _Config:
    if not isinstance(value, config_class):
        raise InvalidTypeError(f"{name} must be a {config_class.__name__}, got {type(value).__name__}.")
    return value


def _square_side(value: object, name: str) -> int:
    # InstructBLIP's vision config also allows (height, width) sizes; `_check_settings` only accepts integers.
    if not isinstance(value, int):
        raise InvalidTypeError(f"vision {name} must be an integer, got {value!r}.")
    return value


@strict
class LlamaVidConfig(PreTrainedConfig):
    r"""Configuration for [`LlamaVidForConditionalGeneration`].

    Args:
        vision_config: the vision tower: EVA ViT-g (an `InstructBlipVisionConfig`, the default; 39 blocks, width
            1408, patch 14) or CLIP ViT (a `CLIPVisionConfig`, ``model_type: "clip_vision_model"``; the official
            CLIP option). Either builds exactly `num_hidden_layers` layers and no final norm: for CLIP that is the
            official ``mm_vision_select_layer`` (-2 on a 24-layer ViT-L -> 23 layers).
        qformer_config: the text decoder (BERT-base Q-Former, `InstructBlipQFormerConfig`, vocab 30523 with
            `[DEC]`). Its `encoder_hidden_size` is forced to `qformer_feature_width`.
        text_config: the LLM (any causal LM config; Llama/Vicuna by default).
        num_query: number of learned Q-Former queries (32 in every release).
        bert_type: text decoder variant: `qformer`, `qformer_pretrain`, `qformer_pretrain_freeze`,
            `qformer_pretrain_freeze_all` or `raw_bert`, optionally followed by `layer:K` to keep K layers. The
            freeze variants only change which modules train (see `LlamaVidForConditionalGeneration.frozen_modules`).
        compress_type: content tokens per video frame: `None` (all N patches), `"mean"` (1 token, released
            video checkpoints) or `"grid:g"` (g*g average-pooled tokens, row-major).
        image_compress_type: the same choice for still images; `"same"` (default, the official behaviour)
            follows `compress_type`. Lets one model keep many content tokens for images and 1 per video frame.
            `"off"` (either setting) drops the content tokens: the paper's context-only ablation.
        context_token: emit the instruction-guided context token (default). `False` is the paper's content-only
            ablation; the text decoder is then unused.
        mm_projector_type: content projector, `linear`, `mlpNx_gelu` or `identity`.
        qformer_sees_cls: the Q-Former cross-attends to the CLS token as well as the patches for pixel inputs
            (official: yes). Context/content tokens always use patches only.
        features_qformer_sees_cls: the same for precomputed frame features that carry CLS. `True` keeps cached
            features numerically identical to pixels; the converted official long-video checkpoint sets `False`
            because its long-video path drops CLS before the Q-Former.
        qformer_input_width: width of the features a Q-Former variant cross-attends to; `None` (default) is the
            vision width. When it differs, a Linear `vlm_att_bert_proj` (vision width -> this width) runs before
            `vlm_att_ln`, which is then this wide: the official layout of a pretrained Q-Former (1408, EVA ViT-g's
            width) on a tower of another width, such as CLIP ViT-L (1024). Not used by `raw_bert`, whose
            projection always maps to its own hidden size.
        frame_chunk_size: frames encoded per chunk by the vision tower and the Q-Former; bounds activation memory
            on long videos and gives identical tokens for any value.
        image_token_index: placeholder id (-200) for visual positions in `input_ids`.
    """

    model_type = "llama_vid"
    sub_configs_defaults = {
        # EVA (InstructBLIP's vision config) unless the dict names another type (`clip_vision_model`).
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="instructblip_vision_model"),
        "qformer_config": SubConfigSpec(
            config_class=InstructBlipQFormerConfig, init_kwargs={"vocab_size": 30523}
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query: int = 32
    bert_type: str = "qformer_pretrain"
    compress_type: str | None = "mean"
    image_compress_type: str | None = "same"
    context_token: bool = True
    mm_projector_type: str = "mlp2x_gelu"
    qformer_sees_cls: bool = True
    features_qformer_sees_cls: bool = True
    qformer_input_width: int | None = None
    frame_chunk_size: int = 64
    image_token_index: int = IMAGE_TOKEN_INDEX
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.qformer_config, dict):
            # BERT-uncased plus the added "[DEC]" token, also when only other fields are given.
            self.qformer_config = {"vocab_size": 30523, **self.qformer_config}
        super().__post_init__(**kwargs)
        # The Q-Former cross-attends to features of this width (the official `att_feat_size`).
        self.qformer.encoder_hidden_size = self.qformer_feature_width
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check_settings()

    def _check_settings(self) -> None:
        """Reject settings the model cannot build with a `ValueError` naming the allowed values."""
        check_text_config(self.text)
        parse_compress_type(self.compress_type)
        if self.image_compress_type != "same":
            parse_compress_type(self.image_compress_type)
        variant, _ = parse_bert_type(self.bert_type)
        _ = self.vision  # raises for a vision config that is neither EVA nor CLIP
        width = self.qformer_input_width
        if width is not None and (not isinstance(width, int) or width < 1):
            raise InvalidInputError(f"qformer_input_width must be a positive integer or None, got {width!r}.")
        if variant == "raw_bert" and width not in (None, self.vision.hidden_size):
            raise InvalidInputError(
                f"qformer_input_width={width} does not apply to bert_type {self.bert_type!r}: raw_bert always "
                "projects the vision features to its own hidden size. Leave it unset."
            )
        if not (
            self.mm_projector_type in ("linear", "identity") or _PROJECTOR_RE.match(self.mm_projector_type)
        ):
            raise InvalidInputError(
                f"mm_projector_type={self.mm_projector_type!r} is not supported; expected 'linear', 'identity' "
                "or 'mlpNx_gelu' (e.g. 'mlp2x_gelu')."
            )
        if self.num_query < 1:
            raise InvalidInputError(f"num_query must be >= 1, got {self.num_query}.")
        if self.frame_chunk_size < 1:
            raise InvalidInputError(f"frame_chunk_size must be >= 1, got {self.frame_chunk_size}.")
        if self.image_token_index >= 0:
            raise InvalidInputError(
                f"image_token_index must be negative (outside the vocabulary), got {self.image_token_index}."
            )
        image_size, patch_size = self.vision.image_size, self.vision.patch_size
        if not isinstance(image_size, int) or not isinstance(patch_size, int):
            raise InvalidInputError(
                f"vision image_size and patch_size must be integers (square frames and patches), got "
                f"{image_size!r} and {patch_size!r}."
            )
        if image_size % patch_size:
            raise InvalidInputError(
                f"vision image_size {image_size} is not a multiple of patch_size {patch_size}."
            )
        for kind in (self.compress_type, self.resolved_image_compress_type):
            name, grid = parse_compress_type(kind)
            if name == "off" and not self.context_token:
                raise InvalidInputError(
                    f"compress_type={kind!r} with context_token=False leaves a frame with no visual token; "
                    "keep the context token or some content tokens."
                )
            side = self.patch_grid_size
            if name == "grid" and grid > side:
                raise InvalidInputError(
                    f"compress_type={kind!r} asks for a {grid}x{grid} grid from {side}x{side} patches."
                )

    # Typed sub-configs --------------------------------------------------------------------------------------
    # The fields accept a dict, a config or None when the config is built; `__post_init__` always leaves a
    # config there. These views say so to type checkers and check it at run time.
    @property
    def vision(self) -> InstructBlipVisionConfig | CLIPVisionConfig:
        """`vision_config`: an `InstructBlipVisionConfig` (EVA) or a `CLIPVisionConfig` after construction."""
        if not isinstance(self.vision_config, InstructBlipVisionConfig | CLIPVisionConfig):
            raise InvalidTypeError(
                "vision_config must be an InstructBlipVisionConfig (EVA) or a CLIPVisionConfig (CLIP), got "
                f"{type(self.vision_config).__name__}."
            )
        return self.vision_config

    @property
    def vision_tower_type(self) -> str:
        """``"clip"`` for a CLIP ViT tower, ``"eva"`` for EVA ViT-g."""
        return "clip" if isinstance(self.vision, CLIPVisionConfig) else "eva"

    @property
    def qformer_feature_width(self) -> int:
        """Width of what a Q-Former variant cross-attends to: `qformer_input_width`, or the vision width."""
        return self.qformer_input_width or self.vision.hidden_size

    @property
    def qformer(self) -> InstructBlipQFormerConfig:
        """`qformer_config` as the `InstructBlipQFormerConfig` it always is after construction."""
        return _sub_config(self.qformer_config, InstructBlipQFormerConfig, "qformer_config")

    @property
    def text(self) -> PreTrainedConfig:
        """`text_config`, the LLM's config (any causal LM's config class)."""
        return _sub_config(self.text_config, PreTrainedConfig, "text_config")

    # Derived sizes ------------------------------------------------------------------------------------------
    @property
    def resolved_image_compress_type(self) -> str | None:
        return self.compress_type if self.image_compress_type == "same" else self.image_compress_type

    @property
    def image_size(self) -> int:
        """S, the side of the square frames the vision tower takes (224 or 336 px)."""
        return _square_side(self.vision.image_size, "image_size")

    @property
    def patch_grid_size(self) -> int:
        """Patches per side (s = S/14: 16 at 224 px, 24 at 336 px)."""
        return self.image_size // _square_side(self.vision.patch_size, "patch_size")

    @property
    def num_patches(self) -> int:
        """N, the number of patch features per frame (256 at 224 px)."""
        return self.patch_grid_size**2

    def content_tokens_per_frame(self, is_image: bool = False) -> int:
        """n, the number of content tokens one frame yields: None -> N, mean -> 1, grid:g -> (s//(s//g))^2."""
        kind, grid = parse_compress_type(
            self.resolved_image_compress_type if is_image else self.compress_type
        )
        if kind == "none":
            return self.num_patches
        if kind == "mean":
            return 1
        if kind == "off":
            return 0
        side = self.patch_grid_size
        return (side // (side // grid)) ** 2

    def tokens_per_frame(self, is_image: bool = False) -> int:
        """1 context token (unless `context_token` is off) + n content tokens."""
        return int(self.context_token) + self.content_tokens_per_frame(is_image)


__all__ = [
    "LlamaVidConfig",
    "IMAGE_TOKEN_INDEX",
    "IGNORE_INDEX",
    "check_text_config",
    "parse_compress_type",
    "parse_bert_type",
]
