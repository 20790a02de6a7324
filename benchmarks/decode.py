"""Decode throughput at 1 fps: ``llamavid.data.decode_video`` against the FFmpeg command line, same run, same cores.

Generates 1080p24 H.264 clips with a 2-s and a 10-s keyframe interval and a 720p24 one (x264 ``veryfast``:
B-frames with a reference pyramid, as most real encodes have), then measures, one after the other on each clip:

* ``llamavid``: ``decode_video(path, fps=1.0)`` (full-resolution RGB, the default PyAV backend);
* ``previous``: the same call through the decoder of an earlier commit (``--previous-rev``, before this work);
* ``torchcodec``: ``decode_video(path, fps=1.0, backend="torchcodec")`` when torchcodec imports;
* ``ffmpeg``: ``ffmpeg -i X -vf fps=1 -f rawvideo -pix_fmt rgb24 -`` (Debian's ffmpeg; output discarded).

Reported per clip and method: sampled frames, wall seconds, sampled frames/s, CPU seconds (user + sys; what the
method costs a busy machine), and the ratio to the ffmpeg CLI. The share of non-reference frames in each clip
(the most non-reference skipping can save) is counted from the packets' disposable flags after a full decode.

Run: ``python benchmarks/decode.py --seconds 60 --json decode.json`` (clips are cached in ``build/bench-decode``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

CLIPS = {
    # name: (width, height, keyframe interval in seconds)
    "1080p_gop2s": (1920, 1080, 2),
    "1080p_gop10s": (1920, 1080, 10),
    "720p_gop2s": (1280, 720, 2),
}
RATE = 24


def make_clip(path: Path, width: int, height: int, gop_seconds: int, seconds: int) -> Path:
    """A moving test pattern with film grain, so motion search and B-frames behave like camera footage."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    gop = gop_seconds * RATE
    command = [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={RATE}:duration={seconds}",
        "-vf", "noise=alls=4:allf=t",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        str(tmp),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    tmp.replace(path)
    return path


def nonreference_share(path: Path) -> dict[str, float]:
    """Share of frames no other frame references (what NONREF skipping may leave out) and of keyframes.

    MP4 does not flag disposable packets, so the clip is decoded once with every non-reference frame skipped.
    """
    import av

    total = keyframes = kept = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = "NONREF"
        for packet in container.demux(stream):
            if packet.size:
                total += 1
                keyframes += bool(packet.is_keyframe)
            kept += len(packet.decode())
    return {
        "frames": total,
        "nonreference_share": round(1 - kept / total, 3),
        "keyframe_share": round(keyframes / total, 4),
    }


def _cpu_seconds(children: bool) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_previous(rev: str) -> Any:
    """``llamavid/data/video.py`` as it was at git revision ``rev``, imported beside the current one."""
    import importlib.util

    source = subprocess.run(
        ["git", "show", f"{rev}:src/llamavid/data/video.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = REPO_ROOT / "build" / "bench-decode" / f"video_{rev}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    # Named inside llamavid.data so its relative imports (errors) resolve to the installed package.
    spec = importlib.util.spec_from_file_location(f"llamavid.data._video_{rev}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_llamavid(module: Any, path: Path, backend: str | None) -> tuple[int, float, float]:
    cpu, start = _cpu_seconds(False), time.perf_counter()
    frames = module.decode_video(path, fps=1.0, backend=backend)
    return len(frames), time.perf_counter() - start, _cpu_seconds(False) - cpu


def run_ffmpeg(path: Path, width: int, height: int) -> tuple[int, float, float]:
    command = [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path),
        "-vf", "fps=1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    cpu, start = _cpu_seconds(True), time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    received = 0
    while block := process.stdout.read(1 << 22):
        received += len(block)
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg failed on {path}")
    return received // (width * height * 3), time.perf_counter() - start, _cpu_seconds(True) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of each generated clip")
    parser.add_argument(
        "--clips", default=",".join(CLIPS), help="comma-separated subset of " + ",".join(CLIPS)
    )
    parser.add_argument("--methods", default="llamavid,previous,torchcodec,ffmpeg")
    parser.add_argument(
        "--previous-rev", default="264efc7", help="git revision whose decoder is measured as 'previous'"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest is kept")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "build" / "bench-decode")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("the ffmpeg command line is needed (apt-get install ffmpeg)")
    methods = args.methods.split(",")
    if "torchcodec" in methods:
        try:
            import torchcodec.decoders  # noqa: F401
        except Exception as error:  # ImportError, or OSError from missing FFmpeg libraries
            print(f"torchcodec unavailable ({type(error).__name__}); skipped", file=sys.stderr)
            methods.remove("torchcodec")
    from llamavid.data import video as current

    previous = load_previous(args.previous_rev) if "previous" in methods else None
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
            ).stdout.strip(),
        },
        "clips": {},
    }
    for name in args.clips.split(","):
        width, height, gop = CLIPS[name]
        path = make_clip(args.work_dir / f"{name}_{args.seconds}s.mp4", width, height, gop, args.seconds)
        row: dict[str, Any] = {"path": str(path), **nonreference_share(path)}
        for method in methods:
            best: tuple[int, float, float] | None = None
            for _ in range(args.repeats):
                if method == "ffmpeg":
                    measured = run_ffmpeg(path, width, height)
                else:
                    backend = "torchcodec" if method == "torchcodec" else None
                    module = previous if method == "previous" else current
                    measured = run_llamavid(module, path, backend)
                if best is None or measured[1] < best[1]:
                    best = measured
            assert best is not None
            frames, wall, cpu = best
            row[method] = {
                "frames": frames,
                "seconds": round(wall, 3),
                "frames_per_s": round(frames / wall, 2),
                "cpu_seconds": round(cpu, 3),
            }
            print(f"{name:14s} {method:10s} {frames:4d} frames {wall:7.2f} s {frames / wall:7.2f} frames/s "
                  f"cpu {cpu:7.2f} s", flush=True)  # fmt: skip
        if "ffmpeg" in row:
            for method in methods:
                if method != "ffmpeg":
                    row[method]["vs_ffmpeg"] = round(
                        row[method]["frames_per_s"] / row["ffmpeg"]["frames_per_s"], 2
                    )
        results["clips"][name] = row
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
