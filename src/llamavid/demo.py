"""Media and models for demos, examples and tests that need no download: generated clips, a random tiny model.

`llamavid demo`, the web UI's example and the test-suite build on these. The *trained* tiny model ships in
`llamavid/assets/tiny-llamavid`; the random model here only exercises the plumbing (its answers are noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def generated_video(frames: int, size: int = 112) -> np.ndarray:
    """A red square moving left to right over a grey background, ``(T, size, size, 3)`` uint8."""
    video = np.full((frames, size, size, 3), 120, dtype=np.uint8)
    side = size // 4
    for index in range(frames):
        left = int(index * (size - side) / max(frames - 1, 1))
        top = size // 2 - side // 2
        video[index, top : top + side, left : left + side] = (220, 30, 30)
    return video


def write_demo_video(path: Path, seconds: int, fps: int = 4, size: int = 112) -> Path:
    """Encode the moving-square clip as an H.264 MP4 with PyAV (``seconds * fps`` frames)."""
    import av

    frames = generated_video(seconds * fps, size)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def build_random_demo_model(seed: int):
    """A tiny LLaMA-VID (widths 64, 2 layers) with random weights and the packaged demo tokenizer."""
    from transformers import LlamaTokenizer

    from llamavid import LlamaVidConfig, LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.assets import DEMO_TOKENIZER_DIR

    tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    config = LlamaVidConfig(
        vision_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=112
        ),
        qformer_config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        num_query=8,
        compress_type="mean",
    )
    torch.manual_seed(seed)
    model = LlamaVidForConditionalGeneration(config).eval()
    return model, LlamaVidProcessor.from_config(config, tokenizer)


def synthetic_question_clip(
    seed: int = 0, question_type: str = "video_direction"
) -> tuple[np.ndarray, str, str]:
    """A held-out clip of the synthetic world the tiny model was trained on: ``(frames, question, answer)``."""
    from llamavid.synth.clips import make_clip_question

    item = make_clip_question(np.random.default_rng(seed), "heldout", question_type, f"demo-{seed}")
    return item.media.render(), item.question, item.answer


def write_clip(frames: np.ndarray, path: Path, fps: int = 1) -> Path:
    """Encode frames losslessly (FFV1 in Matroska) so colours reach the model exactly as rendered."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path
