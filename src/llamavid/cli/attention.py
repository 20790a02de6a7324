"""``llamavid attention MEDIA "question" --out strip.png``: which frames the context tokens looked at."""

from __future__ import annotations

import argparse
from pathlib import Path

from llamavid.cli._engine_options import (
    add_engine_arguments,
    build_engine,
    check_media_path,
    media_options,
    print_json,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attention",
        help="draw per-frame relevance and patch attention for a question",
        description="Compute the context-token attention of QUESTION over every sampled frame of MEDIA (no "
        "generation) and write a strip image: one tile per frame with the attended patches in red and a "
        "relevance bar underneath. Prints the relevance per frame (or JSON with --json).",
    )
    parser.add_argument("media", type=Path, help="video file, image file or folder of frames")
    parser.add_argument("question", help="the question the context tokens follow")
    parser.add_argument("--out", type=Path, required=True, help="image to write (.png, .jpg, ...)")
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_media_path(args.media)
    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        from llamavid.errors import InvalidInputError

        raise InvalidInputError(
            f"--out {args.out}: expected an image file name ending in .png, .jpg, .webp or .bmp."
        )
    options = media_options(args)
    engine = build_engine(args)
    result = engine.attention(args.media, args.question, **options)
    result.save(args.out)
    if args.json:
        print_json({**engine.describe(), "media": str(args.media), "out": str(args.out), **result.to_dict()})
        return 0
    for time, relevance in zip(result.timestamps, result.relevance, strict=True):
        bar = "#" * int(round(40 * relevance / max(result.relevance.max(), 1e-12)))
        print(f"{time:8.2f}s {relevance:7.2%} {bar}")
    print(f"wrote {args.out}")
    return 0
