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
    add_engine_arguments(parser, media=False, output=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from llamavid.serve.webui import build_ui, launch
    except ImportError as error:
        raise CommandError(
            f"the web UI needs the serving extra ({error.name} is missing): pip install 'llamavid[serve]'"
        ) from None
    engine = build_engine(args)
    demo = build_ui(engine, fps=args.fps, max_frames=args.max_frames)
    print(f"web UI for {engine.name} on http://{args.host}:{args.port}", flush=True)
    launch(demo, host=args.host, port=args.port)
    return 0
