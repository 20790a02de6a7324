"""``llamavid ingest``: encode a (long) video's frames once into the feature cache, so questions are cheap later.

Bad inputs are checked before the model is loaded (a typo should not cost a model load) and before anything is
written, so a failed run leaves the cache as it was; an interrupted run keeps its finished chunks and the next
run resumes from them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from llamavid.cli import CommandError
from llamavid.cli._engine_options import add_engine_arguments, build_engine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="encode a video's frames into the feature cache (resumable)",
        description=(
            "Sample frames, run the vision encoder and store fp16 features (CLS included) in the feature cache, "
            "keyed by video content, sampling, encoder weights and preprocessing. Every command (ask, chat, serve, "
            "web) reads the same entries, so a video ingested here is never encoded again. Re-running resumes an "
            "interrupted ingestion; a complete entry is not recomputed. Without --model the embedded tiny model's "
            "encoder is used."
        ),
    )
    parser.add_argument("video", nargs="?", type=Path, help="video file to ingest")
    corpus = parser.add_argument_group("corpus")
    corpus.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help='ingest every video listed in FILE (one path per line, or JSON lines with a "video" field; '
        "relative paths start at FILE's folder); complete entries are skipped, failures are listed in the "
        "summary file and do not stop the run",
    )
    corpus.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        help="with --manifest: decode in Ray tasks and encode in a pool of Ray actors (one GPU each when the "
        "cluster has GPUs); auto joins the running cluster or starts a local one (pip install 'llamavid[ray]')",
    )
    corpus.add_argument(
        "--summary",
        type=Path,
        metavar="FILE",
        help="with --manifest: where the JSON summary (completed and failed videos with their errors) goes "
        "(default: ingest-summary.json in the cache folder)",
    )
    corpus.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --manifest: ingest only the videos the summary file lists as failed",
    )
    corpus.add_argument(
        "--encoders", type=int, help="with --ray: encoder actors (default: one per GPU, else half the CPUs)"
    )
    parser.add_argument(
        "--subtitles", type=Path, help="subtitle file (.srt/.vtt) aligned to the frames and stored with them"
    )
    parser.add_argument(
        "--subtitle-encoding",
        metavar="ENCODING",
        help="text encoding of --subtitles (e.g. gb2312, big5, cp1251); default: UTF-8/UTF-16, else detected, "
        "refusing a file whose encoding cannot be told",
    )
    parser.add_argument(
        "--fps", type=float, default=1.0, help="frames sampled per second (default 1, as trained)"
    )
    parser.add_argument(
        "--max-frames", type=int, help="sample at most this many frames, uniformly over the video"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="frames per encoder call (default 16)")
    parser.add_argument(
        "--fast-resize",
        action="store_true",
        help="resize frames inside the decoder (FFmpeg's bicubic scaler) instead of full-size RGB + PIL: faster "
        "decoding, not bit-identical to the official preprocessing (mean |Δpixel| ≈ 0.018, see "
        "docs/benchmarks.md); stored under its own cache key, which ask/chat/serve (faithful) do not read",
    )
    parser.add_argument(
        "--info",
        action="store_true",
        help="list cached entries instead of ingesting (chunk sizes are checked: truncated or missing chunks "
        "show the entry as corrupted)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="with --info, also check every chunk's sha256 (reads the whole cache); ingesting a corrupted "
        "entry's video again re-encodes only its bad chunks",
    )
    add_engine_arguments(parser, media=False, output=False, sampling=False)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def _repair_command(row: dict[str, Any]) -> str:
    """The ingest command that made a corrupted entry, as far as the entry knows it (not the model)."""
    command = f"llamavid ingest {row['source']}"
    if row.get("fps") is not None:
        command += f" --fps {row['fps']:g}"
    if row.get("max_frames") is not None:
        command += f" --max-frames {row['max_frames']}"
    return command


def _print_info(cache: Any, as_json: bool, checksums: bool) -> int:
    rows = cache.list_entries(checksums=checksums)
    if as_json:
        print(json.dumps({"cache_dir": str(cache.root), "checksums_verified": checksums, "entries": rows}))
        return 0
    checked = "sizes and sha256 checked" if checksums else "sizes checked; --verify also checks sha256"
    print(f"cache: {cache.root} ({len(rows)} entries; {checked})")
    for row in rows:
        state = row.get("state")
        if state == "complete":
            print(
                f"  {row['digest'][:12]}  {row['num_frames']:>6} frames @ {row['fps']} fps  "
                f"{row['bytes'] / 2**20:8.1f} MiB  {row['source']}"
            )
        elif state == "corrupted":
            bad = row["bad_chunks"]
            print(
                f"  {row['digest'][:12]}  corrupted: {len(bad)} bad chunk(s) ({', '.join(bad)}: "
                f"{row['problem'].rsplit(': ', 1)[-1]}); `{_repair_command(row)}` (with the same --model) "
                f"re-encodes only those  {row['source']}"
            )
        else:
            done = row.get("finished_chunks")
            text = (
                f"unfinished ({done} chunks done)" if done is not None else f"unusable: {row.get('problem')}"
            )
            print(f"  {row['digest'][:12]}  {text}  {row.get('source') or ''}")
    return 0


def run(args: argparse.Namespace) -> int:
    from llamavid.data.feature_cache import FeatureCache

    cache = FeatureCache(args.cache_dir)  # --info needs no model
    if args.info:
        return _print_info(cache, args.json, args.verify)
    if args.verify:
        raise CommandError(
            "--verify goes with --info (ingesting always checks the entry's checksums and re-encodes bad chunks)."
        )
    if args.manifest is not None:
        if args.fast_resize:
            raise CommandError("--fast-resize is for one VIDEO; --manifest ingests with the faithful resize.")
        return _run_manifest(args, cache)
    for flag, value in (("--ray", args.ray), ("--summary", args.summary), ("--encoders", args.encoders)):
        if value is not None:
            raise CommandError(f"{flag} goes with --manifest FILE.")
    if args.retry_failed:
        raise CommandError("--retry-failed goes with --manifest FILE.")
    if not args.video:
        raise CommandError(
            "give a VIDEO to ingest, --manifest FILE for a list of videos, or --info to list the cache."
        )
    if args.fps <= 0:
        raise CommandError(f"--fps must be positive, got {args.fps}.")
    if args.max_frames is not None and args.max_frames < 1:
        raise CommandError(f"--max-frames must be at least 1, got {args.max_frames}.")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}.")

    # Validate the inputs before the (slow) model load; these raise MediaError naming the file.
    from llamavid.data.subtitles import SubtitleTrack
    from llamavid.data.video import inspect_video

    if args.subtitle_encoding and not args.subtitles:
        raise CommandError("--subtitle-encoding needs --subtitles FILE.")
    inspect_video(args.video)
    subtitles = (
        SubtitleTrack.read(args.subtitles, encoding=args.subtitle_encoding) if args.subtitles else None
    )
    if args.no_cache:
        raise CommandError("--no-cache contradicts ingest, whose job is to fill the feature cache.")
    engine = build_engine(args)
    report = engine.ingest(
        args.video,
        fps=args.fps,
        max_frames=args.max_frames,
        subtitles=subtitles,
        batch_size=args.batch_size,
        fast_resize=args.fast_resize,
    )
    processor = engine.processor
    entry = report.entry
    summary = entry.summary()
    result = {
        "video": os.path.abspath(args.video),
        "cache_hit": report.hit,
        "digest": entry.digest,
        "entry": str(entry.path),
        "frames": entry.num_frames,
        "fps": entry.meta["fps"],
        "fast_resize": args.fast_resize,
        "feature_shape": list(entry.feature_shape),
        "bytes": summary["bytes"],
        "encoded_chunks": report.encoded_chunks,
        "reused_chunks": report.reused_chunks,
        "visual_tokens": sum(processor.visual_block_lengths(entry.num_frames)),
        "subtitled_frames": sum(bool(t) for t in entry.frame_texts),
        "seconds": round(report.seconds, 2),
        # frames/s per pipeline stage and the stage that bounded the run; None when nothing was encoded
        "stages": report.stages.to_dict() if report.stages is not None else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        verb = "already cached" if report.hit else "cached"
        print(
            f"{verb}: {result['frames']} frames -> {result['visual_tokens']} visual tokens, "
            f"{result['bytes'] / 2**20:.1f} MiB in {entry.path}"
        )
        if report.reused_chunks:
            print(f"resumed: {report.reused_chunks} chunks reused, {report.encoded_chunks} encoded")
        if report.stages is not None and report.stages.frames:
            print(report.stages.describe())
    return 0


def _run_manifest(args: argparse.Namespace, cache: Any) -> int:
    """``--manifest``: every listed video into the cache; per-video failures go to the summary, not the exit code."""
    import sys

    from llamavid.inference.corpus import ingest_corpus, read_manifest, read_summary_failures

    if args.video is not None:
        raise CommandError("give either a VIDEO or --manifest FILE, not both.")
    if args.subtitles is not None:
        raise CommandError("--subtitles names one video's file; it does not go with --manifest.")
    if args.fps <= 0:
        raise CommandError(f"--fps must be positive, got {args.fps}.")
    if args.max_frames is not None and args.max_frames < 1:
        raise CommandError(f"--max-frames must be at least 1, got {args.max_frames}.")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.encoders is not None and args.encoders < 1:
        raise CommandError(f"--encoders must be at least 1, got {args.encoders}.")
    if args.no_cache:
        raise CommandError("--no-cache contradicts ingest, whose job is to fill the feature cache.")
    videos = read_manifest(args.manifest)
    summary = args.summary if args.summary is not None else cache.root / "ingest-summary.json"
    if args.retry_failed:
        failed = set(read_summary_failures(summary))
        videos = [video for video in videos if video in failed]
        if not videos:
            if not args.quiet:
                print(
                    f"nothing to retry: {summary} lists no failed video of {args.manifest}", file=sys.stderr
                )
            return 0

    def progress(event: dict[str, Any]) -> None:
        if args.quiet or event["status"] == "chunk":
            return
        detail = event.get("error") or f"{event.get('frames', 0)} frames"
        print(
            f"[{event['done']}/{event['total']}] {event['status']}: {event['video']} ({detail})",
            file=sys.stderr,
        )

    report = ingest_corpus(
        videos,
        model=args.model,
        cache_dir=cache.root,
        fps=args.fps,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        ray_address=args.ray,
        encoders=args.encoders,
        device=args.device,
        dtype=args.dtype,
        summary_path=summary,
        progress=progress,
    )
    result = {
        "videos": len(videos),
        "completed": len(report.completed),
        "cached": sum(row["status"] == "cached" for row in report.completed),
        "failed": len(report.failed),
        "frames_encoded": report.frames_encoded,
        "summary": str(report.summary_path),
        "seconds": round(report.seconds, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['completed']}/{result['videos']} videos complete ({result['cached']} already cached), "
            f"{result['failed']} failed, {result['frames_encoded']} frames encoded in {result['seconds']} s; "
            f"summary: {result['summary']}"
        )
        if report.failed:
            print(f"rerun the failed ones with: llamavid ingest --manifest {args.manifest} --retry-failed")
    return 0
