"""Tiny seeded models and generated media shared by the tests (imported as `tiny_helpers`)."""

from __future__ import annotations

import torch

from llamavid.testing import build_tiny_model, moving_square_video, tiny_config_kwargs

__all__ = ["LIVE_EPISODE", "build_tiny_model", "moving_square_video", "tiny_config_kwargs"]

# The live tests' stream (tests/inference/test_live.py and the CLI, server and web UI live tests):
# make_episode(default_rng(seed), "heldout", frames) has a one-frame needle of `colour` at second `needle`, which
# the embedded model answers through every live path.
LIVE_EPISODE = {
    "seed": 30,
    "frames": 120,
    "needle": 8,
    "colour": "red",
    "question": "What colour is the shape on the white screen?",
}


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
