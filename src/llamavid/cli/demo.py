"""``llamavid demo``: answer a question about a generated video (placeholder until the model lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="answer a question about a generated video with the embedded model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("llamavid demo: the model is not implemented yet.")
    return 0
