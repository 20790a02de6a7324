"""LLaMA-VID: every frame becomes one *context* token and n *content* tokens.

Data flow, top to bottom (dimension letters: F frames in the batch, N patches per frame, C vision width,
Q queries, L instruction length, D LLM width, K visual blocks = (media, question) pairs):

1. EVA ViT-g encodes each frame once: ``(F, 3, S, S) -> (F, 1+N, C)`` (CLS + patches, no final norm).
2. Content tokens, once per frame: pool the patches (``None`` / ``grid:g`` / ``mean``) and project to D.
3. Context tokens, once per (frame, question): the instruction-aware Q-Former turns the question and the
   frame into Q text queries; each query attends over the key-projected patches (softmax, scale 1/sqrt(C)),
   the attended *raw* patches are averaged over queries and projected to D. `LlamaVidModel.context_token` spells
   this out for a batch of (frame, question) pairs; `get_context_tokens` computes the same in frame chunks.
4. Each block's tokens ``[ctx_0, content_0, ctx_1, content_1, ...]`` replace the placeholder ids (-200) in
   ``input_ids``; the LLM reads the result.

docs/architecture.md follows the same flow from the video file to the answer.

The vision tower and the Q-Former are transformers' InstructBLIP modules, whose numerics match the official
EVA / LAVIS code (checked in tests/parity); we only drop the vision ``post_layernorm`` that LLaMA-VID never uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from transformers import AutoModel, BertConfig, BertModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings
from transformers.models.instructblip.modeling_instructblip import (
    InstructBlipEncoder,
    InstructBlipQFormerAttention,
    InstructBlipQFormerEmbeddings,
    InstructBlipQFormerLayer,
    InstructBlipQFormerModel,
    InstructBlipQFormerMultiHeadAttention,
    InstructBlipVisionEmbeddings,
)

from llamavid.errors import InvalidInputError, LlamaVidRuntimeError
from llamavid.model.configuration_llamavid import (
    IGNORE_INDEX,
    LlamaVidConfig,
    parse_bert_type,
    parse_compress_type,
)

# Inputs that only the prefill step needs; `generate` drops them afterwards (the KV cache holds their effect).
VISUAL_INPUT_NAMES = (
    "visual_tokens",
    "pixel_values",
    "vision_features",
    "frame_counts",
    "media_is_image",
    "qformer_input_ids",
    "qformer_attention_mask",
    "block_media",
    "block_question",
)


@dataclass
class LlamaVidVisualOutput(ModelOutput):
    """Visual tokens of every block, flattened in placeholder order, plus what produced the context tokens.

    Attributes:
        tokens: ``(sum_k T_k * (1 + n_k), D)``; block k's frames in time order, each ``[context, content...]``.
        context_tokens: ``(sum_k T_k, D)``, one per (block, frame).
        block_frame_counts: ``(K,)`` frames per block, to split the per-(block, frame) tensors.
        attention_weights: ``(sum_k T_k, Q, N)`` softmax weights of each query over patches (when requested).
        frame_scores: ``(sum_k T_k,)`` unnormalised frame relevance (see `LlamaVidModel.frame_relevance`).
    """

    tokens: Tensor | None = None
    context_tokens: Tensor | None = None
    block_frame_counts: Tensor | None = None
    attention_weights: Tensor | None = None
    frame_scores: Tensor | None = None

    def per_block(self) -> list[dict[str, Tensor]]:
        """Split the attention outputs by block: ``[{"weights": (T_k, Q, N), "scores": (T_k,)}, ...]``."""
        if self.attention_weights is None or self.frame_scores is None or self.block_frame_counts is None:
            raise InvalidInputError("attention maps were not computed; pass output_visual_attentions=True.")
        sizes = self.block_frame_counts.tolist()
        return [
            {"weights": weights, "scores": scores}
            for weights, scores in zip(
                self.attention_weights.split(sizes), self.frame_scores.split(sizes), strict=True
            )
        ]


@dataclass
class LlamaVidCausalLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: object | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    visual: LlamaVidVisualOutput | None = None


def build_mm_projector(projector_type: str, in_features: int, out_features: int) -> nn.Module:
    """Content projector: `linear`, `identity` or `mlpNx_gelu` (N Linear layers with exact GELU)."""
    if projector_type == "identity":
        return nn.Identity()
    if projector_type == "linear":
        return nn.Linear(in_features, out_features)
    depth = int(projector_type[len("mlp") : projector_type.index("x")])
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(depth - 1):
        # Indices 0, 2, 4, ... hold the Linear layers, as in the released `mm_projector.{0,2}` keys.
        layers += [nn.GELU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


class LlamaVidContentPooling(nn.Module):
    """Content tokens before projection: average-pool each frame's raw patches, ``(F, N, C) -> (F, n, C)``.

    `compress_type` is the setting for the frames at hand: ``None``/``"none"`` keeps all N patches, ``"mean"``
    averages them into one token, ``"grid:g"`` averages blocks of the s x s patch grid with kernel = stride =
    s // g (row-major, so (s // (s // g))^2 tokens) and ``"off"`` keeps none. No parameters, so this module adds
    no state_dict keys.
    """

    def forward(self, patches: Tensor, compress_type: str | None) -> Tensor:
        kind, grid = parse_compress_type(compress_type)
        if kind == "none":
            return patches
        if kind == "off":
            return patches[:, :0]
        if kind == "mean":
            return patches.mean(dim=1, keepdim=True)
        frames, num_patches, width = patches.shape
        side = math.isqrt(num_patches)
        stride = side // grid
        grid_map = patches.reshape(frames, side, side, width).permute(0, 3, 1, 2)  # (F, C, s, s)
        pooled = F.avg_pool2d(grid_map, kernel_size=stride, stride=stride, padding=0)
        return pooled.permute(0, 2, 3, 1).flatten(1, 2)  # (F, n, C), row-major


def segment_positions(lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Expand segment lengths into each element's ``(segment, rank within its segment)``.

    Lengths ``[2, 3]`` give segments ``[0, 0, 1, 1, 1]`` and ranks ``[0, 1, 0, 1, 2]``.
    """
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    return segment, torch.arange(len(segment), device=lengths.device) - starts[segment]


@dataclass
class FramePairs:
    """Every (block, frame) pair that gets visual tokens, in placeholder order.

    Block k (one media item with one question) contributes its media's frames in time order, then block k+1
    follows. Each pair gets one context token and its frame's content tokens.

    Attributes:
        frame: ``(pairs,)`` index of the pair's frame among all frames of the batch.
        question: ``(pairs,)`` index of the pair's question.
        block_frame_counts: ``(K,)`` frames (hence pairs) per block.
    """

    frame: Tensor
    question: Tensor
    block_frame_counts: Tensor


