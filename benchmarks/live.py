"""Live sessions with the embedded tiny model on the CPU: ingest speed, answer latency, RSS, needle recall.

What is measured (results in JSON on stdout, a summary on stderr; docs/live.md records a run):

1. Ingest speed as a multiple of real time at 1 fps: a synthetic-world stream (an hour-long episode with its
   needle removed, 64 px, looped) written as raw RGB frames by a writer *process* into a pipe, as fast as the
   session takes them, for ``--hours`` of stream time (8 by default: 28,800 frames, a real 8-hour entry); and
   the MPEG-TS path (a writer process muxing H.264, decoded by PyAV) for 10 minutes.
2. At 10 minutes, 1 hour and the end (the writer paused there; the pauses are not ingest time): answer latency
   p50/p95 over ``--questions`` distinct greedy questions (8 new tokens at most; each scores every frame
   afresh), the latency of a question asked again (its stored frame scores are reused), and the process's RSS
   and peak RSS (the writer is another process).
3. The baseline that re-ingests the whole prefix for every question: encode every frame so far (raw frames,
   no decoding), then answer (uniform frames, as many as fit); at 10 minutes and 1 hour (at 8 hours it is about
   the 8-hour ingest time, reported as such).
4. Needle recall by position under the default ``relevance`` context policy (and ``uniform`` for comparison):
   the white needle frame of ``--trials`` held-out episodes written into the first hour at 10 %, 50 % and 90 %
   (plus 3 s per trial; a copy of the entry's first hour with the one chunk patched), then "What colour is the
   shape on the white screen?".

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/live.py [--hours 8] [--questions 5] [--trials 8]
       [--skip-recall] [--skip-baseline] [--skip-mpegts]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

QUESTION = "What colour is the shape on the white screen?"
SIDE = 64


def rss_mib() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    status = {line.split(":")[0]: line.split()[1] for line in text.splitlines() if len(line.split()) > 1}
    return {
        "rss_mib": round(int(status["VmRSS"]) / 1024, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def base_episode(frames: int) -> Any:
    from llamavid.synth.episodes import make_episode

    episode = make_episode(np.random.default_rng(0), "heldout", max(frames, 60))
    return dataclasses.replace(episode, needle_start=-10)  # no needle: the recall trials write one in


def latencies(session: Any, count: int, **options: Any) -> dict[str, Any]:
    """`count` distinct questions (each scores every frame afresh), then the first one again (scores reused)."""
    from llamavid.synth.episodes import episode_questions, make_episode

    episode = make_episode(np.random.default_rng(7), "heldout", 60)
    questions = [QUESTION] + [item.question for item in episode_questions(episode, "bench")]
    questions = list(dict.fromkeys(questions))[: max(1, count)]
    times, answer = [], None
    for question in questions:
        started = time.perf_counter()
        answer = session.ask(question, temperature=0, max_new_tokens=8, **options)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    session.ask(questions[0], temperature=0, max_new_tokens=8, **options)
    repeated = time.perf_counter() - started
    assert answer is not None
    return {
        "questions": len(times),
        "p50_s": round(float(np.percentile(times, 50)), 3),
        "p95_s": round(float(np.percentile(times, 95)), 3),
        "repeated_question_s": round(repeated, 3),
        "frames_seen": answer.frames_seen,
        "frames_used": answer.frames_used,
        "policy": answer.policy,
        **rss_mib(),
    }


# argv: total frames, then the frames after which to pause until a line arrives on stdin. Frame i of the stream
# is frame i mod 3600 of the base episode (an hour, needle removed).
WRITER = r"""
import dataclasses, sys
import numpy as np
from llamavid.synth.episodes import make_episode

total, pauses = int(sys.argv[1]), {int(v) for v in sys.argv[2:]}
episode = dataclasses.replace(make_episode(np.random.default_rng(0), "heldout", 3600), needle_start=-10)
sink = sys.stdout.buffer
for index in range(total):
    if index in pauses:
        sink.flush()
        sys.stdin.readline()
    sink.write(episode.render_frame(index % 3600, %(side)d).tobytes())
