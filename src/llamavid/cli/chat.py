"""``llamavid chat MEDIA``: a multi-turn conversation read from stdin, one question per line.

Commands: ``/help``, ``/reset`` (forget the conversation, keep the video), ``/save FILE`` (conversation as JSON),
``/attention FILE`` (relevance strip for the last question), ``/quit``. The frames are encoded once; each turn
only re-runs the Q-Former for the new question and the LLM (docs/architecture.md §5). In a terminal, lines are
read with the standard library's ``readline`` (arrow keys, editing, history kept across sessions); piped input
is read line by line as it comes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
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

HELP = "commands: /help  /reset  /save FILE  /attention FILE  /quit"
COMMANDS = (
    ("/help", "this list"),
    ("/reset", "forget the conversation (the video stays encoded)"),
    ("/save FILE", "write the conversation as JSON"),
    ("/attention FILE", "write the relevance strip of the last question (PNG)"),
    ("/quit", "leave (also Ctrl-D)"),
)
HISTORY_FILE = Path("~/.cache/llamavid/chat_history")
HISTORY_LENGTH = 1000
PROMPT = "USER: "


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="multi-turn chat about a video or image (reads questions from stdin)",
        description=f"Encode MEDIA once, then answer one question per stdin line, streaming each answer. {HELP}. "
        "In a terminal, arrow keys edit the line and recall earlier questions (history in "
        f"{HISTORY_FILE}, the last {HISTORY_LENGTH} lines). With --json, print one JSON object per turn.",
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
    if name == "/help":
        width = max(len(command) for command, _ in COMMANDS)
        lines = [f"  {command:<{width}}  {what}" for command, what in COMMANDS]
        if as_json:
            print_json({"event": "help", "commands": [command for command, _ in COMMANDS]})
        else:
            note = (
                f"In a terminal, arrow keys edit the line and Up/Down recall earlier ones ({HISTORY_FILE})."
            )
            print("\n".join(["commands:", *lines, note]), flush=True)
        return True
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


def _terminal_reader() -> Callable[[], str | None] | None:
    """``input`` with line editing and a bounded history file, when both stdin and stdout are terminals."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain lines
        return None
    import atexit

    history = HISTORY_FILE.expanduser()
    with contextlib.suppress(OSError):  # first session, or an unreadable file: start empty
        readline.read_history_file(history)
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        with contextlib.suppress(OSError):  # a read-only home must not turn the end of a chat into an error
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)

    atexit.register(save)

    def read() -> str | None:
        while True:
            try:
                return input(PROMPT)
            except EOFError:  # Ctrl-D
                print(file=sys.stderr)
                return None
            except KeyboardInterrupt:  # Ctrl-C drops the line being typed, as in a shell
                print(file=sys.stderr)

    return read


def run(args: argparse.Namespace) -> int:
    check_media_path(args.media)
    options = media_options(args)
    engine = build_engine(args)
    session = engine.chat(args.media, **options)
    interactive = sys.stdin.isatty()
    read_line = _terminal_reader()
    if interactive:
        print(f"{session.media.num_frames} frames encoded. Ask a question, or /help.", file=sys.stderr)
    while True:
        if read_line is not None:
            line = read_line()
        else:
            if interactive:
                print(PROMPT, end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline() or None
        if line is None:
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