def index_frame_pairs(frame_counts: Tensor, block_media: Tensor, block_question: Tensor) -> FramePairs:
    """List the (block, frame) pairs of a batch, in placeholder order, without Python loops.

    Args:
        frame_counts: ``(M,)`` frames of each media item; media are stored one after another.
        block_media / block_question: ``(K,)`` media and question of each block.
    """
    media_start = torch.cumsum(frame_counts, 0) - frame_counts  # (M,) index of each media item's first frame
    block_frames = frame_counts[block_media]  # (K,)
    pair_block, frame_rank = segment_positions(block_frames)  # (pairs,) each
    return FramePairs(
        frame=media_start[block_media][pair_block] + frame_rank,
        question=block_question[pair_block],
        block_frame_counts=block_frames,
    )


def interleave_visual_tokens(
    context_tokens: Tensor,
    content_table: Tensor,
    content_offsets: Tensor,
    content_counts: Tensor,
    with_context: bool = True,
) -> Tensor:
    """Lay out ``[context, content_1, ..., content_n]`` for each pair, pair after pair, with one gather.

    Args:
        context_tokens: ``(pairs, D)`` one context token per pair (left out when `with_context` is False).
        content_table: ``(rows, D)`` content tokens of every frame (see `LlamaVidModel.get_content_tokens`).
        content_offsets / content_counts: ``(pairs,)`` first row of each pair's content tokens in
            `content_table`, and how many there are.
        with_context: put the context token first in each pair's run (False: content-only model).

    Returns:
        ``(sum_p (1 + n_p), D)``, or ``(sum_p n_p, D)`` without context tokens.
    """
    first = int(with_context)
    position_pair, rank = segment_positions(first + content_counts)  # rank 0 is the context token
    content_row = content_offsets[position_pair] + rank - first
    source = torch.where(rank < first, position_pair, len(context_tokens) + content_row)
    table = torch.cat([context_tokens, content_table.to(context_tokens.dtype)])
    return table[source]


class FrameSlots:
    """Pairs of consecutive frames laid out frame by frame, so per-frame tensors are used without copies.

    The pairs must be sorted by frame. Frame f's pairs take slots ``f * R ... f * R + count_f - 1`` of a
    ``(frames, R)`` grid, where R is the most pairs any of these frames has; a row-wise tensor of the pairs
    ``(pairs, Q, ...)`` becomes ``(frames, R * Q, ...)``, so one batched matmul per frame serves all its questions.
    When every frame has R pairs (one video, every question asked about it) both directions are reshapes.
    """

    def __init__(self, local_frame: Tensor, frames: int):
        counts = torch.bincount(local_frame, minlength=frames)  # (frames,)
        self.frames = frames
        self.per_frame = int(counts.max())
        self.dense = len(local_frame) == frames * self.per_frame
        _, rank = segment_positions(counts)  # rank of each pair among its frame's pairs
        self.slot = local_frame * self.per_frame + rank  # (pairs,)

    def to_frames(self, rows: Tensor) -> Tensor:
        """``(pairs, Q, ...) -> (frames, R * Q, ...)``; empty slots are zeros whose results are never read."""
        if not self.dense:
            grid = rows.new_zeros(self.frames * self.per_frame, *rows.shape[1:])
            rows = grid.index_copy(0, self.slot, rows)
        return rows.reshape(self.frames, -1, *rows.shape[2:])

    def to_pairs(self, grid: Tensor) -> Tensor:
        """``(frames, R * Q, ...) -> (pairs, Q, ...)``, the inverse of `to_frames`."""
        rows = grid.reshape(self.frames * self.per_frame, -1, *grid.shape[2:])
        return rows if self.dense else rows[self.slot]


@dataclass
class QuestionStates:
    """What the Q-Former computes from the questions alone: once per call, shared by every frame.

    Layer 0 attends over queries and question tokens before its first cross-attention, so its self-attention
    output and the question tokens' feed-forward do not depend on the frame.

    Attributes:
        attended: ``(P, Q + L, H)`` layer 0's self-attention output (queries first, then question tokens).
        text: ``(P, L, H)`` question tokens after layer 0; None when layer 0 is the last layer.
        key_mask: ``(P, 1, 1, Q + L)`` True where a self-attention key is a real token.
    """

    attended: Tensor
    text: Tensor | None
    key_mask: Tensor


def qformer_key_values(
    attention: InstructBlipQFormerMultiHeadAttention, states: Tensor
) -> tuple[Tensor, Tensor]:
    """Keys and values of one Q-Former attention over `states`: ``(B, S, H_in) -> 2 x (B, heads, S, d)``."""
    heads = attention.num_attention_heads
    keys = attention.key(states).unflatten(-1, (heads, -1)).transpose(1, 2)
    values = attention.value(states).unflatten(-1, (heads, -1)).transpose(1, 2)
    return keys, values


def qformer_attend(
    block: InstructBlipQFormerAttention, hidden: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None
) -> Tensor:
    """One Q-Former attention block (attention, dense, residual LayerNorm) over given keys and values.

    The same arithmetic as the block's own forward, with keys/values computed by the caller so that a frame's
    cross-attention keys/values serve every question about it. ``hidden (B, S, H)`` attends over
    ``keys, values (B, heads, S_kv, d)``; `mask` ``(B, 1, 1, S_kv)`` is True where a key may be attended.
    """
    attention = block.attention
    query = attention.query(hidden).unflatten(-1, (attention.num_attention_heads, -1)).transpose(1, 2)
    mixed = F.scaled_dot_product_attention(
        query,
        keys,
        values,
        attn_mask=mask,
        dropout_p=attention.attention_dropout if attention.training else 0.0,
        scale=attention.scaling,
    )  # (B, heads, S, d)
    output: Tensor = block.output(mixed.transpose(1, 2).flatten(2), hidden)
    return output


class LlamaVidVisionTower(nn.Module):
    """EVA ViT-g/14 as LLaMA-VID uses it: 39 pre-norm blocks and **no** final norm.

    transformers' InstructBLIP vision model computes the same blocks (fused qkv with a zero key bias) but ends
    in a `post_layernorm`; we keep its embeddings and encoder and stop before that norm.
    """

    def __init__(self, config):
        super().__init__()
        if config._attn_implementation is None:
            # Not a PreTrainedModel, so nothing dispatches an attention backend to this sub-config.
            config._attn_implementation = "sdpa"
        self.config = config
        self.embeddings = InstructBlipVisionEmbeddings(config)
        self.encoder = InstructBlipEncoder(config)

    def forward(self, pixel_values: Tensor) -> Tensor:
        # (F, 3, S, S) -> (F, 1+N, C)
        hidden_states = self.embeddings(pixel_values)
        return self.encoder(inputs_embeds=hidden_states).last_hidden_state


