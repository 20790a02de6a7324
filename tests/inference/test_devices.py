"""Device and dtype behaviour: CPU checks always run; accelerator checks run where CUDA or MPS exists
(``make test-gpu`` selects them; they are skipped, with the reason, on CPU-only machines such as CI)."""

from __future__ import annotations

import pytest
import torch

from llamavid.errors import InvalidInputError
from llamavid.inference.engine import Engine
from llamavid.inference.loading import resolve_device, resolve_dtype
from llamavid.testing import moving_square_video


def _accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


def test_auto_picks_float32_on_cpu_and_refuses_unknown_names():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(InvalidInputError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(InvalidInputError, match="not a device name"):
        resolve_device("gpu-please")
    if _accelerator() is None:
        with pytest.raises(InvalidInputError, match="not available"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_the_engine_runs_on_the_accelerator_with_its_auto_dtype(serving_model_dir, demo_video_path, tmp_path):
    device = _accelerator()
    engine = Engine.from_pretrained(serving_model_dir, device="auto", feature_cache=tmp_path / "cache")
    assert engine.device.type == device
    assert engine.dtype in (torch.bfloat16, torch.float16)
    answer = engine.ask(demo_video_path, "Which way does it move?", temperature=0, max_new_tokens=6)
    assert answer.visual_tokens == 8 and answer.finish_reason in ("stop", "length")

    # The cache entry written in half precision on the accelerator serves float32 on the CPU.
    cpu = Engine.from_pretrained(serving_model_dir, device="cpu", feature_cache=tmp_path / "cache")
    calls: list[int] = []
    original = cpu.model.model.get_vision_features
    cpu.model.model.get_vision_features = lambda pixels: calls.append(1) or original(pixels)  # type: ignore[method-assign]
    assert cpu.load_media(demo_video_path).cache_entry is not None and calls == []


@pytest.mark.gpu
def test_half_precision_forward_on_the_accelerator_tracks_float32_on_the_cpu(serving_model_dir):
    device = _accelerator()
    video = moving_square_video(4, 64)
    question = "Which way does the square move?"
    outputs = {}
    for name, where, dtype in (("cpu", "cpu", torch.float32), ("half", device, torch.bfloat16)):
        engine = Engine.from_pretrained(serving_model_dir, device=where, dtype=dtype, feature_cache=False)
        request = engine.build_request(
            question, engine.load_media(video), settings=engine.settings(temperature=0)
        )
        ids = torch.tensor([request.input_ids], device=engine.device)
        with torch.no_grad():
            logits = engine.model(input_ids=ids, visual_tokens=request.visual_tokens).logits[0, -1]
        outputs[name] = logits.float().cpu()
    assert torch.isfinite(outputs["half"]).all()
    similarity = torch.nn.functional.cosine_similarity(outputs["half"], outputs["cpu"], dim=0)
    assert similarity > 0.99, f"bf16 logits drifted from fp32 (cosine {similarity:.4f})"
    assert int(outputs["cpu"].argmax()) in torch.topk(outputs["half"], 3).indices.tolist()
