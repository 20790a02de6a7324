"""Corpus ingestion: one process against Ray Data on a local cluster, same videos, same run, same cores.

Generates ``--videos`` H.264 clips (``--seconds`` long, 640x360 at 24 fps, x264 ``veryfast``), then ingests them
into fresh feature caches with the embedded tiny model's encoder:

* ``one process``: ``ingest_corpus(videos)`` (``Engine.ingest`` video by video);
* ``ray``: ``ingest_corpus(videos, ray_address="auto")`` on ``ray.init(num_cpus=--cpus)`` started here; Ray's
  start-up is timed apart from the ingestion (a cluster that is already running does not pay it).

Both caches are compared entry by entry (chunk bytes and sidecars but their creation time) before anything is
reported. On a 2-core machine Ray cannot beat one process by parallelism; what it shows is its overhead, and the
same code then spreads decode tasks and encoder actors over a cluster.

Run: ``python benchmarks/ray_ingest.py --videos 6 --seconds 20 --cpus 2``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_videos(folder: Path, count: int, seconds: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    for index in range(count):
        path = folder / f"clip{index}_{seconds}s.mp4"
        if not path.exists():
            command = [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                "-i", f"testsrc2=size=640x360:rate=24:duration={seconds + index}",
                "-c:v", "libx264", "-preset", "veryfast", "-g", "48", "-pix_fmt", "yuv420p", str(path),
            ]  # fmt: skip
            subprocess.run(command, check=True)
        videos.append(path)
    return videos


def entries(root: Path) -> dict[str, Any]:
    found = {}
    for entry in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = json.loads((entry / "meta.json").read_text())
        meta.pop("created")
        found[entry.name] = (meta, [p.read_bytes() for p in sorted(entry.glob("chunk_*"))])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--cpus", type=int, default=os.cpu_count() or 2, help="CPUs the local Ray cluster gets"
    )
    parser.add_argument("--encoders", type=int, default=None, help="encoder actors (default: half the CPUs)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "build" / "bench-ray")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from llamavid.inference.corpus import ingest_corpus

    videos = make_videos(args.work_dir, args.videos, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        single = ingest_corpus(videos, cache_dir=Path(tmp) / "one")
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        startup_s = time.perf_counter() - start
        try:
            start = time.perf_counter()
            spread = ingest_corpus(
                videos, cache_dir=Path(tmp) / "ray", ray_address="auto", encoders=args.encoders
            )
            ray_s = time.perf_counter() - start
        finally:
            ray.shutdown()
        if single.failed or spread.failed:
            raise SystemExit(f"failures: {single.failed or spread.failed}")
        identical = entries(Path(tmp) / "one") == entries(Path(tmp) / "ray")
    frames = single.frames_encoded
    result = {
        "videos": args.videos,
        "frames": frames,
        "cpus": args.cpus,
        "load_average": os.getloadavg(),
        "one_process_s": round(single_s, 2),
        "ray_startup_s": round(startup_s, 2),
        "ray_ingest_s": round(ray_s, 2),
        "one_process_frames_per_s": round(frames / single_s, 2),
        "ray_frames_per_s": round(frames / ray_s, 2),
        "identical_entries": identical,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
