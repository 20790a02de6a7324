"""The ingestion pipeline: decode → preprocess → encode → write, every stage at once, with bounded queues.

Why: ingesting a long video is four different kinds of work — demuxing and decoding (PyAV, C code that releases
the GIL), resizing and normalising (PIL and numpy, which release it too), running the vision encoder (torch ops
release it; on CUDA the GPU does the work) and writing fp16 chunks (hashing and file I/O). Run one after
another, each waits for the others; run as threads joined by queues, the slowest stage sets the pace and the
others hide behind it. :class:`PipelineStats` says which one that is.

Stages and threads: ``decode`` (the batch iterator), ``preprocess`` and ``encode`` each run in their own thread;
``write`` runs in the calling thread, so progress callbacks, cache writes and the errors a caller sees all
happen where the caller is, and Ctrl-C (delivered to the main thread) stops the run between two writes.

Memory bound: items are encoder batches of at most ``batch_size`` frames. Three queues of ``depth`` items sit
between the four stages, and each stage holds one item, so at most ``3 × depth + 4`` batches are in flight at
any time (:attr:`PipelineStats.peak_frames_in_flight` records the real peak), whatever the length of the video.
Only the decode → preprocess queue holds full-resolution frames: ``(depth + 2) × batch_size`` of them at most
(with the defaults, 4 × 16 = 64 frames, ~400 MB at 1080p). The writer also gathers the features of one cache
chunk before storing it.

Errors: a stage that raises (a video corrupted mid-stream, an encoder failure) passes the error downstream
behind the items it already produced, so everything before it is still written (finished chunks are kept, as
the cache's atomic writes promise) and the caller gets the original exception. An error in the writer or a
KeyboardInterrupt stops every thread: they notice within :data:`_POLL_SECONDS` while waiting on a queue, or
when their current batch is done, and are joined before the exception leaves :func:`run_pipeline` (after
Ctrl-C for at most :data:`_INTERRUPT_JOIN_SECONDS`: a stage still inside a long batch then finishes it in the
background, daemon thread, writing nothing).

``threaded=False`` runs the same four stage functions one after another in the calling thread: the sequential
reference that tests and ``benchmarks/ingestion.py`` compare the pipeline with.

This module knows nothing about models or the cache format; `llamavid.data.feature_cache` supplies the stages.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llamavid.errors import InvalidInputError

__all__ = ["DEFAULT_QUEUE_DEPTH", "STAGES", "PipelineItem", "PipelineStats", "StageStats", "run_pipeline"]

STAGES = ("decode", "preprocess", "encode", "write")
# Two batches waiting between stages absorb jitter (a keyframe group that decodes slowly, a chunk write).
DEFAULT_QUEUE_DEPTH = 2
# How often a thread waiting on a queue checks whether the run was stopped (not a delay: items wake it at once).
_POLL_SECONDS = 0.1
# After Ctrl-C, how long to wait for stages to finish their current batch (a CPU batch of a big encoder can take
# minutes; they write nothing, and stop at their next queue operation).
_INTERRUPT_JOIN_SECONDS = 5.0

logger = logging.getLogger(__name__)


@dataclass
class PipelineItem:
    """One encoder batch on its way through the stages.

    Attributes:
        frames: how many frames the batch holds (for the frames/s of every stage).
        data: what the next stage takes: decoded frames, then pixels, then features.
        tag: anything the decode stage wants the write stage to know (chunk index, timestamps...).
    """

    frames: int
    data: Any
    tag: Any = None


@dataclass
class StageStats:
    """Work done by one stage: frames through it and the seconds it was busy (not waiting on a queue)."""

    name: str
    frames: int = 0
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float | None:
        return self.frames / self.seconds if self.seconds > 0 else None


@dataclass
class PipelineStats:
    """Per-stage throughput of one run, and the stage that bounded it.

    Attributes:
        stages: ``decode``, ``preprocess``, ``encode``, ``write`` in order.
        wall_seconds: the whole run, first decode to last write.
        threaded: whether the stages ran at once (the pipeline) or one after another.
        queue_depth: items each queue could hold.
        peak_frames_in_flight: most frames decoded but not yet written at any moment (the memory bound at work).
    """

    stages: dict[str, StageStats] = field(default_factory=lambda: {name: StageStats(name) for name in STAGES})
    wall_seconds: float = 0.0
    threaded: bool = True
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    peak_frames_in_flight: int = 0

    @property
    def frames(self) -> int:
        """Frames that went all the way through (written)."""
        return self.stages["write"].frames

    @property
    def bound(self) -> str | None:
        """The stage that was busy longest: the others waited on it. None when nothing ran."""
        busiest = max(self.stages.values(), key=lambda stage: stage.seconds)
        return busiest.name if busiest.seconds > 0 else None

    @property
    def frames_per_second(self) -> float | None:
        """End to end: frames written per wall-clock second."""
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else None

    def describe(self) -> str:
        """One line: ``decode 41.2 f/s · preprocess 180 f/s · encode 23.0 f/s · write 900 f/s — bound: encode``."""
        parts = [f"{name} {_rate(stage.frames_per_second)} f/s" for name, stage in self.stages.items()]
        return " · ".join(parts) + f" — bound: {self.bound or 'none'}"

    def to_dict(self) -> dict[str, Any]:
        """For ``--json`` and benchmark output: frames/s per stage (None when a stage did no work)."""
        return {
            "stages": {
                name: {
                    "frames": stage.frames,
                    "busy_seconds": round(stage.seconds, 4),
                    "frames_per_second": None
                    if stage.frames_per_second is None
                    else round(stage.frames_per_second, 2),
                }
                for name, stage in self.stages.items()
            },
            "bound": self.bound,
            "wall_seconds": round(self.wall_seconds, 4),
            "frames_per_second": None if self.frames_per_second is None else round(self.frames_per_second, 2),
            "threaded": self.threaded,
            "queue_depth": self.queue_depth,
            "peak_frames_in_flight": self.peak_frames_in_flight,
        }


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


class _End:
    """Sent downstream after the last item."""


@dataclass
class _Failure:
    """Sent downstream instead of further items when a stage raised."""

    error: BaseException


class _Run:
    """State shared by the threads of one run."""

    def __init__(self, stats: PipelineStats) -> None:
        self.stats = stats
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0

    def decoded(self, frames: int) -> None:
        with self.lock:
            self.in_flight += frames
            self.stats.peak_frames_in_flight = max(self.stats.peak_frames_in_flight, self.in_flight)

    def written(self, frames: int) -> None:
        with self.lock:
            self.in_flight -= frames

    def put(self, target: queue.Queue[Any], value: Any) -> bool:
        """Block until there is room, unless the run is stopped (then drop `value` and say so)."""
        while not self.stop.is_set():
            try:
                target.put(value, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def get(self, source: queue.Queue[Any]) -> Any:
        """The next value, or `_End` when the run is stopped first."""
        while not self.stop.is_set():
            try:
                return source.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
        return _End()


def _timed(stage: StageStats, function: Callable[[Any], Any], item: PipelineItem) -> None:
    started = time.perf_counter()
    item.data = function(item.data)
    stage.seconds += time.perf_counter() - started
    stage.frames += item.frames


def _next_timed(stage: StageStats, batches: Iterator[PipelineItem]) -> PipelineItem | None:
    started = time.perf_counter()
    try:
        item = next(batches)
    except StopIteration:
        return None
    finally:
        stage.seconds += time.perf_counter() - started
    stage.frames += item.frames
    return item


def _decode_thread(run: _Run, batches: Iterator[PipelineItem], out: queue.Queue[Any]) -> None:
    stage = run.stats.stages["decode"]
    try:
        while not run.stop.is_set():
            item = _next_timed(stage, batches)
            if item is None:
                run.put(out, _End())
                return
            run.decoded(item.frames)
            if not run.put(out, item):
                return
    except BaseException as error:  # forwarded: the caller gets it after the items already produced
        run.put(out, _Failure(error))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # a generator's `finally` (closing the container) runs here, in the thread that ran it


def _stage_thread(
    run: _Run, name: str, function: Callable[[Any], Any], source: queue.Queue[Any], out: queue.Queue[Any]
) -> None:
    stage = run.stats.stages[name]
    try:
        while True:
            value = run.get(source)
            if isinstance(value, (_End, _Failure)):
                run.put(out, value)
                return
            _timed(stage, function, value)
            if not run.put(out, value):
                return
    except BaseException as error:
        run.put(out, _Failure(error))


def run_pipeline(
    batches: Iterator[PipelineItem],
    preprocess: Callable[[Any], Any],
    encode: Callable[[Any], Any],
    write: Callable[[PipelineItem], None],
    *,
    depth: int = DEFAULT_QUEUE_DEPTH,
    threaded: bool = True,
) -> PipelineStats:
    """Run the four stages over `batches` and return their statistics.

    Args:
        batches: the decode stage: yields items whose ``data`` holds decoded frames. Closed at the end, also on
            error, from the thread that iterated it.
        preprocess: frames -> pixels (its return value replaces ``item.data``).
        encode: pixels -> features.
        write: stores an item; runs in the calling thread, in decode order.
        depth: items each of the three queues holds (see the module docstring for the memory bound).
        threaded: False runs the stages one after another in the calling thread (the sequential reference).

    Raises:
        Whatever a stage raised, after every item produced before it was written.
    """
    if depth < 1:
        raise InvalidInputError(f"the pipeline's queue depth must be at least 1, got {depth}.")
    stats = PipelineStats(threaded=threaded, queue_depth=depth)
    run = _Run(stats)
    started = time.perf_counter()
    try:
        if threaded:
            _run_threads(run, batches, preprocess, encode, write, depth)
        else:
            _run_inline(run, batches, preprocess, encode, write)
    finally:
        stats.wall_seconds = time.perf_counter() - started
    return stats


def _write_timed(run: _Run, write: Callable[[PipelineItem], None], item: PipelineItem) -> None:
    stage = run.stats.stages["write"]
    started = time.perf_counter()
    write(item)
    stage.seconds += time.perf_counter() - started
    stage.frames += item.frames
    run.written(item.frames)


def _run_inline(
    run: _Run,
    batches: Iterator[PipelineItem],
    preprocess: Callable[[Any], Any],
    encode: Callable[[Any], Any],
    write: Callable[[PipelineItem], None],
) -> None:
    stages = run.stats.stages
    try:
        while (item := _next_timed(stages["decode"], batches)) is not None:
            run.decoded(item.frames)
            _timed(stages["preprocess"], preprocess, item)
            _timed(stages["encode"], encode, item)
            _write_timed(run, write, item)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _run_threads(
    run: _Run,
    batches: Iterator[PipelineItem],
    preprocess: Callable[[Any], Any],
    encode: Callable[[Any], Any],
    write: Callable[[PipelineItem], None],
    depth: int,
) -> None:
    decoded: queue.Queue[Any] = queue.Queue(maxsize=depth)
    pixels: queue.Queue[Any] = queue.Queue(maxsize=depth)
    features: queue.Queue[Any] = queue.Queue(maxsize=depth)
    # Daemon threads: were one stuck inside a C call, it must not keep the interpreter alive at exit.
    threads = [
        threading.Thread(
            target=_decode_thread, args=(run, batches, decoded), name="llamavid-decode", daemon=True
        ),
        threading.Thread(
            target=_stage_thread,
            args=(run, "preprocess", preprocess, decoded, pixels),
            name="llamavid-preprocess",
            daemon=True,
        ),
        threading.Thread(
            target=_stage_thread,
            args=(run, "encode", encode, pixels, features),
            name="llamavid-encode",
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    interrupted = False
    try:
        while True:
            value = run.get(features)
            if isinstance(value, _End):
                return
            if isinstance(value, _Failure):
                raise value.error
            _write_timed(run, write, value)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        run.stop.set()  # no-op after a clean end; otherwise unblocks every producer
        deadline = time.monotonic() + _INTERRUPT_JOIN_SECONDS if interrupted else None
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        busy = [thread.name for thread in threads if thread.is_alive()]
        if busy:
            logger.warning(
                "interrupted: %s still finishing a batch (nothing more is written)", ", ".join(busy)
            )
