"""Decode throughput at 1 fps: ``llamavid.data.decode_video`` against the FFmpeg command line, same run, same cores.

Generates 1080p24 H.264 clips with a 2-s and a 10-s keyframe interval and a 720p24 one (x264 ``veryfast``:
B-frames with a reference pyramid, as most real encodes have), then measures, one after the other on each clip:

* ``llamavid``: ``decode_video(path, fps=1.0)`` (full-resolution RGB, the default PyAV backend, which decodes
  keyframe-aligned segments on one decoder per core);
* ``one_decoder``: ``decode_video(path, fps=1.0, workers=1)`` (one sequential decoder);
* ``previous``: the same call through the decoder of an earlier commit (``--previous-rev``, before this work);
* ``pil_224``: ``decode_video(path, fps=1.0)`` then the image processor's resize + centre crop to 224 (PIL
  bicubic), what ingestion does with the default, bit-faithful frames;
* ``fast_224``: ``decode_video(path, fps=1.0, size=224)``: converted and scaled to 224 in FFmpeg's scaler;
* ``torchcodec``: ``decode_video(path, fps=1.0, backend="torchcodec")`` when torchcodec imports;
* ``ffmpeg``: ``ffmpeg -i X -vf fps=1 -f rawvideo -pix_fmt rgb24 -`` (Debian's ffmpeg; output discarded).

Reported per clip and method: sampled frames, wall seconds, sampled frames/s, CPU seconds (user + sys; what the
method costs a busy machine), and the ratio to the ffmpeg CLI. The share of non-reference frames in each clip
(the most non-reference skipping can save) is counted from the packets' disposable flags after a full decode.

``--deviation N`` instead measures how far the fast resize is from the processor's PIL path: mean and max
absolute difference of ``pixel_values`` on frames of the generated clips (224 px), and on ``N`` held-out
synthetic video questions (``llamavid.synth.generate_items("heldout", N, seed=0, kind="video_qa")``, clips
rendered at 224 px, padded to 16:9 and encoded as H.264) the answers of the embedded tiny model with either
preprocessing: how many differ and the accuracy of each.

Run: ``python benchmarks/decode.py --seconds 60 --json decode.json`` (clips are cached in ``build/bench-decode``);
``python benchmarks/decode.py --deviation 140 --json deviation.json``.
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


def run_llamavid(module: Any, path: Path, **options: Any) -> tuple[int, float, float]:
    cpu, start = _cpu_seconds(False), time.perf_counter()
    frames = module.decode_video(path, fps=1.0, **options)
    return len(frames), time.perf_counter() - start, _cpu_seconds(False) - cpu


def run_pil_resize(module: Any, path: Path, size: int) -> tuple[int, float, float]:
    """Full-resolution decode, then the processor's own PIL bicubic resize + centre crop (no normalisation)."""
    from PIL import Image

    from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor

    processor = LlamaVidImageProcessor(size=size)
    cpu, start = _cpu_seconds(False), time.perf_counter()
    frames = module.decode_video(path, fps=1.0)
    resized = [processor._resize_and_crop(Image.fromarray(frame)) for frame in frames.frames]
    return len(resized), time.perf_counter() - start, _cpu_seconds(False) - cpu


def measure(
    method: str, path: Path, width: int, height: int, current: Any, previous: Any
) -> tuple[int, float, float]:
    if method == "ffmpeg":
        return run_ffmpeg(path, width, height)
    if method == "previous":
        return run_llamavid(previous, path)
    if method == "one_decoder":
        return run_llamavid(current, path, workers=1)
    if method == "torchcodec":
        return run_llamavid(current, path, backend="torchcodec")
    if method == "pil_224":
        return run_pil_resize(current, path, 224)
    if method == "fast_224":
        return run_llamavid(current, path, size=224)
    if method == "llamavid":
        return run_llamavid(current, path)
    raise SystemExit(f"unknown method {method!r}")


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


def _pixel_difference(fast: Any, reference: Any) -> dict[str, float]:
    import numpy as np

    diff = np.abs(np.asarray(fast, dtype=np.float32) - np.asarray(reference, dtype=np.float32))
    return {"mean_abs": round(float(diff.mean()), 5), "max_abs": round(float(diff.max()), 4)}


