"""Entry point of the ``llamavid`` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from llamavid import __version__
from llamavid.cli import COMMAND_MODULES, CommandError
from llamavid.errors import LlamaVidError

__all__ = ["CommandError", "build_parser", "main"]


def _command_modules() -> list[str]:
    modules = list(COMMAND_MODULES)
    for entry_point in entry_points(group="llamavid.commands"):
        modules.append(entry_point.value)
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamavid",
        description="LLaMA-VID: chat with images, clips and hour-long videos (two tokens per frame).",
    )
    parser.add_argument("--version", action="version", version=f"llamavid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _command_modules():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (LlamaVidError, ValueError, OSError) as error:
        if args.verbose:
            raise
        print(f"llamavid {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llamavid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
