"""``llamavid live SOURCE``: ask about a video stream while it plays (`llamavid.inference.live`).

Questions come one per line from stdin (or from ``--questions FILE``, required when SOURCE is ``-`` because
stdin then carries the stream). A line ``@T question`` waits until the stream reaches T (``90``, ``1m30s``)
before asking; a plain line is asked about what has arrived so far. Each question gets one answer line on
stdout (a JSON object with ``--json``); a status line (position, lag, frames/s) goes to stderr every
``--status-interval`` seconds. At the end of the questions the pending ones are answered, then the command
waits for the source to end and exits 0 (2 when the source failed).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llamavid.cli._engine_options import add_engine_arguments, build_engine, print_json

_END = object()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "live",
        help="ask about a live video stream (a growing file, a pipe or stdin) while it plays",
        description="Read SOURCE as it arrives (a file still being written, a FIFO, or - for stdin carrying "
        "MPEG-TS/Matroska or raw RGB frames with --raw), store its frame features in the feature cache, and "
        "answer each question line (stdin, or --questions) about the frames seen so far. '@T question' waits "
        "for stream time T first. One answer line per question on stdout, status lines on stderr.",
    )
    parser.add_argument("source", help="growing video file, FIFO, or - for stdin")
    parser.add_argument(
        "--questions",
        type=Path,
        default=None,
        help="file of question lines (needed when SOURCE is -; default: read questions from stdin)",
    )
    live = parser.add_argument_group("live")
    live.add_argument("--fps", type=float, default=1.0, help="frames sampled per second (default 1)")
    live.add_argument("--window", default=None, help="ask about the last WINDOW only (e.g. 10m, 90s)")
    live.add_argument(
        "--context-policy",
        default="relevance",
        choices=("relevance", "uniform", "recent", "refuse"),
        help="frames to show when everything seen exceeds the context (default relevance; see docs/live.md)",
    )
    live.add_argument("--session-id", default=None, help="resume (or name) the session's cache entry")
    live.add_argument(
        "--raw", default=None, metavar="WxH", help="SOURCE carries raw RGB24 frames of this size"
    )
    live.add_argument("--raw-fps", type=float, default=None, help="frame rate of --raw input (default --fps)")
    live.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="end the source after this many seconds without new data (default: 10 for files, never for pipes)",
    )
    live.add_argument(
        "--end-marker", type=Path, default=None, help="a growing file ends when this file appears"
    )
    live.add_argument(
        "--max-frames",
        type=int,
        default=512,
        help="the most frames one answer shows; more are chosen by --context-policy (default 512; 0: as many "
        "as the context takes)",
    )
    live.add_argument(
        "--subtitles",
        type=Path,
        default=None,
        metavar="FILE",
        help=".srt/.vtt file that grows with the stream (cue times in stream time); followed as it is written",
    )
    live.add_argument(
        "--subtitle-encoding", default=None, help="the subtitle file's encoding (default: detected)"
    )
    live.add_argument(
        "--asr",
        action="store_true",
        help="also recognise the stream's speech (its audio track) into timed cues, like --subtitles "
        '(offline pocketsphinx, en-us; needs pip install "llamavid[asr]")',
    )
    live.add_argument(
        "--status-interval", type=float, default=10.0, help="seconds between status lines (default 10)"
    )
    add_engine_arguments(parser, media=False)
    parser.set_defaults(func=run)


def _status(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _raw_size(text: str | None) -> tuple[int, int] | None:
    from llamavid.errors import InvalidInputError

    if text is None:
        return None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"--raw must be WIDTHxHEIGHT (e.g. 640x480), got {text!r}.") from None
    if width < 1 or height < 1:
        raise InvalidInputError(f"--raw must be positive, got {text!r}.")
    return width, height


def parse_question(line: str) -> tuple[float | None, str] | None:
    """``"@1m What?"`` -> ``(60.0, "What?")``; ``"What?"`` -> ``(None, "What?")``; blank or ``#`` -> None."""
    from llamavid.errors import InvalidInputError
    from llamavid.inference.live import parse_window

    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("@"):
        when, _, question = text[1:].partition(" ")
        if not question.strip():
            raise InvalidInputError(f"question line {line.strip()!r} has a time but no question.")
        seconds = 0.0 if when.strip() in ("0", "0s") else parse_window(when)
        return seconds, question.strip()
    return None, text


