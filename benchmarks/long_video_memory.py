"""Peak memory of `llamavid ingest` + `llamavid ask` for a 1-minute vs a 60-minute video (tiny model, CPU).

Each step runs in a fresh process and reports its peak RSS (VmHWM), so the ratio 60 min / 1 min shows whether
memory grows with video length: ingestion streams frames through the vision tower in chunks, and the question
streams the cached features chunk by chunk, keeping only the visual tokens (2 per frame) the LLM needs.

Usage: .venv/bin/python benchmarks/long_video_memory.py [--minutes 1 60] [--rate 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

RUN_AND_REPORT = (
    "import sys, resource\n"
    "from llamavid.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "sys.stderr.write(f'VMHWM_KB={hwm}\\n')\n"
    "sys.exit(code)\n"
)


def write_video(path: Path, minutes: float, rate: int, size: int = 64) -> Path:
    """A `size`x`size` H.264 video whose frames change colour every second (fast to encode, 2 fps native)."""
    frames = int(minutes * 60 * rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=rate, options={"preset": "ultrafast", "g": str(rate * 30)}
        )
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            value = (index // rate * 37) % 256
            image = np.full((size, size, 3), value, dtype=np.uint8)
            image[: size // 2, : size // 2] = (255 - value, 40, value // 2)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_srt(path: Path, minutes: float) -> Path:
    lines = []
    for cue in range(int(minutes * 60 // 20)):
        start, end = cue * 20, cue * 20 + 5
        lines += [str(cue + 1), f"00:{start // 60:02d}:{start % 60:02d},000 --> 00:{end // 60:02d}:{end % 60:02d},000",
                  f"line number {cue}", ""]  # fmt: skip
    path.write_text("\n".join(lines))
    return path


def run(args: list[str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"llamavid {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    hwm = int(next(line for line in result.stderr.splitlines() if line.startswith("VMHWM_KB=")).split("=")[1])
    return time.perf_counter() - started, hwm // 1024, result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 60])
    parser.add_argument("--rate", type=int, default=2, help="native frame rate of the generated videos")
    options = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_helpers import save_serving_model

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = save_serving_model(root / "model")
        # A long context so a 60-minute prompt (7,200 visual tokens + subtitles) fits the tiny LLM.
        config = json.loads((model / "config.json").read_text())
        config["text_config"]["max_position_embeddings"] = 16384
        (model / "config.json").write_text(json.dumps(config))
        for minutes in options.minutes:
            video = write_video(root / f"video-{minutes:g}min.mp4", minutes, options.rate)
            subtitles = write_srt(root / f"video-{minutes:g}min.srt", minutes)
            cache = root / "cache"
            ingest_s, ingest_mb, _ = run(["ingest", str(video), "--model", str(model), "--cache-dir", str(cache),
                                          "--subtitles", str(subtitles), "--json"])  # fmt: skip
            ask_s, ask_mb, out = run(["ask", str(video), "what changes?", "--model", str(model), "--cache-dir",
                                      str(cache), "--temperature", "0", "--max-new-tokens", "8", "--json"])  # fmt: skip
            answer = json.loads(out.strip().splitlines()[-1])
            rows.append(
                (minutes, int(minutes * 60), ingest_s, ingest_mb, ask_s, ask_mb, answer.get("prompt_tokens"))
            )
    print(
        "| video | frames at 1 fps | ingest s | ingest peak RSS MiB | ask s | ask peak RSS MiB | prompt tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    for minutes, frames, ingest_s, ingest_mb, ask_s, ask_mb, tokens in rows:
        print(
            f"| {minutes:g} min | {frames} | {ingest_s:.1f} | {ingest_mb} | {ask_s:.1f} | {ask_mb} | {tokens} |"
        )
    if len(rows) >= 2:
        print(f"\npeak RSS ratio {rows[-1][0]:g} min / {rows[0][0]:g} min: ingest {rows[-1][3] / rows[0][3]:.2f}x, "
              f"ask {rows[-1][5] / rows[0][5]:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
