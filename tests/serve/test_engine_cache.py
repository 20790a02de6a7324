"""The engine answers about videos ingested into the feature cache by streaming their chunks."""

from __future__ import annotations

import subprocess
import sys

import torch

from llamavid.data import FeatureCache
from llamavid.inference.long_video import FrameEncoder
from llamavid.serve.engine import Engine


def test_cached_video_gives_the_same_answer_as_decoding(serving_model_dir, demo_video_path, tmp_path):
    engine = Engine.from_pretrained(serving_model_dir, device="cpu")
    decoded = engine.load_media(demo_video_path)
    expected = engine.ask(decoded, "which way does it move?", temperature=0, max_new_tokens=6)

    cache = FeatureCache(tmp_path / "cache", chunk_frames=3)  # 4 frames -> chunks of 3 + 1
    cache.ingest(demo_video_path, FrameEncoder(engine.model, engine.processor))
    engine.use_feature_cache(tmp_path / "cache")
    cached = engine.load_media(demo_video_path)
    assert cached.features is None and cached.cache_entry is not None and cached.num_frames == 4

    torch.testing.assert_close(
        engine.visual_output(cached, "which way does it move?").tokens,
        engine.visual_output(decoded, "which way does it move?").tokens,
        rtol=1e-2,
        atol=1e-2,  # cached features are stored in fp16
    )
    answer = engine.ask(cached, "which way does it move?", temperature=0, max_new_tokens=6)
    assert answer.text == expected.text


def test_max_memory_refuses_before_generating(serving_model_dir, demo_video_path):
    result = subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", "ask", str(demo_video_path), "what?",
         "--model", str(serving_model_dir), "--max-memory", "0.001", "--no-cache"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "over --max-memory" in result.stderr and "Traceback" not in result.stderr