sink.flush()
""".replace("%(side)d", str(SIDE))


def ingest_raw(
    engine: Any, cache: Path, frames: int, questions: int, long_questions: int
) -> tuple[Any, dict[str, Any]]:
    """Ingest `frames` raw frames from a writer process; at 10 min, 1 h and the end, measure questions."""
    from llamavid.inference.live import LiveSession

    points = [point for point in (600, 3600) if point < frames] + [frames]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(frames), *map(str, points[:-1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert writer.stdin is not None and writer.stdout is not None
    results: dict[str, Any] = {}
    session = LiveSession(
        engine, writer.stdout, raw_size=(SIDE, SIDE), session_id="bench-live", cache_dir=cache
    )
    ingest_wall = 0.0
    started = time.perf_counter()
    try:
        for point in points:
            status = session.wait(frames=point, timeout=3600)
            ingest_wall += time.perf_counter() - started
            label = f"{point // 3600}h" if point % 3600 == 0 else f"{point // 60}min"
            results[label] = {
                "frames": status.frames,
                "ingest_wall_s": round(ingest_wall, 1),
                "x_real_time_at_1fps": round(status.frames / ingest_wall, 1),
                "latency": latencies(session, questions if point <= 3600 else long_questions),
            }
            print(f"{label}: {json.dumps(results[label])}", file=sys.stderr, flush=True)
            if point != points[-1]:
                writer.stdin.write(b"go\n")
                writer.stdin.flush()
            started = time.perf_counter()
        writer.stdin.close()
        status = session.wait(timeout=600)
        results["state"] = status.state
    finally:
        writer.kill()
        writer.wait(60)
    return session, results


def ingest_mpegts(engine: Any, cache: Path, frames: int) -> dict[str, Any]:
    """The MPEG-TS path: a writer process muxes H.264 to a pipe, the session decodes and encodes it."""
    from llamavid.inference.live import LiveSession

    writer_code = (
        "import sys, av, numpy as np, dataclasses\n"
        "from llamavid.synth.episodes import make_episode\n"
        f"e = make_episode(np.random.default_rng(0), 'heldout', {max(frames, 60)})\n"
        "c = av.open(sys.stdout.buffer, 'w', format='mpegts')\n"
        "s = c.add_stream('libx264', rate=1, options={'preset': 'ultrafast', 'qp': '4', 'g': '4'})\n"
        f"s.width = s.height = {SIDE}; s.pix_fmt = 'yuv420p'\n"
        f"for i in range({frames}):\n"
        f"    c.mux(s.encode(av.VideoFrame.from_ndarray(e.render_frame(i, {SIDE}), format='rgb24')))\n"
        "c.mux(s.encode()); c.close()\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", writer_code], stdout=subprocess.PIPE)
    started = time.perf_counter()
    session = LiveSession(engine, writer.stdout, session_id="bench-ts", cache_dir=cache)
    status = session.wait(timeout=3600)
    wall = time.perf_counter() - started
    writer.wait(60)
    return {
        "frames": status.frames,
        "wall_s": round(wall, 1),
        "x_real_time_at_1fps": round(status.frames / wall, 1),
        "state": status.state,
    }


def baseline(engine: Any, frames: int) -> dict[str, Any]:
    """Re-ingest the whole prefix for one question: encode every frame, then answer (uniform when too long)."""
    import torch

    from llamavid.inference.media import PreparedMedia

    episode = base_episode(3600)
    started = time.perf_counter()
    parts = []
    for start in range(0, frames, 64):
        indices = range(start, min(start + 64, frames))
        batch = np.stack([episode.render_frame(i % 3600, SIDE) for i in indices])
        with torch.no_grad():
            parts.append(engine.frame_encoder(batch))
    features = torch.cat(parts)
    settings = engine.settings(temperature=0, max_new_tokens=8)
    fit = frames
    while fit > 1:
        try:
            engine.check_budget(QUESTION, fit, settings=settings)
            break
        except ValueError:
            fit = int(fit * 0.9)
    keep = np.linspace(0, frames - 1, fit).round().astype(int)
    media = PreparedMedia(
        source="baseline",
        is_image=False,
        timestamps=keep.astype(np.float64),
        duration=float(frames),
        features=features[torch.as_tensor(keep)].to(engine.dtype),
        thumbnails=np.zeros((fit, 1, 1, 3), np.uint8),
    )
    engine.answer(engine.build_request(QUESTION, media, settings=settings))
    return {"frames": frames, "seconds": round(time.perf_counter() - started, 2), **rss_mib()}


def hour_entry(cache: Path, source_id: str, target_id: str, frames: int) -> int:
    """An entry of the whole chunks among another's first `frames` frames (hard links); returns its frames."""
    source, target = cache / f"live-{source_id}", cache / f"live-{target_id}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    meta = json.loads((source / "meta.json").read_text())
    kept, count = [], 0
    for chunk in meta["chunks"]:
        if count + chunk["frames"] > frames:
            break
        os.link(source / chunk["file"], target / chunk["file"])
        kept.append(chunk)
        count += chunk["frames"]
    stamps = meta["timestamps"][:count]
    meta.update(chunks=kept, timestamps=stamps, num_frames=count, duration=stamps[-1] + 1.0)
    meta["live"]["session_id"] = target_id
    (target / "meta.json").write_text(json.dumps(meta))
    return count


