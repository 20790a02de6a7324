"""Hour-long videos from the feature cache: encode frames once, then answer questions chunk by chunk.

Why a separate module: the model computes visual tokens for all frames at once, which is right for clips but
holds ``T x (1+N) x C`` EVA features in memory for a movie. Here features stream from the cache in chunks and
only the 2-tokens-per-frame result is kept, so memory grows with the *token* count (what the LLM needs anyway),
not with the feature count. Frames are independent in LLaMA-VID (each frame's context token depends on that
frame and the question only), so the concatenated chunk tokens equal the whole-video tokens exactly.

The prompt follows the movie CLI of the original code (spec §5.4): a start sentence, then per frame
``<image>`` + the subtitles aligned to that frame, then "Now the movie end.", a newline and the question.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llamavid.data.feature_cache import CacheEntry, module_sha256, preprocessing_id
from llamavid.model.modeling_llamavid import LlamaVidVisualOutput

__all__ = [
    "MOVIE_END",
    "MOVIE_START",
    "ContextBudgetError",
    "FrameEncoder",
    "LongVideoAnswer",
    "answer_long_video",
    "build_movie_prompt",
    "check_context_budget",
    "context_limit",
    "estimate_kv_cache_bytes",
    "stream_visual_output",
    "stream_visual_tokens",
]

logger = logging.getLogger(__name__)

MOVIE_START = "Below is a movie. Memorize the content and answer my question after watching this movie."
MOVIE_END = "Now the movie end."


class ContextBudgetError(ValueError):
    """The prompt would not fit the model's context window or the memory budget."""


class FrameEncoder:
    """The cache's encoder for a model + processor: uint8 frames -> EVA features ``(T, 1+N, C)`` (CLS kept).

    The encoder id is the sha256 of the vision tower's weights, computed once here: a fine-tuned tower with the
    same checkpoint name gets other features, so it must get another cache key.

    Args:
        model: a ``LlamaVidForConditionalGeneration`` (or its ``.model``).
        processor: the matching ``LlamaVidProcessor``.
    """

    def __init__(self, model: Any, processor: Any) -> None:
        self.core = getattr(model, "model", model)
        self.image_processor = processor.image_processor
        self.encoder_id = module_sha256(self.core.vision_tower)
        self.preprocessing_id = preprocessing_id(self.image_processor)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        pixels = self.image_processor(frames, is_video=True)
        return self.core.get_vision_features(pixels).to("cpu", torch.float16)


def _qformer_inputs(processor: Any, question: str) -> dict[str, torch.Tensor]:
    return processor.qformer_tokenizer(
        [question], truncation=True, max_length=processor.qformer_max_length, return_tensors="pt"
    )


@torch.no_grad()
def stream_visual_output(
    model: Any,
    entry: CacheEntry,
    qformer_input_ids: torch.Tensor,
    qformer_attention_mask: torch.Tensor,
    *,
    frame_blocks: bool = False,
    output_attentions: bool = False,
) -> LlamaVidVisualOutput:
    """Visual tokens of a cached video for one question, computed chunk by chunk (``LlamaVidVisualOutput``).

    Only one chunk of features is in memory at a time; every (frame, question) pair is independent, so the
    concatenated chunks equal one pass over the whole video. Cached features keep CLS, so ``from_pixels=True``
    applies the same CLS rule as for freshly decoded frames.

    Args:
        frame_blocks: one block per frame (the subtitle-interleaved layout, one ``<image>`` per frame) instead
            of one block for the whole video; the tokens are the same, only `block_frame_counts` differs.
        output_attentions: also return the attention weights and frame scores.
    """
    core = getattr(model, "model", model)
    param = next(core.parameters())
    parts = []
    for chunk in entry.iter_chunks(framework="pt"):
        features = chunk.to(device=param.device, dtype=param.dtype)
        frames = len(features)
        if frame_blocks:
            counts, blocks = torch.ones(frames, dtype=torch.long), torch.arange(frames)
        else:
            counts, blocks = torch.tensor([frames]), torch.zeros(1, dtype=torch.long)
        parts.append(
            core.get_visual_tokens(
                features,
                counts,
                qformer_input_ids,
                qformer_attention_mask,
                blocks,
                torch.zeros(len(blocks), dtype=torch.long),
                from_pixels=True,
                output_attentions=output_attentions,
            )
        )
        del features, chunk
    total = entry.num_frames
    return LlamaVidVisualOutput(
        tokens=torch.cat([part.tokens for part in parts]),
        context_tokens=torch.cat([part.context_tokens for part in parts]),
        block_frame_counts=torch.ones(total, dtype=torch.long) if frame_blocks else torch.tensor([total]),
        attention_weights=torch.cat([part.attention_weights for part in parts])
        if output_attentions
        else None,
        frame_scores=torch.cat([part.frame_scores for part in parts]) if output_attentions else None,
    )


def stream_visual_tokens(model: Any, processor: Any, entry: CacheEntry, question: str) -> torch.Tensor:
    """Visual tokens ``(T * (1+n), D)`` of a cached video for one question (see `stream_visual_output`)."""
    encoded = _qformer_inputs(processor, question)
    tokens = stream_visual_output(model, entry, encoded["input_ids"], encoded["attention_mask"]).tokens
    assert tokens is not None  # always set by stream_visual_output
    return tokens


