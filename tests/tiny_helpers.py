"""Tiny seeded models and generated media shared by the tests (imported as `tiny_helpers`)."""

from __future__ import annotations

import numpy as np
import torch

from llamavid.assets import DEMO_TOKENIZER_DIR


def tiny_config_kwargs(**overrides) -> dict:
    """Hidden 32, 2 layers, 4 heads, 4 queries, 56-px frames with patch 14 (an even 4x4 patch grid)."""
    from transformers import LlamaTokenizer

    vocab = len(LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR)))
    kwargs = dict(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=56,
            patch_size=14,
        ),
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        num_query=4,
        compress_type="mean",
        image_compress_type="none",
    )
    kwargs.update(overrides)
    return kwargs


def build_tiny_model(seed: int = 0, **overrides):
    from llamavid import LlamaVidConfig, LlamaVidForConditionalGeneration

    torch.manual_seed(seed)
    return LlamaVidForConditionalGeneration(LlamaVidConfig(**tiny_config_kwargs(**overrides))).eval()


def moving_square_video(frames: int = 6, size: int = 64, seed: int = 0) -> np.ndarray:
    """A red square moving right on a grey background: ``(T, size, size, 3)`` uint8."""
    generator = np.random.default_rng(seed)
    video = np.full((frames, size, size, 3), 128, dtype=np.uint8)
    video += generator.integers(0, 8, video.shape, dtype=np.uint8)
    side = size // 4
    for index in range(frames):
        left = int(index * (size - side) / max(frames - 1, 1))
        video[index, size // 2 - side // 2 : size // 2 + side // 2, left : left + side] = (220, 30, 30)
    return video


def save_serving_model(folder, seed: int = 0):
    """Save the random demo model (`llamavid demo`'s) as a model folder, with input-sensitive weights.

    The default initialisation (std 0.02) makes a random LM answer every prompt with the same tokens, which
    would hide batching or prompt bugs; redrawing the matrices with std 0.15 makes answers depend on the
    input. Answers are still noise: tests check schema, determinism and equivalences, not content.
    """
    from llamavid.demo import build_random_demo_model

    model, processor = build_random_demo_model(seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
