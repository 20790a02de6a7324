"""One feature cache for every command: encode once, answer the same cold or warm, in any dtype."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

import llamavid
from llamavid.inference.engine import Engine


def _count_encodings(engine: Engine, monkeypatch) -> list[int]:
    """Count frames through the vision tower (the expensive part ingestion exists to avoid)."""
    calls: list[int] = []
    core = engine.model.model
    original = core.get_vision_features

    def counting(pixel_values):
        calls.append(len(pixel_values))
        return original(pixel_values)

    monkeypatch.setattr(core, "get_vision_features", counting)
    return calls


def test_ingest_then_ask_then_a_second_question_encode_once(
    serving_model_dir, demo_video_path, tmp_path, monkeypatch
):
    model = llamavid.load(serving_model_dir, device="cpu", feature_cache=tmp_path / "cache")
    calls = _count_encodings(model.engine, monkeypatch)
    report = model.ingest(demo_video_path)
    assert not report.hit and sum(calls) == 4  # 4 frames at 1 fps
    first = model.ask(demo_video_path, "Which way does it move?", temperature=0, max_new_tokens=6)
    second = model.ask(demo_video_path, "What colour is it?", temperature=0, max_new_tokens=6)
    chat = model.chat(demo_video_path, temperature=0, max_new_tokens=6)
    chat.ask("And then?")
    assert sum(calls) == 4, f"frames encoded again after ingest: {calls}"
    assert first.frames == second.frames == 4


def test_cold_and_warm_answers_are_token_identical(serving_model_dir, demo_video_path, tmp_path, monkeypatch):
    question = "which way does it move?"
    cold_engine = Engine.from_pretrained(serving_model_dir, device="cpu", feature_cache=tmp_path / "cache")
    cold = cold_engine.prepare_question(
        demo_video_path, question, settings=cold_engine.settings(temperature=0)
    )
    assert cold.media is not None and cold.media.cache_entry is not None  # the cold run filled the cache
    warm_engine = Engine.from_pretrained(serving_model_dir, device="cpu", feature_cache=tmp_path / "cache")
    calls = _count_encodings(warm_engine, monkeypatch)
    warm = warm_engine.prepare_question(
        demo_video_path, question, settings=warm_engine.settings(temperature=0)
    )
    assert calls == []
    assert cold.input_ids == warm.input_ids
    assert torch.equal(cold.visual_tokens, warm.visual_tokens)
    assert cold_engine.answer(cold).text == warm_engine.answer(warm).text

    # Long entries stream their chunks per question instead of loading them: the same tokens.
    monkeypatch.setattr("llamavid.inference.engine.IN_MEMORY_FEATURE_BYTES", 0)
    streamed = warm_engine.prepare_question(
        demo_video_path, question, settings=warm_engine.settings(temperature=0)
    )
    assert streamed.media.features is None
    torch.testing.assert_close(streamed.visual_tokens, warm.visual_tokens, rtol=0, atol=1e-6)

    # Decoded frames handed over as an array are rounded the same way: no difference either.
    from llamavid.data import decode_video

    frames = decode_video(demo_video_path, fps=1.0)
    from_array = warm_engine.build_request(question, warm_engine.load_media(frames), settings=warm.settings)
    torch.testing.assert_close(from_array.visual_tokens, warm.visual_tokens, rtol=0, atol=1e-6)


def test_the_cache_key_does_not_depend_on_the_dtype(
    serving_model_dir, demo_video_path, tmp_path, monkeypatch
):
    half = Engine.from_pretrained(
        serving_model_dir, device="cpu", dtype="bfloat16", feature_cache=tmp_path / "c"
    )
    half.ingest(demo_video_path)
    full = Engine.from_pretrained(
        serving_model_dir, device="cpu", dtype="float32", feature_cache=tmp_path / "c"
    )
    calls = _count_encodings(full, monkeypatch)
    media = full.load_media(demo_video_path)
    assert calls == [] and media.cache_entry is not None


def test_cache_use_is_logged(serving_model_dir, demo_video_path, tmp_path, caplog):
    engine = Engine.from_pretrained(serving_model_dir, device="cpu", feature_cache=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="llamavid.inference.engine"):
        engine.load_media(demo_video_path)
        engine.load_media(demo_video_path)
    assert "feature cache: miss (" in caplog.text and "feature cache: hit " in caplog.text


def test_cli_ingest_then_ask_hits_the_cache_with_default_flags(serving_model_dir, demo_video_path, tmp_path):
    env = {"LLAMAVID_CACHE": str(tmp_path / "cache"), "PATH": "", "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "llamavid.cli.main"]
    ingest = subprocess.run(
        [*base, "ingest", str(demo_video_path), "--model", str(serving_model_dir), "--dtype", "float16", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["cache_hit"] is False
    ask = subprocess.run(
        [*base, "-v", "ask", str(demo_video_path), "what?", "--model", str(serving_model_dir), "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert ask.returncode == 0, ask.stderr
    assert "feature cache: hit" in ask.stderr
    assert json.loads(ask.stdout)["feature_cache"] == json.loads(ingest.stdout)["digest"]


def test_max_memory_refuses_before_decoding(serving_model_dir, demo_video_path, tmp_path, monkeypatch):
    engine = Engine.from_pretrained(serving_model_dir, device="cpu", feature_cache=tmp_path / "cache")
    engine.max_memory = 1000
    decoded: list[str] = []
    monkeypatch.setattr("llamavid.data.video.iter_video_frames", lambda *a, **k: decoded.append("x"))
    with pytest.raises(llamavid.errors.ContextBudgetError, match="over --max-memory"):
        engine.ask(demo_video_path, "what?", temperature=0)
    assert decoded == [] and not list((tmp_path / "cache").glob("*/chunk_*"))

    result = subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", "ask", str(demo_video_path), "what?",
         "--model", str(serving_model_dir), "--max-memory", "0.001", "--no-cache"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "over --max-memory" in result.stderr and "Traceback" not in result.stderr


def test_the_pixel_limit_is_checked_before_decoding(serving_engine, tmp_path):
    from PIL import Image

    from llamavid.data.errors import MediaError

    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 2000), (10, 20, 30)).save(path)
    with pytest.raises(MediaError, match="2000"):
        serving_engine.load_media(path, max_pixels=1_000_000)
    assert serving_engine.load_media(path, max_pixels=5_000_000).is_image