class LlamaVidClipVisionTower(nn.Module):
    """CLIP ViT as the official CLIP option uses it: the hidden state after `num_hidden_layers` layers.

    The official tower takes ``hidden_states[mm_vision_select_layer]`` of transformers' `CLIPVisionModel`: after
    the embeddings' ``pre_layrnorm`` and the selected number of layers, before any ``post_layernorm``. The
    converter builds exactly those layers, so the output is the last hidden state. CLS is kept first (the
    official ``"patch"`` selection drops it; the converted config hides it from the Q-Former instead).
    Parameter names are transformers' CLIP names without the ``vision_model.`` prefix.
    """

    def __init__(self, config):
        super().__init__()
        if config._attn_implementation is None:
            config._attn_implementation = "sdpa"
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)

    def forward(self, pixel_values: Tensor) -> Tensor:
        # (F, 3, S, S) -> (F, 1+N, C)
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))
        return self.encoder(inputs_embeds=hidden_states).last_hidden_state


class LlamaVidRawBertDecoder(nn.Module):
    """`raw_bert` text decoder: a causal BERT with cross-attention in every layer, no queries."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states
        ).last_hidden_state


def llm_embedding_name(language_model: PreTrainedModel, prefix: str = "model.language_model") -> str:
    """Full module name of the LLM's input embedding table (``model.language_model.embed_tokens`` for Llama)."""
    table = language_model.get_input_embeddings()
    for name, module in language_model.named_modules():
        if module is table:
            return f"{prefix}.{name}"
    raise LlamaVidRuntimeError(
        f"{type(language_model).__name__}.get_input_embeddings() is not one of its modules; LLaMA-VID writes the "
        "visual tokens into that table's output and cannot use this LLM."
    )


class LlamaVidPreTrainedModel(PreTrainedModel):
    config_class = LlamaVidConfig
    config: LlamaVidConfig
    base_model_prefix = "model"
    input_modalities = ["image", "video", "text"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = [
        "InstructBlipEncoderLayer",
        "CLIPEncoderLayer",
        "InstructBlipQFormerLayer",
        "LlamaDecoderLayer",
    ]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, InstructBlipVisionEmbeddings):
            nn.init.trunc_normal_(module.position_embedding, std=std)
            nn.init.trunc_normal_(module.class_embedding, std=std)
        elif isinstance(module, CLIPVisionEmbeddings):
            nn.init.trunc_normal_(module.class_embedding, std=std)
            nn.init.trunc_normal_(module.position_embedding.weight, std=std)
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, InstructBlipQFormerEmbeddings):
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, LlamaVidModel) and module.vlm_att_query is not None:
            nn.init.normal_(module.vlm_att_query, std=std)