def _read_questions(stream: Any, out: queue.Queue) -> None:
    try:
        for line in stream:
            out.put(line)
    finally:
        out.put(_END)


def run(args: argparse.Namespace) -> int:
    from llamavid.errors import InvalidInputError, LlamaVidError
    from llamavid.inference.live import LiveSession, parse_window

    if args.source == "-" and args.questions is None:
        raise InvalidInputError(
            "SOURCE - reads the stream from stdin; pass the questions with --questions FILE."
        )
    if args.questions is not None and not args.questions.is_file():
        raise InvalidInputError(f"{args.questions}: no such questions file.")
    if args.fps <= 0 or args.status_interval <= 0:
        raise InvalidInputError("--fps and --status-interval must be positive.")
    if args.max_frames < 0:
        raise InvalidInputError(f"--max-frames must be 0 (no limit) or more, got {args.max_frames}.")
    parse_window(args.window)  # fail before loading the model
    raw_size = _raw_size(args.raw)
    if args.asr:  # fail before loading the model
        from llamavid.inference.asr import check_source, load_recogniser

        check_source(raw_size is not None, False, args.source)
        load_recogniser()
    engine = build_engine(args)
    source: Any = sys.stdin.buffer if args.source == "-" else args.source
    session = LiveSession(
        engine,
        source,
        fps=args.fps,
        session_id=args.session_id,
        raw_size=raw_size,
        raw_fps=args.raw_fps,
        idle_timeout=args.idle_timeout,
        end_marker=args.end_marker,
        context_policy=args.context_policy,
        max_frames=args.max_frames or None,
        subtitles=args.subtitles,
        subtitle_encoding=args.subtitle_encoding,
        asr=args.asr,
    )
    lines: queue.Queue = queue.Queue()
    handle = args.questions.open(encoding="utf-8") if args.questions is not None else sys.stdin
    reader = threading.Thread(target=_read_questions, args=(handle, lines), daemon=True)
    reader.start()
    next_status = time.monotonic() + args.status_interval

    def tick() -> None:
        nonlocal next_status
        if time.monotonic() >= next_status:
            _status(args, session.status.line())
            next_status = time.monotonic() + args.status_interval

    try:
        while True:
            try:
                item = lines.get(timeout=min(args.status_interval, 1.0))
            except queue.Empty:
                tick()
                continue
            if item is _END:
                break
            try:
                parsed = parse_question(item)
                if parsed is None:
                    continue
                at, question = parsed
                # Wait (printing status) until the stream reaches the question's time, or has a first frame.
                while True:
                    status = session.wait(
                        frames=1 if at is None else None, position=at, timeout=min(args.status_interval, 1.0)
                    )
                    tick()
                    if (
                        status.finished
                        or (at is None and status.frames)
                        or (at is not None and status.position is not None and status.position >= at)
                    ):
                        break
                answer = session.ask(question, window=args.window)
            except LlamaVidError as error:
                print(f"llamavid live: error: {error}", file=sys.stderr, flush=True)
                if args.json:
                    print_json({"question": item.strip(), "error": str(error)})
                else:
                    print("", flush=True)
                continue
            if args.json:
                print_json({"question": question, **answer.to_dict()})
            else:
                print(" ".join(answer.text.split()), flush=True)
        while not session.wait(timeout=min(args.status_interval, 1.0)).finished:
            tick()
    except KeyboardInterrupt:
        session.close()
        raise
    finally:
        if args.questions is not None:
            handle.close()
    status = session.close()
    _status(args, status.line())
    if status.state == "failed":
        print(f"llamavid live: error: {status.message}", file=sys.stderr, flush=True)
        return 2
    return 0
