"""The one context-budget check: does a prompt (visual tokens included) plus its answer fit the model?

Two limits: the LLM's positions (``max_position_embeddings`` times a linear RoPE scaling factor; the stage-3
long-video checkpoints scale linearly x16 to reach 64K) and, optionally, a memory budget for the KV cache.
Both read only generic `text_config` fields, so they hold for any LLM family (docs/llms.md).
Every path that builds a prompt calls `check_context_budget` and so raises the same `ContextBudgetError`
with the same advice, before any visual token is computed where the frame count is known in advance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llamavid.errors import ContextBudgetError

__all__ = ["Budget", "ContextBudgetError", "check_context_budget", "context_limit", "estimate_kv_cache_bytes"]

ADVICE = "lower --max-frames or --fps, shorten the chat (/reset) or lower --max-new-tokens"


def _cached_tokens_per_layer(text_config: Any, tokens: int) -> list[int]:
    """Tokens each layer's KV cache holds: all of them, or at most the window of a sliding-window layer.

    ``layer_types`` (Qwen2, Gemma 2/3, ...) names each layer's attention; a ``sliding_window`` without it
    (Mistral) applies to every layer.
    """
    layers = text_config.num_hidden_layers
    window = getattr(text_config, "sliding_window", None)
    kinds = getattr(text_config, "layer_types", None) or (
        ["sliding_attention"] * layers if window else ["full_attention"] * layers
    )
    return [min(tokens, window) if window and kind == "sliding_attention" else tokens for kind in kinds]


def estimate_kv_cache_bytes(text_config: Any, tokens: int, dtype: torch.dtype) -> int:
    """``2 (K and V) x kv_heads x head_dim x bytes per element x tokens cached, summed over layers``.

    ``num_key_value_heads`` (grouped-query attention) and ``head_dim`` are read where the family sets them
    (Qwen3's head_dim is not hidden_size / heads); sliding-window layers hold at most their window.
    """
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    element = torch.empty((), dtype=dtype).element_size()
    cached = sum(_cached_tokens_per_layer(text_config, tokens))
    return int(2 * kv_heads * head_dim * element * cached)


def _rope_settings(text_config: Any) -> dict[str, Any]:
    """The RoPE settings of full-attention layers (families with per-layer-type settings nest them)."""
    for name in ("rope_scaling", "rope_parameters"):
        scaling = getattr(text_config, name, None)
        if isinstance(scaling, dict):
            nested = scaling.get("full_attention")
            return nested if isinstance(nested, dict) else scaling
    return {}


def context_limit(text_config: Any) -> int:
    """Positions the LLM can attend to.

    ``max_position_embeddings`` times a ``linear``/``dynamic`` RoPE factor (LLaMA-VID stage 3: 4096 x 16).
    Other scalings (``llama3``, ``yarn``, ``longrope``) already state the extended length in
    ``max_position_embeddings``, or reach ``original_max_position_embeddings x factor``.
    """
    positions = int(text_config.max_position_embeddings)
    settings = _rope_settings(text_config)
    kind = settings.get("rope_type") or settings.get("type")
    factor = settings.get("factor")
    if not factor or kind in (None, "default"):
        return positions
    if kind in ("linear", "dynamic"):
        return int(positions * float(factor))
    original = settings.get("original_max_position_embeddings")
    return max(positions, int(original * float(factor))) if original else positions


@dataclass(frozen=True)
class Budget:
    """What a prompt costs: tokens in, tokens that may come out, the context and the KV-cache estimate."""

    prompt_tokens: int
    visual_tokens: int
    new_tokens: int
    context_limit: int
    kv_cache_bytes: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.new_tokens

    def describe(self) -> str:
        return (
            f"{self.visual_tokens} visual tokens, {self.prompt_tokens} prompt tokens (+{self.new_tokens} new) of "
            f"{self.context_limit}; KV cache about {self.kv_cache_bytes / 2**20:.1f} MiB"
        )


def check_context_budget(
    text_config: Any,
    prompt_tokens: int,
    new_tokens: int,
    dtype: torch.dtype,
    max_memory: int | None = None,
    *,
    visual_tokens: int = 0,
    advice: str = ADVICE,
) -> Budget:
    """Return the `Budget` of a prompt; raise `ContextBudgetError` when it exceeds the context or `max_memory`.

    Args:
        text_config: the LLM's config (positions, layers, heads).
        prompt_tokens: prompt length including visual tokens (a lower bound is fine for an early refusal).
        new_tokens: how many tokens the answer may add.
        dtype: the KV cache's dtype (the model's).
        max_memory: KV-cache budget in bytes (``--max-memory``), or None.
        visual_tokens: how many of `prompt_tokens` are visual, for the message.
        advice: what the caller can change, ending the message.
    """
    limit = context_limit(text_config)
    total = prompt_tokens + new_tokens
    budget = Budget(
        prompt_tokens, visual_tokens, new_tokens, limit, estimate_kv_cache_bytes(text_config, total, dtype)
    )
    if total > limit:
        raise ContextBudgetError(
            f"the prompt has {prompt_tokens} tokens ({visual_tokens} visual) and up to {new_tokens} new tokens "
            f"were asked for, but the model's context is {limit}; {advice}."
        )
    if max_memory is not None and budget.kv_cache_bytes > max_memory:
        raise ContextBudgetError(
            f"the KV cache for {total} tokens ({visual_tokens} visual) needs about "
            f"{budget.kv_cache_bytes / 2**20:.1f} MiB, over --max-memory {max_memory / 2**20:.1f} MiB; {advice}, "
            "or raise the budget."
        )
    return budget