def build_movie_prompt(processor: Any, frame_texts: Sequence[str], question: str) -> str:
    """The chat-templated movie prompt with one ``<image>`` per frame followed by that frame's subtitles."""
    body = "".join(f"<image>{text}" for text in frame_texts)
    message = f"{MOVIE_START}{body}{MOVIE_END}\n{question}"
    return processor.apply_chat_template([{"role": "user", "content": message}])


def estimate_kv_cache_bytes(text_config: Any, tokens: int, dtype: torch.dtype) -> int:
    """``2 (K and V) x layers x kv_heads x head_dim x tokens x bytes per element``."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * text_config.num_hidden_layers * kv_heads * head_dim * tokens * element


def _rope_factor(text_config: Any) -> float:
    for name in ("rope_scaling", "rope_parameters"):
        scaling = getattr(text_config, name, None)
        if isinstance(scaling, dict) and scaling.get("factor"):
            kind = scaling.get("rope_type") or scaling.get("type")
            if kind not in (None, "default"):
                return float(scaling["factor"])
    return 1.0


def context_limit(text_config: Any) -> int:
    """Positions the LLM can attend to: ``max_position_embeddings`` times any RoPE scaling factor."""
    return int(text_config.max_position_embeddings * _rope_factor(text_config))


def check_context_budget(
    text_config: Any, tokens: int, dtype: torch.dtype, max_memory: int | None = None
) -> tuple[int, int]:
    """Return ``(context_limit, kv_cache_bytes)``; raise :class:`ContextBudgetError` when either is exceeded.

    The context limit is ``max_position_embeddings`` times the RoPE scaling factor (stage-3 long-video
    checkpoints use linear scaling x16 to reach 64K; spec §6).
    """
    limit = context_limit(text_config)
    kv_bytes = estimate_kv_cache_bytes(text_config, tokens, dtype)
    if tokens > limit:
        raise ContextBudgetError(
            f"the prompt needs {tokens} tokens but the model's context is {limit}; sample fewer frames "
            f"(--fps / --max-frames) or use a long-context checkpoint."
        )
    if max_memory is not None and kv_bytes > max_memory:
        raise ContextBudgetError(
            f"the KV cache for {tokens} tokens needs about {kv_bytes / 2**20:.1f} MiB, over the budget of "
            f"{max_memory / 2**20:.1f} MiB; sample fewer frames or raise the budget."
        )
    return limit, kv_bytes


@dataclass
class LongVideoAnswer:
    """An answer plus the sizes behind it (reported before generation, kept for logs and ``--json``)."""

    answer: str
    prompt_tokens: int
    visual_tokens: int
    context_limit: int
    kv_cache_bytes: int


@torch.no_grad()
def answer_long_video(
    model: Any,
    processor: Any,
    entry: CacheEntry,
    question: str,
    *,
    frame_texts: Sequence[str] | None = None,
    max_memory: int | None = None,
    max_new_tokens: int = 64,
    **generate_kwargs: Any,
) -> LongVideoAnswer:
    """Answer `question` about a cached video through the streaming path.

    Args:
        model / processor: the checkpoint whose encoder produced `entry` (not checked here; the cache key is).
        entry: a complete cache entry.
        question: the user question; also the Q-Former instruction (as in the original movie CLI).
        frame_texts: subtitle text per frame; default: the subtitles stored with the entry.
        max_memory: KV-cache budget in bytes; refuse beyond it.
        max_new_tokens / generate_kwargs: passed to ``generate`` (greedy by default).

    Raises:
        ContextBudgetError: the prompt exceeds the context window or `max_memory` (checked before any
            visual token is computed).
    """
    texts = list(frame_texts) if frame_texts is not None else entry.frame_texts
    if len(texts) != entry.num_frames:
        raise ValueError(f"{len(texts)} subtitle texts given for {entry.num_frames} frames.")
    per_frame = processor.video_tokens_per_frame
    prompt = build_movie_prompt(processor, texts, question)
    ids = processor.tokenize_prompt(prompt, [per_frame] * entry.num_frames)
    dtype = next(model.parameters()).dtype
    total = len(ids) + max_new_tokens
    limit, kv_bytes = check_context_budget(model.config.text_config, total, dtype, max_memory)
    logger.info(
        "long video: %d frames -> %d visual tokens, %d prompt tokens (+%d new) of %d; KV cache ~%.1f MiB",
        entry.num_frames, per_frame * entry.num_frames, len(ids), max_new_tokens, limit, kv_bytes / 2**20,
    )  # fmt: skip
    tokens = stream_visual_tokens(model, processor, entry, question)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    generate_kwargs.setdefault("do_sample", False)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        visual_tokens=tokens,
        max_new_tokens=max_new_tokens,
        **generate_kwargs,
    )
    answer = processor.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
    return LongVideoAnswer(answer, len(ids), int(tokens.shape[0]), limit, kv_bytes)
