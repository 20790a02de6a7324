"""``llamavid sample OUT_DIR``: write a clip, a movie with subtitles and questions to try every command on."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

_PLAIN = re.compile(r"[\w./+:=@%,-]+")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="write sample videos (clip.mp4, movie.mp4 + movie.srt) and questions to try the commands on",
        description=(
            "Write OUT_DIR/clip.mp4 (a short clip), OUT_DIR/movie.mp4 with its subtitles OUT_DIR/movie.srt (a "
            "long episode with a secret said once in the dialogue) and OUT_DIR/questions.txt (questions with "
            "the answers they should get), then print commands to try. The videos come from the synthetic world "
            "the embedded tiny model was trained on (held-out items), so its answers can be checked."
        ),
    )
    parser.add_argument(
        "out_dir", type=Path, metavar="OUT_DIR", help="folder to write into (created if needed)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which generated clip and movie (default 0)")
    parser.add_argument(
        "--movie-frames",
        type=int,
        default=600,
        help="length of the movie in seconds, one frame per second (default 600: 10 minutes)",
    )
    parser.set_defaults(func=run)


def _quote(text: str) -> str:
    """Quote for a POSIX shell, preferring double quotes so a question with an apostrophe stays readable."""
    if _PLAIN.fullmatch(text):
        return text
    if not any(char in text for char in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def run(args: argparse.Namespace) -> int:
    from llamavid.demo import write_samples

    samples = write_samples(args.out_dir, seed=args.seed, movie_frames=args.movie_frames)
    minutes, seconds = divmod(samples.movie_seconds, 60)
    length = f"{minutes} min {seconds} s" if seconds else f"{minutes}-minute"
    rows = [
        (samples.clip, f"{samples.clip_seconds}-second clip: a shape moves"),
        (samples.movie, f"{length} episode at 1 fps: characters talk, one says a secret number"),
        (samples.subtitles, "the movie's dialogue (pass it with --subtitles)"),
        (samples.questions_file, "questions with the answers they should get"),
    ]
    width = max(len(str(path)) for path, _ in rows)
    print("Sample media from the synthetic world the embedded tiny model was trained on:")
    for path, what in rows:
        print(f"  {str(path):<{width}}  {what}")
    print("\nTry (greedy, so the answers are reproducible):")
    for question in samples.questions:
        words = ["llamavid", "ask", str(question.media), question.question]
        if question.subtitles is not None:
            words += ["--subtitles", str(question.subtitles)]
        words += ["--temperature", "0"]
        print(f"  {' '.join(_quote(word) for word in words)}  # expected: {question.answer}")
    print(f"  llamavid chat {_quote(str(samples.clip))}")
    print(
        f"  llamavid attention {_quote(str(samples.clip))} {_quote(samples.questions[0].question)} --out strip.png"
    )
    print(f"  llamavid web   # then upload {samples.clip} (or the movie and its .srt)")
    return 0
