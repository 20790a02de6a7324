"""Ingestion on CPU: decode throughput, streaming memory, and file → feature cache, sequential vs pipelined.

Generates its own videos (nothing is downloaded), then prints:

1. ``decode``: frames/s for decode + resize to 224 px (shortest side, as the image processor does) of a 1 fps
   sample, for PyAV sequential decoding (our path), a seek-per-sampled-frame baseline, and torchcodec if
   installed;
2. ``memory``: peak RSS growth while streaming a 1-minute and a 60-minute video in chunks (goal: within 64 MB);
3. ``cache``: a generated clip into a fresh feature cache (`FeatureCache.ingest`, what ``llamavid ingest``
   runs) with a randomly initialised model whose vision tower is as wide and deep as ``--vision`` says, once
   with the stages one after another (``pipelined=False``) and once as the pipeline, alternating, in the same
   run: wall time, end-to-end frames/s, frames/s of each stage and the stage that bounded the run.

Run: PYTHONPATH=src python benchmarks/ingestion.py [--part all|decode|memory|cache] [--size 320x240] [--rate 30]
Memory runs happen in fresh child processes so one measurement cannot inflate the other.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from llamavid.data.video import inspect_video, iter_video_frames


def write_test_video(path: Path, seconds: float, rate: int, width: int, height: int) -> Path:
    """Moving-gradient H.264 (keyframe every 2 s, like typical web video), encoded as fast as possible."""
    base = np.add.outer(np.arange(height), np.arange(width))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(2 * rate)}
        for i in range(int(seconds * rate)):
            picture = (np.stack([base + i, base * 2 - i, np.full_like(base, i)], axis=-1) % 256).astype(
                np.uint8
            )
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def resize_224(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = 224 / min(height, width)
    size = (max(224, round(width * scale)), max(224, round(height * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))


def bench_library(path: Path, backend: str) -> tuple[int, float]:
    started, count = time.perf_counter(), 0
    for chunk in iter_video_frames(path, fps=1.0, backend=backend):
        for frame in chunk.frames:
            resize_224(frame)
            count += 1
    return count, time.perf_counter() - started


def bench_seek_per_frame(path: Path) -> tuple[int, float]:
    """Baseline: seek to the keyframe before every 1 s target, then decode up to the target."""
    started, count = time.perf_counter(), 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        for second in range(int(duration)):
            container.seek(int(second / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is not None and frame.time >= second - 1e-3:
                    resize_224(frame.to_ndarray(format="rgb24"))
                    count += 1
                    break
    return count, time.perf_counter() - started


def peak_rss_growth_mb(path: Path) -> float:
    """Stream the video in a child process and return its peak RSS growth in MB."""
    code = (
        "import sys, resource\n"
        "from llamavid.data.video import iter_video_frames\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "base = peak = rss()\n"
        "for chunk in iter_video_frames(sys.argv[1], fps=1.0, chunk_size=64):\n"
        "    peak = max(peak, rss())\n"
        "print((peak - base) / 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def build_encoder(width: int, layers: int, image_size: int) -> object:
    """`FrameEncoder` of a random model whose vision tower has `layers` blocks of `width` (heads of 64)."""
    import torch

    from llamavid.inference.media import FrameEncoder
    from llamavid.testing import build_tiny_model, tiny_processor

    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        image_size=image_size,
        patch_size=14,
    )
    model = build_tiny_model(seed=0, vision_config=vision)
    model.to(torch.float32)
    return FrameEncoder(model, tiny_processor(model.config), encoder_id=f"bench-{width}x{layers}")


def bench_cache(clip: Path, args: argparse.Namespace, folder: Path) -> None:
    from llamavid.data.feature_cache import FeatureCache

    width, layers = (int(v) for v in args.vision.split("x"))
    encoder = build_encoder(width, layers, args.image_size)
    info = inspect_video(clip)
    print(
        f"file -> cache: {info.duration:.0f} s {info.width}x{info.height} clip at 1 fps, random vision tower "
        f"{width} wide x {layers} layers at {args.image_size} px, fp32, batch {args.batch_size}, "
        f"chunk {args.chunk_frames}, queue depth {args.depth}"
    )
    encoder(np.zeros((args.batch_size, info.height, info.width, 3), np.uint8))  # warm-up (first-call costs)
    results: dict[str, list[tuple[float, object]]] = {"sequential": [], "pipelined": []}
    for run in range(args.repeat):
        for mode in ("sequential", "pipelined"):
            cache = FeatureCache(
                folder / f"cache-{mode}-{run}",
                chunk_frames=args.chunk_frames,
                queue_depth=args.depth,
                pipelined=mode == "pipelined",
            )
            started = time.perf_counter()
            report = cache.ingest(clip, encoder, fps=1.0, batch_size=args.batch_size)
            wall = time.perf_counter() - started
            stats = report.stages
            assert stats is not None
            results[mode].append((wall, stats))
            print(
                f"  {mode:<10} run {run + 1}: {wall:6.2f} s, {stats.frames / wall:6.1f} frames/s end to end; "
                f"{stats.describe()}; peak {stats.peak_frames_in_flight} frames in flight"
            )
    best = {mode: min(wall for wall, _ in runs) for mode, runs in results.items()}
    print(
        f"  best of {args.repeat}: sequential {best['sequential']:.2f} s, pipelined {best['pipelined']:.2f} s "
        f"-> pipeline x{best['sequential'] / best['pipelined']:.2f}"
    )
    first = FeatureCache(folder / "cache-sequential-0").entry_path(report.entry.digest)
    same = all(
        chunk.read_bytes() == (report.entry.path / chunk.name).read_bytes() for chunk in first.glob("chunk_*")
    )
    print(f"  chunk files identical between the two modes: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="320x240", help="decode benchmark frame size WxH")
    parser.add_argument("--rate", type=int, default=30, help="native frame rate of the generated videos")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the decode benchmark video")
    parser.add_argument("--part", choices=["all", "decode", "memory", "cache"], default="all")
    cache = parser.add_argument_group("cache part")
    cache.add_argument("--cache-seconds", type=float, default=60.0, help="length of the clip ingested")
    cache.add_argument("--cache-size", default="960x540", help="its frame size WxH")
    cache.add_argument(
        "--vision", default="256x4", help="random vision tower WIDTHxLAYERS (EVA ViT-g is 1408x39)"
    )
    cache.add_argument("--image-size", type=int, default=224, help="encoder input size (released: 224)")
    cache.add_argument("--batch-size", type=int, default=16)
    cache.add_argument("--chunk-frames", type=int, default=32)
    cache.add_argument("--depth", type=int, default=2, help="pipeline queue depth")
    cache.add_argument("--repeat", type=int, default=2, help="runs of each mode, alternating")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(
        f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, av {av.__version__}"
    )
    with tempfile.TemporaryDirectory() as folder:
        if args.part in ("all", "cache"):
            cache_width, cache_height = (int(v) for v in args.cache_size.split("x"))
            clip = write_test_video(
                Path(folder) / "cache-clip.mp4", args.cache_seconds, args.rate, cache_width, cache_height
            )
            bench_cache(clip, args, Path(folder))
        if args.part in ("all", "decode"):
            clip = write_test_video(Path(folder) / "clip.mp4", args.seconds, args.rate, width, height)
            print(f"decode+resize224 @1 fps of {args.seconds:.0f} s {width}x{height} {args.rate} fps H.264:")
            baseline_count, baseline_time = bench_seek_per_frame(clip)
            baseline_fps = baseline_count / baseline_time
            print(f"  seek-per-frame baseline : {baseline_fps:8.1f} sampled frames/s")
            results = {"pyav": bench_library(clip, "pyav")}
            try:
                import torchcodec.decoders  # noqa: F401

                results["torchcodec"] = bench_library(clip, "torchcodec")
            except Exception as error:
                print(f"  torchcodec              : unavailable ({type(error).__name__})")
            for name, (count, seconds) in results.items():
                rate = count / seconds
                print(
                    f"  {name:<24}: {rate:8.1f} sampled frames/s ({rate * args.rate:7.0f} source frames/s covered), "
                    f"x{rate / baseline_fps:.2f} vs baseline"
                )
        if args.part in ("all", "memory"):
            small = (64, 64)
            growth = {}
            for minutes in (1, 60):
                video = write_test_video(Path(folder) / f"{minutes}min.mp4", minutes * 60, 2, *small)
                growth[minutes] = peak_rss_growth_mb(video)
                print(
                    f"peak RSS growth streaming {minutes:2d} min ({small[0]}x{small[1]}, 2 fps): {growth[minutes]:6.1f} MB"
                )
            print(f"difference 60 min - 1 min: {growth[60] - growth[1]:.1f} MB (goal < 64 MB)")


if __name__ == "__main__":
    main()
