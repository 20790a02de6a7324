"""``llamavid chat MEDIA``: a multi-turn conversation read from stdin, one question per line.

Commands: ``/reset`` (forget the conversation, keep the video), ``/save FILE`` (conversation as JSON),
``/attention FILE`` (relevance strip for the last question), ``/quit``. The frames are encoded once; each turn
only re-runs the Q-Former for the new question and the LLM (docs/architecture.md §5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llamavid.cli._engine_options import (
    add_engine_arguments,
    build_engine,
    check_media_path,
    media_options,
    print_json,
    print_piece,
)
from llamavid.errors import InvalidInputError

HELP = "commands: /reset  /save FILE  /attention FILE  /quit"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="multi-turn chat about a video or image (reads questions from stdin)",
        description=f"Encode MEDIA once, then answer one question per stdin line, streaming each answer. {HELP}. "
        "With --json, print one JSON object per turn.",
    )
    parser.add_argument("media", type=Path, help="video file, image file or folder of frames")
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def _command(session, line: str, as_json: bool) -> bool:
    """Run a slash command; returns False on /quit."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        message = {"event": "reset"}
    elif name in ("/save", "/attention"):
        if not argument:
            raise InvalidInputError(
                f"{name} needs a file name, e.g. {name} out.{'json' if name == '/save' else 'png'}"
            )
        path = session.save(argument) if name == "/save" else session.attention().save(argument)
        message = {"event": name[1:], "path": str(path)}
    else:
        raise InvalidInputError(f"unknown command {name!r}; {HELP}")
    if as_json:
        print_json(message)
    else:
        print(f"[{message['event']}{' -> ' + message['path'] if 'path' in message else ''}]")
    return True


def run(args: argparse.Namespace) -> int:
    check_media_path(args.media)
    options = media_options(args)
    engine = build_engine(args)
    session = engine.chat(args.media, **options)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{session.media.num_frames} frames encoded. {HELP}", file=sys.stderr)
    while True:
        if interactive:
            print("USER: ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            try:
                if not _command(session, line, args.json):
                    return 0
            except ValueError as error:  # a typo in a command should not end the conversation
                print(f"llamavid chat: error: {error}", file=sys.stderr)
            continue
        if args.json:
            answer = session.ask(line)
            print_json({"turn": len(session.history), **answer.to_dict()})
        else:
            if interactive:
                print("ASSISTANT: ", end="", file=sys.stderr, flush=True)
            session.ask(line, on_delta=print_piece)
            print_piece("\n")
