"""``llamavid demo``: answer a question about a generated video, end to end, with no model download.

Until the trained tiny model ships, the demo builds a *randomly initialised* tiny LLaMA-VID and says so: the
answer shows that frames -> 2 tokens per frame -> LLM -> text runs on this machine, not that it is right.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="answer a question about a generated video with the embedded model",
        description=(
            "Write a short MP4 (a red square moving right), decode it at 1 fps, ask a question about it and print "
            "the answer. "
            "Runs offline on CPU in seconds."
        ),
    )
    parser.add_argument("--question", default="Which way does the red square move?", help="question to ask")
    parser.add_argument(
        "--frames", type=int, default=8, help="number of generated frames at 1 fps (default 8)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=12, help="answer length limit (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random demo weights")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}.")
    start = time.perf_counter()
    from llamavid.data import decode_video

    model, processor = build_random_demo_model(args.seed)
    with tempfile.TemporaryDirectory(prefix="llamavid-demo-") as folder:
        # The real path: a video file on disk, decoded and sampled at 1 fps like the paper.
        video = decode_video(write_demo_video(Path(folder) / "demo.mp4", seconds=args.frames), fps=1.0).frames
    prompt = processor.apply_chat_template([{"role": "user", "content": f"<image>\n{args.question}"}])
    inputs = processor(prompt, media=video, questions=args.question)
    visual_tokens = int((inputs["input_ids"] < 0).sum())
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1] :])
    result = {
        "model": "random tiny LLaMA-VID (untrained: the answer is noise until the trained tiny model ships)",
        "video": f"generated {args.frames}-second MP4, sampled at 1 fps: a red square moving right",
        "question": args.question,
        "visual_tokens": visual_tokens,
        "answer": answer,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model:    {result['model']}")
        print(f"video:    {result['video']} -> {visual_tokens} visual tokens (2 per frame)")
        print(f"question: {args.question}")
        print(f"answer:   {answer!r}")
        print(f"({result['seconds']} s on {next(model.parameters()).device})")
    return 0
