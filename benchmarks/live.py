"""Live sessions with the embedded tiny model on the CPU: ingest speed, answer latency, RSS, needle recall.

What is measured (results in JSON on stdout, a summary on stderr; docs/live.md records a run):

1. Ingest speed as a multiple of real time at 1 fps: a synthetic-world stream (an episode with its needle
   removed, 64 px) fed as raw RGB frames through an OS pipe as fast as the session takes them, for
   ``--minutes`` of stream time; and the same through the MPEG-TS path (a writer process muxing H.264, decoded
   by PyAV) for 10 minutes.
2. Answer latency p50/p95 over ``--questions`` distinct greedy questions (8 new tokens at most; 2 at 8 hours),
   the latency of a question asked again (its stored frame scores are reused), and RSS at 10 minutes (the
   reader paused there), at the end of the ingested stream, and at 8 hours; the 8-hour entry is the ingested
   hour's chunks repeated (cached features are per frame, so a question costs the same as on a real 8-hour
   entry; ingesting 8 real hours takes about ``8 x 60 / ingest speed`` minutes, see ``--minutes 480``).
3. The baseline that re-ingests the whole prefix for every question: encode every frame so far (raw frames,
   no decoding), then answer; one question at 10 minutes and one at the end.
4. Needle recall by position under the default ``relevance`` context policy (and ``uniform`` for comparison):
   the white needle frame of ``--trials`` held-out episodes written into the hour at 10 %, 50 % and 90 % (plus
   3 s per trial; the hour's cache entry copied and the one chunk patched), then "What colour is the shape on
   the white screen?".

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/live.py [--minutes 60] [--questions 10] [--trials 8]
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
import threading
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


def ingest_raw(engine: Any, cache: Path, minutes: float, questions: int) -> tuple[Any, dict[str, Any]]:
    """Feed `minutes` of the base episode as raw frames; pause at 10 minutes to measure questions there."""
    from llamavid.inference.live import LiveSession

    frames = int(minutes * 60)
    episode = base_episode(frames)
    read_end, write_end = os.pipe()
    pause_at = min(600, frames)
    resume = threading.Event()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as sink:
            for index in range(frames):
                if index == pause_at:
                    resume.wait(3600)
                sink.write(episode.render_frame(index, SIDE).tobytes())

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    started = time.perf_counter()
    session = LiveSession(engine, read_end, raw_size=(SIDE, SIDE), session_id="bench-hour", cache_dir=cache)
    status = session.wait(frames=pause_at, timeout=3600)
    first_leg = time.perf_counter() - started
    results: dict[str, Any] = {"10min": latencies(session, questions)} if pause_at == 600 else {}
    resume.set()
    second_started = time.perf_counter()
    status = session.wait(timeout=24 * 3600)
    second_leg = time.perf_counter() - second_started
    feeder.join(60)
    os.close(read_end)
    wall = first_leg + second_leg
    results["ingest_raw"] = {
        "frames": status.frames,
        "wall_s": round(wall, 1),
        "frames_per_s": round(status.frames / wall, 1),
        "x_real_time_at_1fps": round(status.frames / wall, 1),
        "state": status.state,
        **rss_mib(),
    }
    results[f"{int(minutes)}min"] = latencies(session, questions)
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

    episode = base_episode(frames)
    started = time.perf_counter()
    parts = []
    for start in range(0, frames, 64):
        batch = np.stack([episode.render_frame(i, SIDE) for i in range(start, min(start + 64, frames))])
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


def patched_copy(cache: Path, source_id: str, target_id: str, position: int, needle: Any) -> None:
    """Copy a live entry and overwrite frame `position`'s features with `needle` (1, 1+N, C) float16."""
    from safetensors.numpy import load_file, save

    source, target = cache / f"live-{source_id}", cache / f"live-{target_id}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
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


def repeated_copy(cache: Path, source_id: str, target_id: str, times: int) -> None:
    """An entry made of `times` copies of another's chunks, one after the other in stream time."""
    source, target = cache / f"live-{source_id}", cache / f"live-{target_id}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    meta = json.loads((source / "meta.json").read_text())
    span = meta["timestamps"][-1] + 1.0
    chunks, stamps = [], []
    for copy in range(times):
        for chunk in meta["chunks"]:
            name = f"chunk_{len(chunks):05d}.safetensors"
            os.link(source / chunk["file"], target / name)
            chunks.append({**chunk, "file": name, "start": chunk["start"] + copy * span})
        stamps += [t + copy * span for t in meta["timestamps"]]
    meta.update(chunks=chunks, timestamps=stamps, num_frames=len(stamps), duration=stamps[-1] + 1.0)
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
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--skip-8h", action="store_true", help="no 8-hour latency (its first questions take minutes)"
    )
    args = parser.parse_args()

    from transformers.utils import logging as transformers_logging

    from llamavid.inference import Engine

    transformers_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="llamavid-live-bench-"))
    cache = work / "cache"
    engine = Engine.from_pretrained(None, device="cpu", feature_cache=cache)
    results: dict[str, Any] = {"model": engine.name, "threads": os.environ.get("OMP_NUM_THREADS")}
    results["ingest_mpegts"] = ingest_mpegts(engine, cache, 600)
    print(f"MPEG-TS: {results['ingest_mpegts']}", file=sys.stderr, flush=True)
    session, raw = ingest_raw(engine, cache, args.minutes, args.questions)
    results.update(raw)
    session.close()
    print(json.dumps(raw), file=sys.stderr, flush=True)
    frames = int(args.minutes * 60)
    empty = work / "ended.ts"
    os.mkfifo(empty)
    holder = os.open(empty, os.O_RDWR)  # keeps the FIFO open; each resumed session sees it silent
    try:
        if not args.skip_8h:
            repeated_copy(cache, "bench-hour", "bench-8h", max(1, round(480 / args.minutes)))
            long = finished_idle(engine, cache, "bench-8h", empty)
            results["8h"] = latencies(long, min(args.questions, 2))
            long.close()
            print(f"8 h: {results['8h']}", file=sys.stderr, flush=True)
        results["recall"] = recall(engine, cache, frames, args.trials, empty)
    finally:
        os.close(holder)
    if not args.skip_baseline:
        results["baseline"] = {
            "10min": baseline(engine, 600),
            f"{int(args.minutes)}min": baseline(engine, frames),
        }
    print(json.dumps(results, indent=1))
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
