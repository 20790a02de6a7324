"""Every interface answers through the one generate path: the same greedy request gives the same tokens from
`llamavid ask`, the Python API, the OpenAI-compatible server, `llamavid eval`'s predictor and eval-synth."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest

from llamavid.inference.engine import Engine
from testing_utils import require_module

QUESTION = "Which way does the square move?"


@pytest.fixture(scope="module")
def engine(serving_model_dir, tmp_path_factory):
    return Engine.from_pretrained(
        serving_model_dir, device="cpu", feature_cache=tmp_path_factory.mktemp("one-path-cache")
    )


def test_cli_api_server_and_eval_give_the_tokens_of_ask(engine, serving_model_dir, demo_video_path):
    reference = engine.ask(demo_video_path, QUESTION, temperature=0, max_new_tokens=8)
    assert reference.token_ids and reference.visual_tokens == 8

    # The console script, in its own process (it reads the features this engine cached).
    result = subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", "ask", str(demo_video_path), QUESTION, "--model",
         str(serving_model_dir), "--temperature", "0", "--max-new-tokens", "8", "--json",
         "--cache-dir", str(engine.feature_cache.root)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["answer"] == reference.text

    # The Python API over the same engine, with the decoded frames instead of the file.
    from llamavid.api import LlamaVid
    from llamavid.data import decode_video

    frames = decode_video(demo_video_path, fps=1.0)
    assert (
        LlamaVid(engine).ask(frames, QUESTION, temperature=0, max_new_tokens=8).token_ids
        == reference.token_ids
    )

    # The evaluation harness's predictor, with the frames as an array (how benchmark loaders hand them over).
    from llamavid.eval.predictor import GenerationSettings, ModelPredictor, PredictRequest

    predictor = ModelPredictor(engine.model, engine.processor)
    settings = GenerationSettings.for_task("image_eval", max_new_tokens=8)
    [predicted] = predictor.predict([PredictRequest.single(QUESTION, media=frames.frames)], settings, seed=0)
    assert predicted == reference.text

    # The OpenAI-compatible server, with the video as a data: URL.
    require_module("fastapi")
    import httpx

    from llamavid.serve.app import RunningServer, ServerConfig, create_app

    payload = base64.b64encode(demo_video_path.read_bytes()).decode()
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{payload}"}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        "temperature": 0,
        "max_tokens": 8,
    }
    with RunningServer(create_app(engine, ServerConfig(max_frames=None))) as server:
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == reference.text


def test_eval_synth_gives_the_answers_of_ask():
    from llamavid.cli.eval_synth import evaluate
    from llamavid.inference.loading import default_model_path
    from llamavid.synth import generate_items

    model_dir = default_model_path()
    assert model_dir is not None
    results = evaluate(model_dir, ["video_qa", "image_qa"], items_per_set=4)
    engine = Engine.from_pretrained(model_dir, device="cpu", feature_cache=False)
    size = engine.model.config.vision_config.image_size
    for set_name in ("video_qa", "image_qa"):
        items = generate_items("heldout", 4, seed=0, kind=set_name)
        for item, example in zip(items, results["sets"][set_name]["examples"], strict=False):
            assert example["question"] == item.question
            if set_name == "video_qa":
                media = item.media.render(size)
            else:
                from llamavid.synth import render_frame

                media = render_frame(item.media, size)
            assert isinstance(media, np.ndarray)
            answer = engine.ask(media, item.question, temperature=0, max_new_tokens=6)
            assert answer.text == example["predicted"]
