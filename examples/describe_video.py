"""Describe a video from Python: write a short clip with PyAV, load a model once, ask, stream, chat, explain.

python examples/describe_video.py                 # embedded tiny model (random until it ships)
python examples/describe_video.py --model FOLDER  # any llamavid model folder
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
import numpy as np

import llamavid


def write_clip(path: Path, seconds: int = 6, fps: int = 4, size: int = 112) -> Path:
    """A red square crossing a grey frame left to right, encoded as H.264."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(seconds * fps):
            frame = np.full((size, size, 3), 120, dtype=np.uint8)
            left = index * (size - 28) // (seconds * fps - 1)
            frame[42:70, left : left + 28] = (220, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="llamavid model folder (default: embedded tiny model)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    model = llamavid.load(args.model, device="auto")
    with tempfile.TemporaryDirectory() as folder:
        clip = model.prepare(write_clip(Path(folder) / "square.mp4"), fps=1)  # decode + encode frames once
        greedy = dict(temperature=0, max_new_tokens=args.max_new_tokens)

        answer = model.ask(clip, "Which way does the red square move?", **greedy)
        print(f"{clip.num_frames} frames -> {answer.visual_tokens} visual tokens; answer: {answer}")

        print("streamed: ", end="")
        for piece in model.stream(clip, "Describe the video.", **greedy):
            print(piece, end="", flush=True)
        print()

        chat = model.chat(clip, **greedy)
        chat.ask("What colour is the square?")
        chat.ask("And the background?")
        print(f"chat turns: {len(chat.history)}")

        relevance = model.attention(clip, "When is the square on the right?", out=Path(folder) / "strip.png")
        print(f"most relevant frame: {int(np.argmax(relevance.relevance))} of {clip.num_frames}")


if __name__ == "__main__":
    main()
