"""Options shared by every command that runs the model (``ask``, ``chat``, ``attention``, ``ingest``, ``serve``,
``web``).

Declared once so the flags, their defaults and their help read the same in every command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llamavid.inference.settings import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P


def add_engine_arguments(
    parser: argparse.ArgumentParser, media: bool = True, output: bool = True, sampling: bool = True
) -> None:
    """Add ``--model --device --dtype --cache-dir --no-cache --quiet`` (+ sampling, media and ``--json``)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        type=Path,
        default=None,
        help="llamavid model folder (default: the embedded tiny model; a random one, with a warning, until it ships)",
    )
    group.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda[:N] or mps"
    )
    group.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"), help="weights dtype"
    )
    quant = group.add_mutually_exclusive_group()
    quant.add_argument(
        "--load-in-8bit",
        dest="quantization",
        action="store_const",
        const="8bit",
        default=None,
        help="load the LLM layers in 8-bit (bitsandbytes; vision tower, text decoder, projectors stay in --dtype)",
    )
    quant.add_argument(
        "--load-in-4bit",
        dest="quantization",
        action="store_const",
        const="4bit",
        help="load the LLM layers in 4-bit NF4 (bitsandbytes), as --load-in-8bit",
    )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache every command reads and writes video features in "
        "(default $LLAMAVID_CACHE or ~/.cache/llamavid/features)",
    )
    group.add_argument(
        "--no-cache",
        action="store_true",
        help="decode and encode videos every time, neither reading nor writing the feature cache",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or size reports on stderr"
    )
    if sampling:
        _add_sampling_arguments(group)
    if media:
        media_group = parser.add_argument_group("media")
        media_group.add_argument(
            "--subtitles", type=Path, default=None, help=".srt or .vtt file, interleaved per frame"
        )
        media_group.add_argument(
            "--fps", type=float, default=1.0, help="frames sampled per second (default 1, as trained)"
        )
        media_group.add_argument("--max-frames", type=int, default=None, help="cap on sampled frames")
        media_group.add_argument(
            "--max-megapixels",
            type=float,
            default=None,
            help="largest image or video frame accepted, read from the file header before decoding (default 50)",
        )
        media_group.add_argument(
            "--subtitle-encoding",
            metavar="ENCODING",
            default=None,
            help="text encoding of --subtitles (e.g. gb2312, big5, cp1251); default: UTF-8/UTF-16, else detected",
        )
    if output:
        parser.add_argument(
            "--json", action="store_true", help="print one JSON object instead of streaming text"
        )


def _add_sampling_arguments(group: Any) -> None:
    group.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature, 0 = greedy and deterministic (default: the checkpoint's "
        f"generation_config.json, else {DEFAULT_TEMPERATURE} as the official CLI)",
    )
    group.add_argument(
        "--top-p",
        type=float,
        default=None,
        help=f"nucleus sampling mass (default: checkpoint, else {DEFAULT_TOP_P})",
    )
    group.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"answer length limit (default: checkpoint, else {DEFAULT_MAX_NEW_TOKENS})",
    )
    group.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible answers)")
    group.add_argument(
        "--max-memory",
        type=parse_memory,
        default=None,
        help="refuse prompts whose estimated KV cache exceeds this (e.g. 8G, 512M; a plain number is MiB)",
    )


def build_engine(args: argparse.Namespace) -> Any:
    """Load the engine named by the options (imported here so ``llamavid --help`` stays fast)."""
    from transformers.utils import logging as transformers_logging

    from llamavid.errors import InvalidInputError
    from llamavid.inference.engine import Engine

    # A "Loading weights" bar on stderr would break the one-line error contract and clutter piped output.
    transformers_logging.disable_progress_bar()
    quantization = getattr(args, "quantization", None)
    if quantization is not None and args.model is None:
        raise InvalidInputError(
            "--load-in-8bit/--load-in-4bit need --model FOLDER (the random demo model is not quantised)."
        )
    engine = Engine.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        quantization=quantization,
        feature_cache=False if args.no_cache else (args.cache_dir or True),
    )
    if hasattr(args, "temperature"):
        engine.default_settings = engine.default_settings.updated(**sampling_options(args))
        engine.max_memory = args.max_memory
    engine.progress = not args.quiet
    return engine


def parse_memory(text: str) -> int:
    """``"8G"`` / ``"512M"`` / ``"1.5GiB"`` / ``"300"`` (MiB) -> bytes."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if value and value[-1] in units:
            amount = float(value[:-1]) * units[value[-1]]
        else:
            amount = float(value) * units["m"]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size; use e.g. 8G, 512M or 300 (MiB)"
        ) from None
    if amount <= 0:
        raise argparse.ArgumentTypeError(f"memory size must be positive, got {text!r}")
    return int(amount)


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }


def media_options(args: argparse.Namespace) -> dict[str, Any]:
    from llamavid.errors import InvalidInputError

    if args.max_frames is not None and args.max_frames < 1:
        raise InvalidInputError(f"--max-frames must be at least 1, got {args.max_frames}.")
    if args.fps is not None and args.fps <= 0:
        raise InvalidInputError(f"--fps must be positive, got {args.fps}.")
    subtitles = args.subtitles
    if subtitles is not None:  # parsed now, so a bad file fails before the model loads
        from llamavid.data.subtitles import SubtitleTrack

        subtitles = SubtitleTrack.read(subtitles, encoding=args.subtitle_encoding)
    elif args.subtitle_encoding:
        raise InvalidInputError("--subtitle-encoding needs --subtitles FILE.")
    options: dict[str, Any] = {"fps": args.fps, "max_frames": args.max_frames, "subtitles": subtitles}
    if args.max_megapixels is not None:
        if args.max_megapixels <= 0:
            raise InvalidInputError(f"--max-megapixels must be positive, got {args.max_megapixels}.")
        options["max_pixels"] = int(args.max_megapixels * 1_000_000)
    return options


def check_media_path(path: Path) -> Path:
    """Fail with a one-line message before loading the model when the media path is plainly wrong."""
    if not path.exists():
        from llamavid.data.errors import MediaError

        raise MediaError(
            f"{path}: no such file or folder; pass a video, an image or a folder of frames.", path
        )
    return path


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def report(args: argparse.Namespace, text: str) -> None:
    """A status line on stderr (sizes, cache use), unless ``--quiet`` or ``--json``."""
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
        print(text, file=sys.stderr, flush=True)


def print_piece(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