class LlamaVidModel(LlamaVidPreTrainedModel):
    """Vision tower, text decoder, token generation and the LLM body (no LM head)."""

    def __init__(self, config: LlamaVidConfig):
        super().__init__(config)
        vision_width = config.vision.hidden_size
        llm_width = config.text.hidden_size
        self.bert_variant, kept_layers = parse_bert_type(config.bert_type)

        self.vision_tower: LlamaVidVisionTower | LlamaVidClipVisionTower = (
            LlamaVidClipVisionTower(config.vision)
            if config.vision_tower_type == "clip"
            else LlamaVidVisionTower(config.vision)
        )

        qformer_config = config.qformer
        if kept_layers is not None:
            qformer_config = qformer_config.__class__(
                **{**qformer_config.to_dict(), "num_hidden_layers": kept_layers}
            )
            qformer_config._attn_implementation = config.qformer._attn_implementation
        self.vlm_att_query: nn.Parameter | None = None
        self.vlm_att_ln: nn.LayerNorm | None = None
        self.vlm_att_bert_proj: nn.Linear | None = None
        if self.bert_variant == "raw_bert":
            bert_config = BertConfig(
                vocab_size=qformer_config.vocab_size,
                hidden_size=qformer_config.hidden_size,
                num_hidden_layers=qformer_config.num_hidden_layers,
                num_attention_heads=qformer_config.num_attention_heads,
                intermediate_size=qformer_config.intermediate_size,
                hidden_dropout_prob=qformer_config.hidden_dropout_prob,
                attention_probs_dropout_prob=qformer_config.attention_probs_dropout_prob,
                max_position_embeddings=qformer_config.max_position_embeddings,
                layer_norm_eps=qformer_config.layer_norm_eps,
                pad_token_id=qformer_config.pad_token_id,
                is_decoder=True,
                add_cross_attention=True,
            )
            self.vlm_att_encoder: nn.Module = LlamaVidRawBertDecoder(bert_config)
            # raw BERT cross-attends to patches projected to its own width.
            self.vlm_att_bert_proj = nn.Linear(vision_width, qformer_config.hidden_size)
        else:
            self.vlm_att_encoder = InstructBlipQFormerModel(qformer_config)
            self.vlm_att_query = nn.Parameter(torch.zeros(1, config.num_query, qformer_config.hidden_size))
            feature_width = config.qformer_feature_width  # what the Q-Former's cross-attention reads
            if feature_width != vision_width:
                # A pretrained Q-Former made for another width (1408, EVA ViT-g's) on this tower: the official
                # model maps the vision features to that width first.
                self.vlm_att_bert_proj = nn.Linear(vision_width, feature_width)
            if "pretrain" in self.bert_variant:
                # InstructBLIP's `ln_vision`; torch's default eps (1e-5), as in the official code.
                self.vlm_att_ln = nn.LayerNorm(feature_width)

        self.vlm_att_projector = nn.Linear(qformer_config.hidden_size, vision_width)
        self.vlm_att_key_projector = nn.Linear(vision_width, vision_width)
        self.vlm_att_val_projector = nn.Linear(vision_width, llm_width)
        self.mm_projector = build_mm_projector(config.mm_projector_type, vision_width, llm_width)
        self.content_pooling = LlamaVidContentPooling()
        self.language_model = AutoModel.from_config(config.text)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # 1. Vision ------------------------------------------------------------------------------------------------
    def get_vision_features(self, pixel_values: Tensor) -> Tensor:
        """EVA or CLIP features of every frame, ``(F, 3, S, S) -> (F, 1+N, C)``, in `frame_chunk_size` chunks.

        Gradients flow only when some vision parameter trains (the released recipes keep EVA frozen).
        """
        size = self.config.image_size
        if (
            pixel_values.ndim != 4
            or pixel_values.shape[1] != 3
            or tuple(pixel_values.shape[-2:]) != (size, size)
        ):
            raise InvalidInputError(
                f"pixel_values must have shape (frames, 3, {size}, {size}) for this model, got "
                f"{tuple(pixel_values.shape)}; preprocess media with LlamaVidProcessor of the same checkpoint."
            )
        tower = self.vision_tower
        param = tower.embeddings.patch_embedding.weight
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())
        chunk = self.config.frame_chunk_size
        with torch.set_grad_enabled(trainable):
            features = [
                tower(part.to(device=param.device, dtype=param.dtype)) for part in pixel_values.split(chunk)
            ]
        return torch.cat(features) if len(features) > 1 else features[0]

    def split_vision_features(self, vision_features: Tensor, from_pixels: bool) -> tuple[Tensor, Tensor]:
        """Return ``(patches (F, N, C), qformer_input (F, N or 1+N, C))`` with explicit CLS handling.

        Features with N+1 tokens carry CLS first; N tokens carry none. The count is matched against the
        config exactly instead of the official "odd token count" guess (docs/architecture.md, section 11).
        """
        num_patches = self.config.num_patches
        tokens = vision_features.shape[1]
        if vision_features.ndim != 3 or tokens not in (num_patches, num_patches + 1):
            raise InvalidInputError(
                f"vision features must have shape (frames, {num_patches} or {num_patches + 1}, "
                f"{self.config.vision.hidden_size}) for this model, got {tuple(vision_features.shape)}."
            )
        if tokens == num_patches:
            return vision_features, vision_features
        patches = vision_features[:, 1:]
        sees_cls = self.config.qformer_sees_cls if from_pixels else self.config.features_qformer_sees_cls
        return patches, vision_features if sees_cls else patches

    # 2. Content tokens -----------------------------------------------------------------------------------------
    def pool_patches(self, patches: Tensor, compress_type: str | None) -> Tensor:
        """Content pooling on raw patches, ``(F, N, C) -> (F, n, C)`` (see `LlamaVidContentPooling`)."""
        return self.content_pooling(patches, compress_type)

    def get_content_tokens(self, patches: Tensor, frame_is_image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Content tokens of every frame, computed once and shared by all questions.

        Returns:
            ``(table, offsets, counts)``: ``table`` is ``(sum_f n_f, D)`` and frame f owns rows
            ``offsets[f] : offsets[f] + counts[f]``.
        """
        config = self.config
        kinds = {False: config.compress_type, True: config.resolved_image_compress_type}
        counts = torch.tensor(
            [config.content_tokens_per_frame(is_image=False), config.content_tokens_per_frame(is_image=True)],
            device=patches.device,
        )[frame_is_image.long()]
        if kinds[False] == kinds[True] or frame_is_image.all() or not frame_is_image.any():
            kind = kinds[bool(frame_is_image[0])] if len(frame_is_image) else kinds[False]
            table = self.mm_projector(self.content_pooling(patches, kind)).flatten(0, 1)
            offsets = torch.cumsum(counts, 0) - counts
            return table, offsets, counts
        # Images and video frames pooled differently: one pass per kind, rows stored group by group.
        parts, offsets = [], torch.zeros_like(counts)
        start = 0
        for is_image in (False, True):
            index = torch.nonzero(frame_is_image == is_image).squeeze(1)
            pooled = self.mm_projector(self.content_pooling(patches[index], kinds[is_image]))  # (F_g, n_g, D)
            offsets[index] = start + torch.arange(len(index), device=patches.device) * pooled.shape[1]
            start += pooled.shape[0] * pooled.shape[1]
            parts.append(pooled.flatten(0, 1))
        return torch.cat(parts), offsets, counts

    # 3. Context tokens -----------------------------------------------------------------------------------------
    def text_decoder_input(self, qformer_visual: Tensor) -> Tensor:
        """What the text decoder cross-attends to: ``(b, N', C) -> (b, N', C_q)``, per token.

        `vlm_att_bert_proj` first where there is one (`raw_bert`: to its hidden size; a Q-Former made for another
        width: to that width, `LlamaVidConfig.qformer_input_width`), then `vlm_att_ln` for the pretrained
        Q-Formers, in the official order. Every path to the context tokens goes through here.
        """
        visual = qformer_visual
        if self.vlm_att_bert_proj is not None:
            visual = self.vlm_att_bert_proj(visual)
        if self.vlm_att_ln is not None:
            visual = self.vlm_att_ln(visual)
        return visual

    def text_queries(self, qformer_visual: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Instruction-guided text queries Q_t: ``(b, N', C) x (b, L) -> (b, Q or L, C)``.

        The Q-Former variants return their Q learned queries after they have read the question and
        cross-attended to the frame; `raw_bert` has no learned queries and returns one per question token.
        """
        visual = self.text_decoder_input(qformer_visual)
        if self.bert_variant == "raw_bert":
            hidden = self.vlm_att_encoder(input_ids, attention_mask, visual)
        else:
            if self.vlm_att_query is None:
                raise LlamaVidRuntimeError(
                    "a Q-Former text decoder needs its learned queries (vlm_att_query)."
                )
            queries = self.vlm_att_query.expand(len(input_ids), -1, -1).to(visual.dtype)
            query_mask = torch.ones(
                queries.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device
            )
            hidden = self.vlm_att_encoder(
                input_ids=input_ids,
                attention_mask=torch.cat([query_mask, attention_mask], dim=1),
                query_embeds=queries,
                encoder_hidden_states=visual,
            ).last_hidden_state[:, : queries.shape[1]]
        return self.vlm_att_projector(hidden)

    def context_token(
        self, patches: Tensor, qformer_visual: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """The context token of b (frame, question) pairs, step by step as the paper defines it.

        This is the reference definition; `get_visual_tokens` computes the same tokens in frame chunks, with
        each frame's keys shared by all its questions (tests check both agree).

        Args:
            patches: ``(b, N, C)`` raw patch features (vision tower output) of each pair's frame (no CLS).
            qformer_visual: ``(b, N or 1+N, C)`` what the text decoder reads (see `split_vision_features`).
            input_ids / attention_mask: ``(b, L)`` each pair's question, tokenised for the text decoder.

        Returns:
            ``(b, D)`` one context token per pair, in the LLM's width.
        """
        queries = self.text_queries(qformer_visual, input_ids, attention_mask)  # (b, Q, C)
        keys = self.vlm_att_key_projector(patches)  # (b, N, C)
        scores = queries @ keys.transpose(1, 2) / math.sqrt(patches.shape[-1])  # (b, Q, N)
        weights = scores.softmax(dim=-1)  # each query's attention over the frame's patches
        attended = weights @ patches  # (b, Q, C): a weighted sum of the raw patches, not of projected values
        return self.vlm_att_val_projector(attended.mean(dim=1))  # mean over queries (b, C) -> (b, D)

    def context_attention(self, text_queries: Tensor, keys: Tensor) -> Tensor:
        """Unnormalised attention logits ``(b, Q, C) x (b, N, C) -> (b, Q, N)``, scaled by 1/sqrt(C)."""
        return text_queries @ keys.transpose(-1, -2) / math.sqrt(keys.shape[-1])

    @staticmethod
    def frame_relevance(scores: Tensor) -> Tensor:
        """Per-frame relevance from unnormalised logits ``(b, Q, N) -> (b,)``: mean over queries of logsumexp.

        Each frame's softmax sums to one, so the weights alone cannot rank frames. The log-partition
        ``logsumexp_n s_qn`` grows with how strongly a query matches *some* patch of the frame; averaging it
        over queries gives a score whose softmax over frames ranks them. This definition is ours, not the paper's.
        """
        return torch.logsumexp(scores.float(), dim=-1).mean(dim=-1)

    def get_context_tokens(
        self,
        patches: Tensor,
        qformer_visual: Tensor,
        qformer_input_ids: Tensor,
        qformer_attention_mask: Tensor,
        pairs: FramePairs,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """`context_token` for every (frame, question) pair, with each frame's question-free work done once.

        Pairs are visited frame by frame, about `frame_chunk_size` at a time (all questions of a frame together,
        at most `frame_chunk_size` frames), so activations stay bounded however long the video is. Per frame,
        once: `text_decoder_input` (`vlm_att_bert_proj`, `vlm_att_ln`), the Q-Former's cross-attention
        keys/values in every cross-attention layer and the `vlm_att_key_projector` keys; per question, once per
        call: the Q-Former's layer 0 self-attention (see `QuestionStates`); per pair: the rest. Pairs are
        independent, so the grouping never changes the tokens.
        `raw_bert`, and training with Q-Former dropout, gradient checkpointing or sharded parameters take
        `pairwise_context_tokens` (`_needs_pairwise_qformer`).

        Returns:
            ``(context_tokens (pairs, D), weights (pairs, Q, N) or None, frame scores (pairs,) or None)``.
        """
        if self.vlm_att_query is None or self._needs_pairwise_qformer():
            return self.pairwise_context_tokens(
                patches, qformer_visual, qformer_input_ids, qformer_attention_mask, pairs, output_attentions
            )
        num_queries = self.config.num_query
        # Zeros, not empty: a content-only model never fills these rows, and garbage would poison gradients.
        context = patches.new_zeros(len(pairs.frame), patches.shape[-1])
        weights = (
            patches.new_empty(len(pairs.frame), num_queries, patches.shape[1]) if output_attentions else None
        )
        scores = patches.new_empty(len(pairs.frame), dtype=torch.float32) if output_attentions else None
        if not self.config.context_token or not len(pairs.frame):
            return self.vlm_att_val_projector(context), weights, scores
        questions = self.question_states(qformer_input_ids, qformer_attention_mask, qformer_visual.dtype)
        order = torch.sort(pairs.frame, stable=True).indices  # pairs frame by frame
        sorted_frame = pairs.frame[order]
        counts = torch.bincount(sorted_frame, minlength=patches.shape[0])  # (F,) pairs per frame
        ends = torch.cumsum(counts, 0).tolist()
        chunk = self.config.frame_chunk_size
        step = max(1, chunk // int(counts.max()))  # frames per batch, so a batch holds about `chunk` pairs
        for first in range(0, patches.shape[0], step):
            last = min(first + step, patches.shape[0])
            low, high = ends[first - 1] if first else 0, ends[last - 1]
            if low == high:
                continue
            batch = order[low:high]
            slots = FrameSlots(sorted_frame[low:high] - first, last - first)
            frame_patches = patches[first:last]  # (f, N, C)
            visual = qformer_visual[first:last]  # (f, N', C)
            visual = self.text_decoder_input(visual)  # vlm_att_bert_proj / vlm_att_ln, once per frame
            text_q = self.shared_text_queries(visual, questions, pairs.question[batch], slots)  # (b, Q, C)
            keys = self.vlm_att_key_projector(frame_patches)  # (f, N, C), once per frame
            logits = self.context_attention(slots.to_frames(text_q), keys)  # (f, R * Q, N)
            attention = logits.softmax(dim=-1)
            # Values are the raw patches, not projected; mean over the queries.
            attended = slots.to_pairs(attention @ frame_patches)  # (b, Q, C)
            context[batch] = attended.mean(dim=1).to(context.dtype)
            if weights is not None and scores is not None:
                weights[batch] = slots.to_pairs(attention).to(weights.dtype)
                scores[batch] = self.frame_relevance(slots.to_pairs(logits))
        return self.vlm_att_val_projector(context), weights, scores  # (pairs, D)

    def qformer_layers(self) -> list[InstructBlipQFormerLayer]:
        """The Q-Former's layers, in order (Q-Former text decoders only)."""
        if not isinstance(self.vlm_att_encoder, InstructBlipQFormerModel):
            raise LlamaVidRuntimeError(f"bert_type {self.config.bert_type!r} has no Q-Former layers.")
        return [cast(InstructBlipQFormerLayer, layer) for layer in self.vlm_att_encoder.encoder.layer]

    def _needs_pairwise_qformer(self) -> bool:
        """Whether the Q-Former must run through its layers' own forward (`pairwise_context_tokens`).

        The shared path calls the layers' sub-modules directly, so it cannot do what a layer's forward adds for
        some training set-ups: gradient checkpointing, the parameter gathering of sharded training (FSDP2
        `DTensor` parameters, DeepSpeed ZeRO-3 partitions), and dropout drawn independently for every (frame,
        question) pair (the shared path computes a question's layer-0 rows once for all frames, so they would
        share one dropout mask). A Q-Former that trains without those (the tiny model's phases) shares the frame
        work as inference does; its gradients are those of the pairwise path (tests check it), the last layer's
        question-token feed-forward included (`_touch_unread_weights`).
        """
        layers = self.qformer_layers()
        first = next(layers[0].parameters(), None) if layers else None
        sharded = first is not None and (type(first).__name__ == "DTensor" or hasattr(first, "ds_id"))
        checkpointing = self.training and torch.is_grad_enabled()
        checkpointing = checkpointing and any(layer.gradient_checkpointing for layer in layers)
        return sharded or checkpointing or (self.training and self._qformer_dropout())

    def _qformer_dropout(self) -> bool:
        """Whether any dropout of the Q-Former is active in training mode (attention or hidden states)."""
        for module in self.vlm_att_encoder.modules():
            if isinstance(module, nn.Dropout) and module.p > 0:
                return True
            if isinstance(module, InstructBlipQFormerMultiHeadAttention) and module.attention_dropout > 0:
                return True
        return False

    def _touch_unread_weights(self, hidden: Tensor) -> Tensor:
        """`hidden` plus zero times the last layer's question-token feed-forward weights, when they train.

        The shared path never computes the last layer's question rows (nothing reads them), so those weights
        would get no gradient at all: optimizers would skip their weight decay and distributed data parallel
        would report unused parameters. Through the layer's own forward their gradient is exactly zero; the zero
        product gives them the same zero gradient without computing the rows.
        """
        if not torch.is_grad_enabled():  # inference: nothing to touch, no parameter walk on this hot path
            return hidden
        last = self.qformer_layers()[-1]
        unread = [p for p in (*last.intermediate.parameters(), *last.output.parameters()) if p.requires_grad]
        if not unread:
            return hidden
        return hidden + sum(p.sum() for p in unread) * 0.0

    def question_states(
        self, input_ids: Tensor, attention_mask: Tensor, dtype: torch.dtype
    ) -> QuestionStates:
        """Run the Q-Former up to its first cross-attention for P questions, ``(P, L) -> QuestionStates``."""
        encoder = self.vlm_att_encoder
        if self.vlm_att_query is None or not isinstance(encoder, InstructBlipQFormerModel):
            raise LlamaVidRuntimeError("a Q-Former text decoder needs its learned queries (vlm_att_query).")
        layers = self.qformer_layers()
        queries = self.vlm_att_query.expand(len(input_ids), -1, -1).to(dtype)  # (P, Q, H)
        embedded = encoder.embeddings(input_ids=input_ids, query_embeds=queries)  # (P, Q + L, H)
        query_mask = torch.ones(queries.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        key_mask = torch.cat([query_mask, attention_mask], dim=1).bool()[:, None, None, :]  # (P, 1, 1, Q + L)
        keys, values = qformer_key_values(layers[0].attention.attention, embedded)
        attended = qformer_attend(layers[0].attention, embedded, keys, values, key_mask)  # (P, Q + L, H)
        text = layers[0].feed_forward_chunk(attended[:, queries.shape[1] :]) if len(layers) > 1 else None
        return QuestionStates(attended=attended, text=text, key_mask=key_mask)

    def shared_text_queries(
        self, visual: Tensor, questions: QuestionStates, pair_question: Tensor, slots: FrameSlots
    ) -> Tensor:
        """`text_queries` for the pairs of f consecutive frames, each frame's cross-attention keys/values once.

        Runs the Q-Former layers with their own weights and the arithmetic of their forward: self-attention over
        queries and question tokens, cross-attention of the queries to the frame, then the feed-forwards. The
        last layer's question tokens are never read, so it computes their keys and values only.

        Args:
            visual: ``(f, N', C)`` what the Q-Former reads of each frame, after `text_decoder_input`.
            questions: the questions' frame-independent states (`question_states`).
            pair_question: ``(b,)`` each pair's question; the pairs are sorted by frame as `slots` describes.

        Returns:
            ``(b, Q, C)`` text queries in the vision width.
        """
        layers = self.qformer_layers()
        num_queries = self.config.num_query
        key_mask = questions.key_mask[pair_question]  # (b, 1, 1, Q + L)
        attended = questions.attended[pair_question]  # (b, Q + L, H) layer 0's self-attention
        hidden = attended
        for index, layer in enumerate(layers):
            is_last = index == len(layers) - 1
            if index:
                keys, values = qformer_key_values(layer.attention.attention, hidden)
                rows = hidden[:, :num_queries] if is_last else hidden
                attended = qformer_attend(layer.attention, rows, keys, values, key_mask)
            query_rows = attended[:, :num_queries]  # (b, Q, H)
            if layer.has_cross_attention:
                # (f, heads, N', d) each: computed once per frame, read by all of the frame's questions.
                cross_keys, cross_values = qformer_key_values(layer.crossattention.attention, visual)
                grid = qformer_attend(
                    layer.crossattention, slots.to_frames(query_rows), cross_keys, cross_values, None
                )  # (f, R * Q, H)
                del cross_keys, cross_values  # one layer's frame K/V alive at a time (peak memory)
                query_rows = slots.to_pairs(grid)
            query_rows = layer.feed_forward_chunk_query(query_rows)
            if is_last:
                hidden = query_rows
                break
            if index == 0 and questions.text is not None:
                text_rows = questions.text[pair_question]
            else:
                text_rows = layer.feed_forward_chunk(attended[:, num_queries:])
            hidden = torch.cat([query_rows, text_rows], dim=1)  # (b, Q + L, H)
        return self.vlm_att_projector(self._touch_unread_weights(hidden))

    def pairwise_context_tokens(
        self,
        patches: Tensor,
        qformer_visual: Tensor,
        qformer_input_ids: Tensor,
        qformer_attention_mask: Tensor,
        pairs: FramePairs,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """`context_token` for every pair through the text decoder's own forward, pair batch by pair batch.

        Frames are visited `frame_chunk_size` at a time: keys are projected once per frame and shared by every
        question about it, but the text decoder runs per pair, so a frame's cross-attention keys/values are
        recomputed for each question. Used for `raw_bert` and for training with Q-Former dropout, checkpointing or
        sharding (see `get_context_tokens`).

        Returns:
            ``(context_tokens (pairs, D), weights (pairs, Q, N) or None, frame scores (pairs,) or None)``.
        """
        pair_frame, pair_question = pairs.frame, pairs.question
        num_queries = self.config.num_query if self.vlm_att_query is not None else qformer_input_ids.shape[1]
        # Zeros, not empty: a content-only model never fills these rows, and garbage would poison gradients.
        context = patches.new_zeros(len(pair_frame), patches.shape[-1])
        weights = (
            patches.new_empty(len(pair_frame), num_queries, patches.shape[1]) if output_attentions else None
        )
        scores = patches.new_empty(len(pair_frame), dtype=torch.float32) if output_attentions else None
        chunk = self.config.frame_chunk_size
        for start in range(0, patches.shape[0] if self.config.context_token else 0, chunk):
            in_chunk = torch.nonzero((pair_frame >= start) & (pair_frame < start + chunk)).squeeze(1)
            if not len(in_chunk):
                continue
            chunk_patches = patches[start : start + chunk]  # (c, N, C)
            chunk_keys = self.vlm_att_key_projector(chunk_patches)  # (c, N, C), shared by the chunk's pairs
            for batch in in_chunk.split(chunk):
                local = pair_frame[batch] - start
                questions = pair_question[batch]
                text_q = self.text_queries(
                    qformer_visual[pair_frame[batch]],
                    qformer_input_ids[questions],
                    qformer_attention_mask[questions],
                )  # (b, Q, C)
                logits = self.context_attention(text_q, chunk_keys[local])  # (b, Q, N)
                attention = logits.softmax(dim=-1)
                # Values are the raw patches, not projected; mean over the queries.
                context[batch] = (attention @ chunk_patches[local]).mean(dim=1).to(context.dtype)  # (b, C)
                if weights is not None and scores is not None:
                    weights[batch] = attention.to(weights.dtype)
                    scores[batch] = self.frame_relevance(logits)
        return self.vlm_att_val_projector(context), weights, scores  # (pairs, D)

    # Assembly of the visual tokens ------------------------------------------------------------------------------
    def get_visual_tokens(
        self,
        vision_features: Tensor,
        frame_counts: Tensor,
        qformer_input_ids: Tensor,
        qformer_attention_mask: Tensor,
        block_media: Tensor,
        block_question: Tensor,
        media_is_image: Tensor | None = None,
        from_pixels: bool = True,
        output_attentions: bool = False,
    ) -> LlamaVidVisualOutput:
        """Turn frame features and questions into the visual tokens of every block.

        Args:
            vision_features: ``(F, 1+N, C)`` or ``(F, N, C)`` EVA outputs of all media, media after media.
            frame_counts: ``(M,)`` frames of each media item; sums to F.
            qformer_input_ids / qformer_attention_mask: ``(P, L)`` tokenised questions (text decoder vocab).
            block_media / block_question: ``(K,)`` which media and which question fill the k-th placeholder run.
            media_is_image: ``(M,)`` selects `image_compress_type` for those media (default: none are images).
            from_pixels: whether the features came from the tower in this call (selects the CLS setting).
            output_attentions: also return the softmax weights and frame scores behind each context token.
        """
        device = vision_features.device
        frame_counts = frame_counts.to(device)
        block_media, block_question = block_media.to(device), block_question.to(device)
        self._check_blocks(vision_features, frame_counts, qformer_input_ids, block_media, block_question)
        patches, qformer_visual = self.split_vision_features(vision_features, from_pixels)
        if media_is_image is None:
            media_is_image = torch.zeros(len(frame_counts), dtype=torch.bool, device=device)
        frame_is_image = torch.repeat_interleave(media_is_image.to(device), frame_counts)

        content_table, content_offsets, content_counts = self.get_content_tokens(patches, frame_is_image)
        pairs = index_frame_pairs(frame_counts, block_media, block_question)
        context_tokens, weights, scores = self.get_context_tokens(
            patches,
            qformer_visual,
            qformer_input_ids.to(device),
            qformer_attention_mask.to(device),
            pairs,
            output_attentions=output_attentions,
        )
        tokens = interleave_visual_tokens(
            context_tokens,
            content_table,
            content_offsets[pairs.frame],
            content_counts[pairs.frame],
            with_context=self.config.context_token,
        )
        return LlamaVidVisualOutput(
            tokens=tokens,
            context_tokens=context_tokens,
            block_frame_counts=pairs.block_frame_counts,
            attention_weights=weights,
            frame_scores=scores,
        )

    def _check_blocks(
        self,
        features: Tensor,
        frame_counts: Tensor,
        qformer_ids: Tensor,
        block_media: Tensor,
        block_question: Tensor,
    ) -> None:
        if int(frame_counts.sum()) != features.shape[0]:
            raise InvalidInputError(
                f"frame_counts add up to {int(frame_counts.sum())} frames but {features.shape[0]} frames were given."
            )
        if (frame_counts < 1).any():
            empty = torch.nonzero(frame_counts < 1).flatten().tolist()
            raise InvalidInputError(
                f"media {empty} have no frames; every image or video needs at least one frame."
            )
        if len(block_media) != len(block_question):
            raise InvalidInputError(
                f"block_media has {len(block_media)} entries but block_question has {len(block_question)}."
            )
        if len(block_media) and (block_media.min() < 0 or block_media.max() >= len(frame_counts)):
            raise InvalidInputError(f"block_media refers to media outside 0..{len(frame_counts) - 1}.")
        if len(block_question) and (block_question.min() < 0 or block_question.max() >= len(qformer_ids)):
            raise InvalidInputError(f"block_question refers to questions outside 0..{len(qformer_ids) - 1}.")
        unused = set(range(len(frame_counts))) - set(block_media.tolist())
        if unused:
            raise InvalidInputError(
                f"media {sorted(unused)} have frames but no question; give each image or video at least one "
                "question (the context token is computed from it)."
            )

    # 4. Assembly ----------------------------------------------------------------------------------------------
    def get_inputs_embeds(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        vision_features: Tensor | None = None,
        frame_counts: Tensor | None = None,
        media_is_image: Tensor | None = None,
        qformer_input_ids: Tensor | None = None,
        qformer_attention_mask: Tensor | None = None,
        block_media: Tensor | None = None,
        block_question: Tensor | None = None,
        output_attentions: bool = False,
        visual_tokens: Tensor | None = None,
    ) -> tuple[Tensor, LlamaVidVisualOutput | None]:
        """Embed `input_ids` and write visual tokens into the placeholder positions.

        `visual_tokens` ``(n_placeholders, D)`` are tokens computed earlier with `get_visual_tokens` (for example
        streamed chunk by chunk over a cached long video); they are written as they are.
        """
        placeholder = input_ids == self.config.image_token_index
        embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        if visual_tokens is not None:
            if pixel_values is not None or vision_features is not None:
                raise InvalidInputError("Pass visual_tokens or pixel_values/vision_features, not both.")
            found = int(placeholder.sum())
            if visual_tokens.ndim != 2 or visual_tokens.shape[0] != found:
                raise InvalidInputError(
                    f"visual_tokens must have shape ({found}, {embeds.shape[-1]}) to fill {found} placeholders, got "
                    f"{tuple(visual_tokens.shape)}."
                )
            embeds = embeds.masked_scatter(placeholder.unsqueeze(-1), visual_tokens.to(embeds))
            return embeds, LlamaVidVisualOutput(tokens=visual_tokens)
        if pixel_values is None and vision_features is None:
            if placeholder.any():
                raise InvalidInputError(
                    f"input_ids contain {int(placeholder.sum())} visual placeholders ({self.config.image_token_index}) "
                    "but no pixel_values or vision_features were given."
                )
            return embeds, None
        if pixel_values is not None and vision_features is not None:
            raise InvalidInputError("Pass either pixel_values or vision_features, not both.")
        if qformer_input_ids is None:
            raise InvalidInputError(
                "qformer_input_ids (the tokenised questions) are required with visual inputs."
            )
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        if pixel_values is not None:
            features, from_pixels = self.get_vision_features(pixel_values), True
        else:
            assert vision_features is not None  # one of the two is set, checked above
            features, from_pixels = vision_features, False
        if frame_counts is None:
            frame_counts = torch.ones(features.shape[0], dtype=torch.long)
        if block_media is None or block_question is None:
            if len(frame_counts) != len(qformer_input_ids):
                raise InvalidInputError(
                    f"{len(frame_counts)} media and {len(qformer_input_ids)} questions: pass block_media and "
                    "block_question to say which question goes with which media."
                )
            block_media = torch.arange(len(frame_counts))
            block_question = torch.arange(len(frame_counts))
        visual = self.get_visual_tokens(
            features.to(embeds.dtype),
            frame_counts,
            qformer_input_ids,
            qformer_attention_mask,
            block_media,
            block_question,
            media_is_image=media_is_image,
            from_pixels=from_pixels,
            output_attentions=output_attentions,
        )
        tokens = visual.tokens
        assert tokens is not None  # get_visual_tokens always fills them
        expected, found = tokens.shape[0], int(placeholder.sum())
        if expected != found:
            per_row = placeholder.sum(dim=1).tolist()
            raise InvalidInputError(
                f"input_ids hold {found} visual placeholder ids (per sample: {per_row}) but the media and questions "
                f"produce {expected} visual tokens; build inputs with LlamaVidProcessor so the counts match."
            )
        embeds = embeds.masked_scatter(placeholder.unsqueeze(-1), tokens.to(embeds.dtype))
        return embeds, visual

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: object | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        output_visual_attentions: bool = False,
        **visual_inputs: Tensor,
    ) -> tuple[ModelOutput, LlamaVidVisualOutput | None]:
        visual = None
        if inputs_embeds is None:
            if input_ids is None:
                raise InvalidInputError("Pass input_ids or inputs_embeds.")
            inputs_embeds, visual = self.get_inputs_embeds(
                input_ids, output_attentions=output_visual_attentions, **visual_inputs
            )
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        return outputs, visual


class LlamaVidForConditionalGeneration(LlamaVidPreTrainedModel, GenerationMixin):
    """LLaMA-VID with a language-modelling head; `generate` computes visual tokens once, at prefill."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: LlamaVidConfig):
        super().__init__(config)
        self.model = LlamaVidModel(config)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        # The embedding table's name is the LLM family's (`embed_tokens`, GPT-2's `wte`, ...): tie to that one.
        self._tied_weights_keys = {
            "lm_head.weight": f"{llm_embedding_name(cast(PreTrainedModel, self.model.language_model))}.weight"
        }
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def frozen_module_names(self) -> list[str]:
        """Modules that the configured `bert_type` freezes during training; EVA is always frozen."""
        names = ["model.vision_tower"]
        variant = self.model.bert_variant
        if "freeze" in variant:
            names += ["model.vlm_att_encoder", "model.vlm_att_ln", "model.vlm_att_query"]
        if variant.endswith("freeze_all"):
            names += ["model.vlm_att_projector", "model.vlm_att_key_projector", "model.vlm_att_val_projector"]
        return names

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: object | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        pixel_values: Tensor | None = None,
        vision_features: Tensor | None = None,
        frame_counts: Tensor | None = None,
        media_is_image: Tensor | None = None,
        qformer_input_ids: Tensor | None = None,
        qformer_attention_mask: Tensor | None = None,
        block_media: Tensor | None = None,
        block_question: Tensor | None = None,
        output_visual_attentions: bool = False,
        visual_tokens: Tensor | None = None,
        **kwargs,
    ) -> LlamaVidCausalLMOutput:
        """Run the LLM on text with visual tokens in the placeholder positions.

        Args:
            input_ids: ``(B, L)`` with one placeholder id (-200) per visual token, as `LlamaVidProcessor` builds.
            pixel_values: ``(F, 3, S, S)`` every frame of every media item, media after media.
            vision_features: ``(F, 1+N or N, C)`` precomputed EVA features instead of pixels (long videos).
            frame_counts: ``(M,)`` frames per media item (default: each frame is its own image).
            media_is_image: ``(M,)`` which media use `image_compress_type`.
            qformer_input_ids / qformer_attention_mask: ``(P, Lq)`` questions for the text decoder.
            block_media / block_question: ``(K,)`` media and question of each placeholder run, in order.
            visual_tokens: ``(n_placeholders, D)`` visual tokens computed beforehand (instead of media).
            labels: ``(B, L)`` next-token targets; -100 (and placeholder positions) are ignored.
        """
        outputs, visual = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_visual_attentions=output_visual_attentions,
            pixel_values=pixel_values,
            vision_features=vision_features,
            frame_counts=frame_counts,
            media_is_image=media_is_image,
            qformer_input_ids=qformer_input_ids,
            qformer_attention_mask=qformer_attention_mask,
            block_media=block_media,
            block_question=block_question,
            visual_tokens=visual_tokens,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        loss = self.lm_loss(logits, labels) if labels is not None else None
        return LlamaVidCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=getattr(outputs, "cache", None),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
            visual=visual,
        )

    def lm_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token loss of ``logits (B, L, V)`` against ``labels (B, L)``; -100 and placeholders are ignored."""
        labels = labels.masked_fill(labels == self.config.image_token_index, IGNORE_INDEX)
        return self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text.vocab_size)

    @torch.no_grad()
    def get_attention_maps(self, **inputs: Tensor) -> list[dict[str, Tensor]]:
        """Attention behind every context token, grouped per media item, from a processor batch.

        Returns:
            One dict per media item: ``weights`` ``(P, T, Q, N)`` (softmax over patches, one row per question
            about that media), ``scores`` ``(P, T)`` unnormalised frame relevance and ``relevance`` ``(P, T)``
            its softmax over frames (our definition; see `LlamaVidModel.frame_relevance`), ``questions``
            ``(P,)`` indices into the batch's questions.
        """
        names = ("input_ids", *VISUAL_INPUT_NAMES)
        visual_inputs = {name: inputs[name] for name in names if inputs.get(name) is not None}
        _, visual = self.model.get_inputs_embeds(output_attentions=True, **visual_inputs)
        if visual is None:
            raise InvalidInputError("the inputs hold no media: nothing to explain.")
        blocks = visual.per_block()
        maps = []
        for media in range(len(inputs["frame_counts"])):
            members = [k for k, m in enumerate(inputs["block_media"].tolist()) if m == media]
            scores = torch.stack([blocks[k]["scores"] for k in members])
            maps.append(
                {
                    "weights": torch.stack([blocks[k]["weights"] for k in members]),
                    "scores": scores,
                    "relevance": scores.softmax(dim=-1),
                    "questions": inputs["block_question"][members],
                }
            )
        return maps

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        next_sequence_length: int | None = None,
        cache: object | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in VISUAL_INPUT_NAMES:
                model_inputs.pop(name, None)
        return model_inputs

    @torch.no_grad()
    def generate(self, input_ids: Tensor | None = None, **kwargs):
        """`GenerationMixin.generate` with the visual tokens spliced in once, before prefill.

        The prompt's placeholder ids are replaced by the pad id in what logits processors see (a repetition
        penalty would otherwise index the vocabulary with -200); the returned sequences hold that pad id where
        visual tokens were, which `skip_special_tokens=True` drops when decoding.
        """
        visual_inputs = {
            name: kwargs.pop(name) for name in VISUAL_INPUT_NAMES if kwargs.get(name) is not None
        }
        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            if visual_inputs:
                raise InvalidInputError("Visual inputs need input_ids with placeholders, not inputs_embeds.")
            return super().generate(input_ids=input_ids, **kwargs)
        inputs_embeds, _ = self.model.get_inputs_embeds(input_ids, **visual_inputs)
        pad_id = self.generation_config.pad_token_id
        if pad_id is None:
            pad_id = self.config.text.pad_token_id or 0
        visible_ids = input_ids.masked_fill(input_ids == self.config.image_token_index, int(pad_id))
        if kwargs.get("attention_mask") is None:
            # transformers would infer the mask from the pad id, and so hide the visual positions that now
            # hold it: infer it from the ids as given instead (padding only where the pad id already was).
            kwargs["attention_mask"] = (input_ids != int(pad_id)).long()
        return super().generate(input_ids=visible_ids, inputs_embeds=inputs_embeds, **kwargs)


__all__ = [
    "LlamaVidContentPooling",
    "LlamaVidForConditionalGeneration",
    "LlamaVidModel",
    "LlamaVidPreTrainedModel",
    "LlamaVidVisualOutput",
    "LlamaVidCausalLMOutput",
    "build_mm_projector",
]
