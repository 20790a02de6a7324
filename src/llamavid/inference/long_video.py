"""Hour-long videos from the feature cache: features stream chunk by chunk, only visual tokens are kept.

The model computes visual tokens for all frames at once, which is right for clips but would hold
``T x (1+N) x C`` EVA features in memory for a movie. Here features stream from the cache one chunk at a time
and only the 2-tokens-per-frame result is kept, so memory grows with the *token* count (what the LLM needs
anyway), not with the feature count. Frames are independent in LLaMA-VID (each frame's context token depends on
that frame and the question only), so the concatenated chunk tokens equal the whole-video tokens exactly.

Answering goes through the inference core (`Engine`); the prompt is the movie prompt of
`llamavid.model.conversation.build_long_video_message`, one ``<image>`` per frame with its subtitles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llamavid.data.feature_cache import CacheEntry
from llamavid.errors import ContextBudgetError, InvalidInputError
from llamavid.inference.budget import check_context_budget, context_limit, estimate_kv_cache_bytes
from llamavid.inference.media import FrameEncoder
from llamavid.model.modeling_llamavid import LlamaVidVisualOutput

__all__ = [
    "ContextBudgetError",
    "FrameEncoder",
    "LongVideoAnswer",
    "answer_long_video",
    "check_context_budget",
    "context_limit",
    "estimate_kv_cache_bytes",
    "stream_visual_output",
    "stream_visual_tokens",
]

logger = logging.getLogger(__name__)


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
    encoded = processor.qformer_tokenizer(
        [question], truncation=True, max_length=processor.qformer_max_length, return_tensors="pt"
    )
    tokens = stream_visual_output(model, entry, encoded["input_ids"], encoded["attention_mask"]).tokens
    assert tokens is not None  # always set by stream_visual_output
    return tokens


@dataclass
class LongVideoAnswer:
    """An answer plus the sizes behind it (reported before generation, kept for logs and ``--json``)."""

    answer: str
    prompt_tokens: int
    visual_tokens: int
    context_limit: int
    kv_cache_bytes: int


def answer_long_video(
    model: Any,
    processor: Any,
    entry: CacheEntry,
    question: str,
    *,
    frame_texts: Sequence[str] | None = None,
    max_memory: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> LongVideoAnswer:
    """Answer `question` about a cached video with the movie prompt, through the inference core.

    Args:
        model / processor: the checkpoint whose encoder produced `entry` (not checked here; the cache key is).
        entry: a complete cache entry.
        question: the user question; also the Q-Former instruction (as in the original movie CLI).
        frame_texts: subtitle text per frame; default: the subtitles stored with the entry.
        max_memory: KV-cache budget in bytes; refuse beyond it.
        max_new_tokens / temperature / top_p / seed: sampling (greedy by default).

    Raises:
        ContextBudgetError: the prompt exceeds the context window or `max_memory` (checked before any
            visual token is computed).
    """
    from llamavid.inference.engine import Engine
    from llamavid.inference.settings import SamplingSettings

    texts = list(frame_texts) if frame_texts is not None else entry.frame_texts
    if len(texts) != entry.num_frames:
        raise InvalidInputError(f"{len(texts)} subtitle texts given for {entry.num_frames} frames.")
    engine = Engine(model, processor)
    engine.max_memory = max_memory
    media = engine.media_from_entry(entry, texts, thumbnails=np.zeros((entry.num_frames, 1, 1, 3), np.uint8))
    settings = SamplingSettings(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    request = engine.build_request(question, media, settings=settings)
    answer = engine.answer(request)
    assert request.budget is not None
    return LongVideoAnswer(
        answer.text,
        answer.prompt_tokens,
        answer.visual_tokens,
        request.budget.context_limit,
        request.budget.kv_cache_bytes,
    )
