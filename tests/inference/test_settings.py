"""Sampling settings: the checkpoint's generation_config.json is the default, flags override, bad values refused."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from llamavid.errors import InvalidInputError, LlamaVidError
from llamavid.inference.engine import Engine
from llamavid.inference.settings import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    SamplingSettings,
)
from tiny_helpers import moving_square_video


@pytest.fixture
def long_video_checkpoint(serving_model_dir, tmp_path):
    """A model folder whose generation_config.json asks for the released long-video sampling (0.6 / 0.9)."""
    folder = tmp_path / "model"
    shutil.copytree(serving_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=1024)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def test_the_checkpoint_generation_config_is_the_default(long_video_checkpoint, monkeypatch):
    engine = Engine.from_pretrained(long_video_checkpoint, device="cpu", feature_cache=False)
    assert engine.default_settings == SamplingSettings(temperature=0.6, top_p=0.9, max_new_tokens=1024)

    seen = []
    original = engine.model.generate
    monkeypatch.setattr(
        engine.model, "generate", lambda **kw: seen.append(kw["generation_config"]) or original(**kw)
    )
    engine.ask(moving_square_video(2, 64), "what?", max_new_tokens=2, seed=0)
    assert seen[-1].do_sample and seen[-1].temperature == 0.6 and seen[-1].top_p == 0.9
    engine.ask(moving_square_video(2, 64), "what?", max_new_tokens=2, temperature=0)  # a flag overrides
    assert not seen[-1].do_sample and seen[-1].max_new_tokens == 2


def test_a_checkpoint_that_says_nothing_keeps_the_official_demo_sampling(serving_model_dir):
    engine = Engine.from_pretrained(serving_model_dir, device="cpu", feature_cache=False)
    assert engine.default_settings == SamplingSettings(
        DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_MAX_NEW_TOKENS
    )


def test_greedy_and_sampling_in_generation_configs():
    from transformers import GenerationConfig

    greedy = SamplingSettings.from_generation_config(GenerationConfig(do_sample=False, max_new_tokens=128))
    assert not greedy.do_sample and greedy.max_new_tokens == 128
    sampled = SamplingSettings.from_generation_config(GenerationConfig(do_sample=True, temperature=0.2))
    assert sampled.temperature == 0.2 and sampled.top_p == 1.0  # transformers' default where unset


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": 6}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
    ],
)
def test_values_the_sampler_cannot_use_are_refused_clearly(overrides, message):
    with pytest.raises(InvalidInputError, match=message) as caught:
        SamplingSettings().updated(**overrides)
    assert isinstance(caught.value, LlamaVidError) and isinstance(caught.value, ValueError)


def test_a_vanishing_temperature_decodes_greedily_instead_of_overflowing(serving_engine):
    video = moving_square_video(2, 64)
    tiny = serving_engine.ask(video, "what?", temperature=1e-300, max_new_tokens=6, seed=1)
    greedy = serving_engine.ask(video, "what?", temperature=0, max_new_tokens=6)
    assert SamplingSettings(temperature=1e-300).do_sample is False
    assert tiny.text == greedy.text and tiny.finish_reason in ("stop", "length")
