"""Tiny seeded models and generated media for tests, benchmarks and examples: defined once, here.

The tiny config (width 32, 2 layers, 4 heads, 4 queries, 56-px frames with 14-px patches: an even 4x4 patch
grid) runs a full LLaMA-VID forward in milliseconds on a CPU. Nothing here downloads anything: the LLM
tokenizer is the small demo tokenizer shipped in `llamavid.assets`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llamavid.assets import DEMO_TOKENIZER_DIR

__all__ = ["build_tiny_model", "moving_square_video", "tiny_config", "tiny_config_kwargs", "tiny_processor"]


def _demo_vocab_size() -> int:
    from transformers import LlamaTokenizer

    return len(LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR)))


def tiny_config_kwargs(vocab_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of the tiny `LlamaVidConfig`; `overrides` replace top-level entries.

    Args:
        vocab_size: LLM vocabulary (default: the demo tokenizer's, so `tiny_processor` matches).
    """
    kwargs: dict[str, Any] = dict(
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
            vocab_size=_demo_vocab_size() if vocab_size is None else vocab_size,
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


def tiny_config(**overrides: Any) -> Any:
    """The tiny `LlamaVidConfig` (see `tiny_config_kwargs`)."""
    from llamavid.model import LlamaVidConfig

    return LlamaVidConfig(**tiny_config_kwargs(**overrides))


def build_tiny_model(seed: int = 0, **overrides: Any) -> Any:
    """A seeded, randomly initialised tiny `LlamaVidForConditionalGeneration` in eval mode."""
    import torch

    from llamavid.model import LlamaVidConfig, LlamaVidForConditionalGeneration

    torch.manual_seed(seed)
    return LlamaVidForConditionalGeneration(LlamaVidConfig(**tiny_config_kwargs(**overrides))).eval()


def tiny_processor(config: Any = None) -> Any:
    """The processor matching a tiny config (default `tiny_config()`): demo LLM tokenizer, BERT-uncased Q-Former."""
    from transformers import LlamaTokenizer

    from llamavid.model import LlamaVidProcessor

    tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    return LlamaVidProcessor.from_config(config if config is not None else tiny_config(), tokenizer)


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
