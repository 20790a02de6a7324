"""``llamavid data longqa``: generate Long-VideoQA training pairs for one movie through an LLM endpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llamavid.errors import MissingFileError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="build training data (longqa: movie QA generation)")
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    longqa = commands.add_parser(
        "longqa",
        help="generate summary / plot+character / reasoning+detail QA from a synopsis and a script",
        description="Prompts an OpenAI-compatible endpoint (the paper's long-video QA recipe), validates and de-duplicates the pairs and "
        "writes them in the training JSON format. Replies are cached next to --out; rerunning resumes.",
    )
    longqa.add_argument("--synopsis", required=True, type=Path, help="movie synopsis (text file)")
    longqa.add_argument("--script", required=True, type=Path, help="movie script (text file)")
    longqa.add_argument("--endpoint", required=True, help="OpenAI-compatible API base URL (no default host)")
    longqa.add_argument(
        "--model", default="gpt-4", help="model id at the endpoint (default gpt-4, as the paper)"
    )
    longqa.add_argument(
        "--out", required=True, type=Path, help="output JSON list (items of other movies are kept)"
    )
    longqa.add_argument("--movie-id", default=None, help="item id prefix (default: synopsis file stem)")
    longqa.add_argument(
        "--video", default=None, help="value of each item's 'video' field (default: MOVIE_ID.npz)"
    )
    longqa.add_argument(
        "--max-chars", type=int, default=60_000, help="truncate the script to this many characters"
    )
    longqa.set_defaults(func=run_longqa)


def run_longqa(args: argparse.Namespace) -> int:
    from llamavid.data.longqa import generate_longqa
    from llamavid.eval.judge import JudgeClient

    for path in (args.synopsis, args.script):
        if not path.is_file():
            raise MissingFileError(f"{path} not found; pass the movie's synopsis and script as text files.")
    movie_id = args.movie_id or args.synopsis.stem
    client = JudgeClient(args.endpoint, args.model, temperature=0.7, max_tokens=None)
    try:
        summary = generate_longqa(
            args.synopsis.read_text(encoding="utf-8"),
            args.script.read_text(encoding="utf-8"),
            client,
            args.out,
            movie_id,
            args.video or f"{movie_id}.npz",
            max_chars=args.max_chars,
        )
    finally:
        client.close()
    print(
        f"{movie_id}: wrote {summary['written']} QA items to {args.out} ({summary['kinds']}, "
        f"{summary['duplicates']} duplicates dropped{', script truncated' if summary['truncated'] else ''})"
    )
    for kind, error in summary["errors"].items():
        print(f"  {kind}: FAILED: {error}", file=sys.stderr)
    return 1 if summary["errors"] else 0