def patched_copy(cache: Path, source_id: str, target_id: str, position: int, needle: Any) -> None:
    """Copy a live entry and overwrite frame `position`'s features with `needle` (1, 1+N, C) float16."""
    from safetensors.numpy import load_file, save

    source, target = cache / f"live-{source_id}", cache / f"live-{target_id}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=shutil.copy)
    meta = json.loads((target / "meta.json").read_text())
    offset = 0
    for chunk in meta["chunks"]:
        if offset <= position < offset + chunk["frames"]:
            tensors = load_file(str(target / chunk["file"]))
            tensors["features"][position - offset] = needle[0]
            data = save(tensors, metadata={"format_version": "2"})
            (target / chunk["file"]).write_bytes(data)
            chunk.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            break
        offset += chunk["frames"]
    meta["live"]["session_id"] = target_id
    (target / "meta.json").write_text(json.dumps(meta))


def recall(engine: Any, cache: Path, frames: int, trials: int, empty: Path) -> dict[str, Any]:
    from llamavid.synth.episodes import make_episode

    results: dict[str, Any] = {}
    needles = []
    for seed in range(100, 100 + trials):
        episode = make_episode(np.random.default_rng(seed), "heldout", 60)
        image = episode.render_frame(episode.needle_start, SIDE)[None]
        needles.append((engine.frame_encoder(image).numpy(), episode.needle_colour))
    for fraction in (0.1, 0.5, 0.9):
        for policy in ("relevance", "uniform"):
            hits, used = 0, 0
            for trial, (needle, colour) in enumerate(needles):
                # Seconds apart per trial, so a uniform grid does not always (or never) land on the needle.
                position = min(int(fraction * (frames - 1)) + 3 * trial, frames - 1)
                session_id = f"bench-recall-{trial}"
                patched_copy(cache, "bench-hour", session_id, position, needle)
                session = finished_idle(engine, cache, session_id, empty)
                answer = session.ask(QUESTION, temperature=0, max_new_tokens=8, context_policy=policy)
                hits += answer.text.strip().lower() == colour
                used = answer.frames_used
                shutil.rmtree(cache / f"live-{session_id}")
            results[f"{int(fraction * 100)}%/{policy}"] = {"recall": hits / trials, "frames_used": used}
            print(f"recall at {fraction:.0%} ({policy}): {hits}/{trials}", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0, help="stream time to ingest (default 8)")
    parser.add_argument("--questions", type=int, default=5, help="distinct questions at 10 min and 1 h")
    parser.add_argument(
        "--long-questions",
        type=int,
        default=2,
        help="distinct questions beyond 1 h (each scores every frame)",
    )
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-mpegts", action="store_true")
    args = parser.parse_args()

    from transformers.utils import logging as transformers_logging

    from llamavid.inference import Engine

    transformers_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="llamavid-live-bench-"))
    cache = work / "cache"
    engine = Engine.from_pretrained(None, device="cpu", feature_cache=cache)
    results: dict[str, Any] = {"model": engine.name, "threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        if not args.skip_mpegts:
            results["ingest_mpegts"] = ingest_mpegts(engine, cache, 600)
            print(f"MPEG-TS: {results['ingest_mpegts']}", file=sys.stderr, flush=True)
        frames = int(round(args.hours * 3600))
        session, raw = ingest_raw(engine, cache, frames, args.questions, args.long_questions)
        results["raw"] = raw
        session.close()
        if not args.skip_baseline:
            results["baseline"] = {
                "10min": baseline(engine, min(600, frames)),
                **({"1h": baseline(engine, 3600)} if frames >= 3600 else {}),
            }
            print(f"baseline: {results['baseline']}", file=sys.stderr, flush=True)
        if not args.skip_recall:
            hour = hour_entry(cache, "bench-live", "bench-hour", min(3600, frames))
            empty = work / "ended.ts"
            os.mkfifo(empty)
            holder = os.open(empty, os.O_RDWR)  # keeps the FIFO open; each resumed session sees it silent
            try:
                results["recall"] = {"frames": hour, **recall(engine, cache, hour, args.trials, empty)}
            finally:
                os.close(holder)
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def finished_idle(engine: Any, cache: Path, session_id: str, fifo: Path) -> Any:
    """A resumed session over an entry whose source (a silent FIFO of raw frames) ends at once (idle timeout)."""
    from llamavid.inference.live import LiveSession

    session = LiveSession(
        engine, fifo, session_id=session_id, cache_dir=cache, idle_timeout=0.05, raw_size=(SIDE, SIDE)
    )
    session.wait(timeout=60)
    return session


if __name__ == "__main__":
    main()
