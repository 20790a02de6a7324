"""``llamavid demo``: answer a question about a generated video, end to end, with no model download.

With the embedded tiny model (``llamavid/assets/tiny-llamavid``), the video is a held-out clip of the synthetic
world it was trained on, so the expected answer is known and printed beside the model's. Without it (or with
``--random``) a randomly initialised tiny model answers about a moving-square clip, and says its answer is noise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="answer a question about a generated video with the embedded model",
        description=(
            "Write a short video file, decode it at 1 fps, ask a question about it and print the answer. Uses the "
            "embedded tiny model (trained on a synthetic world) and runs offline on CPU in seconds."
        ),
    )
    parser.add_argument(
        "--question", default=None, help="your own question (default: the clip's own question)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which generated clip (default 0)")
    parser.add_argument(
        "--frames", type=int, default=8, help="length of the random-model clip in seconds (default 8)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=12, help="answer length limit (default 12)")
    parser.add_argument(
        "--random", action="store_true", help="use a random tiny model instead of the trained one"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to keep the generated clip in (default: a new temporary folder, printed)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from llamavid.data import decode_video
    from llamavid.demo import SAMPLE_FRAME_SIZE, encode_mp4, synthetic_question_clip, write_demo_video
    from llamavid.errors import InvalidInputError
    from llamavid.inference.engine import Engine
    from llamavid.inference.loading import default_model_path

    if args.frames < 1:
        raise InvalidInputError(f"--frames must be at least 1, got {args.frames}.")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"--out {args.out} is a file; name a folder to keep the clip in.")
    transformers_logging.disable_progress_bar()
    start = time.perf_counter()
    trained = default_model_path() is not None and not args.random
    engine = (
        Engine.from_pretrained(None, device="cpu", feature_cache=False)
        if trained
        else Engine.random(seed=0, device="cpu")
    )
    folder = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="llamavid-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    if trained:
        frames, question, expected = synthetic_question_clip(args.seed, size=SAMPLE_FRAME_SIZE)
        path = encode_mp4(frames, folder / "clip.mp4")
        description = (
            f"generated {len(frames)}-second clip of the synthetic world (held-out seed {args.seed})"
        )
    else:
        path = write_demo_video(folder / "clip.mp4", seconds=args.frames)
        question, expected = "Which way does the red square move?", None
        description = f"generated {args.frames}-second MP4: a red square moving right"
    question = args.question or question
    if args.question:
        expected = None
    # The real path: a video file on disk, decoded and sampled at 1 fps like the paper.
    video = decode_video(path, fps=1.0)
    answer = engine.ask(video, question, temperature=0, max_new_tokens=args.max_new_tokens)
    result = {
        "model": engine.name if trained else "random tiny LLaMA-VID (untrained: its answer is noise)",
        "video": description,
        "path": str(path),
        "frames": len(video),
        "visual_tokens": answer.visual_tokens,
        "question": question,
        "answer": answer.text,
        "expected": expected,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model:    {result['model']}")
    print(
        f"video:    {description} -> {len(video)} frames at 1 fps, {answer.visual_tokens} visual tokens (2 per frame)"
    )
    print(f"file:     {path}")
    print(f"question: {question}")
    print(f"answer:   {answer.text}")
    if expected is not None:
        verdict = "correct" if expected in answer.text.lower().split() else "wrong"
        print(f"expected: {expected} ({verdict})")
    print(f"({result['seconds']} s on cpu)")
    print(f'next:     llamavid ask {shlex.quote(str(path))} "your question" --temperature 0')
    print("          llamavid sample DIR   (a clip, a 10-minute movie with subtitles, questions to try)")
    return 0
