"""``llamavid web``: the Gradio web UI (upload a video or image, chat, see which frames mattered)."""

from __future__ import annotations

import argparse
import os

from llamavid.cli import CommandError
from llamavid.cli._engine_options import add_engine_arguments, build_engine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "web",
        help="open the web UI: upload a video or image and chat about it",
        description="Start a local Gradio app (analytics off, no CDN): upload a video or image (+ optional "
        ".srt/.vtt), ask questions over several turns and see the per-frame relevance of the last answer.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-frames", type=int, default=256, help="cap on sampled frames per upload")
    parser.add_argument(
        "--fps", type=float, default=1.0, help="frames sampled per second (default 1, as trained)"
    )
    parser.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="the Live tab may watch growing files and FIFOs under DIR (repeatable; default: none, tab off)",
    )
    parser.add_argument(
        "--max-live-sessions", type=int, default=2, help="live sessions open at once (default 2)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=200.0,
        help="refuse uploads larger than this many MB (default 200); uploads are deleted once encoded",
    )
    add_engine_arguments(parser, media=False, output=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.max_upload_mb > 0:
        raise CommandError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}.")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from llamavid.serve.webui import build_ui, launch
    except ImportError as error:
        raise CommandError(
            f"the web UI needs the serving extra ({error.name} is missing): pip install 'llamavid[serve]'"
        ) from None
    engine = build_engine(args)
    demo = build_ui(
        engine,
        fps=args.fps,
        max_frames=args.max_frames,
        max_upload_mb=args.max_upload_mb,
        live_roots=args.allowed_root,
        max_live_sessions=args.max_live_sessions,
    )
    print(
        f"web UI for {engine.name} on http://{args.host}:{args.port} (uploads up to {args.max_upload_mb:g} MB)"
    )
    print("No video at hand? `llamavid sample DIR` writes some to try.", flush=True)
    launch(demo, host=args.host, port=args.port)
    return 0
