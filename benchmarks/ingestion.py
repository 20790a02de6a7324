"""Decode throughput and streaming memory of llamavid.data.video on CPU.

Generates its own videos (nothing is downloaded), then prints:

1. frames/s for decode + resize to 224 px (shortest side, as the image processor does) of a 1 fps sample,
   for PyAV sequential decoding (our path), a seek-per-sampled-frame baseline, and torchcodec if installed;
2. peak RSS growth while streaming a 1-minute and a 60-minute video in chunks (goal: within 64 MB).

Run: PYTHONPATH=src python benchmarks/ingestion.py [--size 320x240] [--rate 30]
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

from llamavid.data.video import iter_video_frames


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="320x240", help="decode benchmark frame size WxH")
    parser.add_argument("--rate", type=int, default=30, help="native frame rate of the generated videos")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the decode benchmark video")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(
        f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, av {av.__version__}"
    )
    with tempfile.TemporaryDirectory() as folder:
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
                f"  {name:<24}: {rate:8.1f} sampled frames/s ({rate * args.rate:7.0f} decoded/s), "
                f"x{rate / baseline_fps:.2f} vs baseline"
            )

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
