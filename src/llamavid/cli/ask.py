"""``llamavid ask MEDIA "question"``: one answer, streamed to stdout as it is generated."""

from __future__ import annotations

import argparse
from pathlib import Path

from llamavid.cli._engine_options import (
    add_engine_arguments,
    build_engine,
    check_media_path,
    media_options,
    print_json,
    print_piece,
    report,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ask",
        help="answer one question about a video, an image or a folder of frames",
        description="Decode MEDIA at --fps (default 1), ask QUESTION and stream the answer to stdout. Video "
        "features go through the feature cache, so asking again (or after `llamavid ingest`) skips encoding. "
        "With --json, print one object: answer, token counts, frames, timing, model.",
    )
    parser.add_argument("media", type=Path, help="video file, image file or folder of frames")
    parser.add_argument("question", help="the question about the media")
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_media_path(args.media)
    options = media_options(args)
    engine = build_engine(args)
    request = engine.prepare_question(args.media, args.question, **options)
    assert request.budget is not None and request.media is not None
    media = request.media
    report(args, f"{media.num_frames} frames -> {request.budget.describe()}")
    on_delta = None if args.json else (lambda row, text: print_piece(text))
    answer = engine.answer(request, on_delta=on_delta)
    if args.json:
        print_json(
            {
                **engine.describe(),
                "media": str(args.media),
                **answer.to_dict(),
                "frames_capped": media.frames_capped,
                "feature_cache": None if media.cache_entry is None else media.cache_entry.digest,
            }
        )
    else:
        print_piece("\n")
    return 0
