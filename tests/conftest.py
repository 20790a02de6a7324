"""Shared fixtures: tiny seeded configs/models, an offline guard and CI-strict backend checks."""

from __future__ import annotations

import importlib
import ipaddress
import os
import socket

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

from llamavid.assets import DEMO_TOKENIZER_DIR  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Offline guard ----------------------------------------------------------------------------------------------------
_real_connect = socket.socket.connect


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise RuntimeError(f"tests must stay offline: refused a connection to {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


def require_module(name: str):
    """Import an optional backend; skip without it locally, but fail under CI (a silent skip hides a gap)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but cannot be imported: {error}")
        pytest.skip(f"{name} not installed")


# Tiny model -------------------------------------------------------------------------------------------------------
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


@pytest.fixture
def tiny_config():
    from llamavid import LlamaVidConfig

    return LlamaVidConfig(**tiny_config_kwargs())


def build_tiny_model(seed: int = 0, **overrides):
    from llamavid import LlamaVidConfig, LlamaVidForConditionalGeneration

    torch.manual_seed(seed)
    return LlamaVidForConditionalGeneration(LlamaVidConfig(**tiny_config_kwargs(**overrides))).eval()


@pytest.fixture
def tiny_model():
    return build_tiny_model()


@pytest.fixture(scope="session")
def llm_tokenizer():
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))


@pytest.fixture(scope="session")
def qformer_tokenizer():
    from llamavid.model.processing_llamavid import load_qformer_tokenizer

    return load_qformer_tokenizer()


@pytest.fixture
def tiny_processor(tiny_config, llm_tokenizer, qformer_tokenizer):
    from llamavid import LlamaVidProcessor

    return LlamaVidProcessor.from_config(tiny_config, llm_tokenizer, qformer_tokenizer)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


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