def write_synth_clip(path: Path, frames: Any, pad_to: tuple[int, int]) -> Path:
    """Frames centred on a wider canvas of their corner colour, as 1-fps H.264 (crf 18, yuv420p)."""
    import av
    import numpy as np

    width, height = pad_to
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18"}
        for frame in frames:
            canvas = np.empty((height, width, 3), np.uint8)
            canvas[:] = frame[0, 0]
            top, left = (height - frame.shape[0]) // 2, (width - frame.shape[1]) // 2
            canvas[top : top + frame.shape[0], left : left + frame.shape[1]] = frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def resize_deviation(args: argparse.Namespace, items_count: int) -> dict[str, Any]:
    """The fast resize against the processor's PIL path: pixel_values, and the tiny model's answers."""
    import torch

    from llamavid.data import decode_video
    from llamavid.inference.engine import Engine
    from llamavid.inference.loading import load_model
    from llamavid.inference.settings import SamplingSettings
    from llamavid.inference.text import normalize_answer
    from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor
    from llamavid.synth import generate_items

    torch.set_num_threads(1)
    results: dict[str, Any] = {"clips": {}, "synthetic": {}}
    processor = LlamaVidImageProcessor(size=224)
    for name in args.clips.split(","):
        width, height, gop = CLIPS[name]
        path = make_clip(args.work_dir / f"{name}_{args.seconds}s.mp4", width, height, gop, args.seconds)
        reference = processor(decode_video(path, fps=1.0).frames, is_video=True)
        fast = processor(decode_video(path, fps=1.0, size=224).frames, is_video=True)
        results["clips"][name] = {"frames": len(reference), **_pixel_difference(fast, reference)}
        print(name, results["clips"][name], flush=True)

    loaded = load_model(
        REPO_ROOT / "src" / "llamavid" / "assets" / "tiny-llamavid", device="cpu", dtype="float32"
    )
    engine = Engine(loaded.model, loaded.processor, name=loaded.name)
    model_size = loaded.model.config.vision_config.image_size
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6)
    items = generate_items("heldout", items_count, seed=0, kind="video_qa")
    clip_dir = args.work_dir / "synth"
    clip_dir.mkdir(parents=True, exist_ok=True)
    differing = correct_reference = correct_fast = 0
    pixel_means: list[float] = []
    pixel_max = 0.0
    for index, item in enumerate(items):
        path = write_synth_clip(clip_dir / f"heldout_{index}.mp4", item.media.render(224), (400, 224))
        reference_frames = decode_video(path, fps=1.0)
        fast_frames = decode_video(path, fps=1.0, size=model_size)
        reference = loaded.processor.image_processor(reference_frames.frames, is_video=True)
        fast = loaded.processor.image_processor(fast_frames.frames, is_video=True)
        difference = _pixel_difference(fast, reference)
        pixel_means.append(difference["mean_abs"])
        pixel_max = max(pixel_max, difference["max_abs"])
        answers = []
        for frames in (reference_frames, fast_frames):
            media = engine.load_media(frames)
            request = engine.build_request(item.question, media, settings=greedy)
            answers.append(normalize_answer(engine.answer_batch([request])[0].text))
        expected = normalize_answer(item.answer)
        differing += answers[0] != answers[1]
        correct_reference += answers[0] == expected
        correct_fast += answers[1] == expected
    results["synthetic"] = {
        "items": items_count,
        "model_image_size": model_size,
        "pixel_values_mean_abs": round(sum(pixel_means) / len(pixel_means), 5),
        "pixel_values_max_abs": round(pixel_max, 4),
        "differing_answers": differing,
        "accuracy_pil": round(correct_reference / items_count, 4),
        "accuracy_fast": round(correct_fast / items_count, 4),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of each generated clip")
    parser.add_argument(
        "--clips", default=",".join(CLIPS), help="comma-separated subset of " + ",".join(CLIPS)
    )
    parser.add_argument(
        "--methods", default="llamavid,one_decoder,previous,pil_224,fast_224,torchcodec,ffmpeg"
    )
    parser.add_argument(
        "--previous-rev", default="1e4ccbf", help="git revision whose decoder is measured as 'previous'"
    )
    parser.add_argument(
        "--deviation",
        type=int,
        metavar="N",
        help="measure the fast resize against PIL on the clips and on N held-out synthetic questions instead",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all methods; the fastest of each is kept"
    )
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "build" / "bench-decode")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("the ffmpeg command line is needed (apt-get install ffmpeg)")
    if args.deviation is not None:
        deviation = resize_deviation(args, args.deviation)
        print(json.dumps(deviation, indent=1))
        if args.json:
            args.json.write_text(json.dumps(deviation, indent=1) + "\n")
        return
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
        # Round-robin (every method once per round) so a change in the machine's load hits all methods alike;
        # the fastest round of each method is kept.
        best: dict[str, tuple[int, float, float]] = {}
        for round_index in range(args.repeats):
            for method in methods:
                measured = measure(method, path, width, height, current, previous)
                if method not in best or measured[1] < best[method][1]:
                    best[method] = measured
                frames, wall, cpu = measured
                print(f"{name:14s} round {round_index} {method:11s} {frames:4d} frames {wall:7.2f} s "
                      f"{frames / wall:7.2f} frames/s cpu {cpu:7.2f} s", flush=True)  # fmt: skip
        for method in methods:
            frames, wall, cpu = best[method]
            row[method] = {
                "frames": frames,
                "seconds": round(wall, 3),
                "frames_per_s": round(frames / wall, 2),
                "cpu_seconds": round(cpu, 3),
            }
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
