"""The context budget reads generic LLM config fields, so it holds for every LLM family (docs/llms.md)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from llamavid.inference.budget import context_limit, estimate_kv_cache_bytes


def text_config(model_type: str, **fields):
    base = dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, vocab_size=99
    )
    return AutoConfig.for_model(model_type, **{**base, **fields})


def test_kv_estimate_uses_kv_heads_and_head_dim():
    llama = text_config("llama")  # 4 heads of 16
    assert estimate_kv_cache_bytes(llama, 10, torch.float16) == 2 * 4 * 4 * 16 * 10 * 2
    qwen3 = text_config("qwen3", num_key_value_heads=2, head_dim=32)  # head_dim is not hidden / heads
    assert estimate_kv_cache_bytes(qwen3, 10, torch.float32) == 2 * 4 * 2 * 32 * 10 * 4


def test_kv_estimate_caps_sliding_window_layers():
    mistral = text_config("mistral", num_key_value_heads=2, sliding_window=8)  # every layer slides
    per_token = 2 * 2 * 16 * 4  # K and V x kv heads x head_dim x fp32 bytes
    assert estimate_kv_cache_bytes(mistral, 100, torch.float32) == 4 * 8 * per_token
    qwen2 = text_config(
        "qwen2", num_key_value_heads=2, use_sliding_window=True, sliding_window=8, max_window_layers=2
    )
    kinds = qwen2.layer_types
    assert kinds.count("sliding_attention") == 2
    assert estimate_kv_cache_bytes(qwen2, 100, torch.float32) == (2 * 100 + 2 * 8) * per_token


@pytest.mark.parametrize(
    ("rope", "positions", "expected"),
    [
        (None, 4096, 4096),
        ({"rope_type": "linear", "factor": 16.0}, 4096, 65536),  # LLaMA-VID stage 3
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "original_max_position_embeddings": 8192,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
            131072,
            131072,
        ),  # fmt: skip
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 32768, 131072),
    ],
)
def test_context_limit_per_rope_scaling(rope, positions, expected):
    fields = {"max_position_embeddings": positions}
    if rope is not None:
        fields["rope_parameters"] = {"rope_theta": 10000.0, **rope}
    assert context_limit(text_config("llama", **fields)) == expected


def test_context_limit_reads_full_attention_rope_of_per_layer_settings():
    gemma = text_config("gemma3_text", max_position_embeddings=8192, head_dim=16)
    gemma.rope_parameters = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }
    assert context_limit(gemma) == 65536
