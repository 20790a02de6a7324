"""Continuous batching for many concurrent requests: one worker thread feeds the engine batches.

Requests wait in a bounded queue (`QueueFullError` when full, which the HTTP server answers with 429); the
worker takes the first waiting request, gathers more for up to `batch_wait_ms`, and generates them together.
Requests that sample differently cannot share a `generate` call and wait for the next batch. Each `Job`
delivers its events (``delta``, ``done``, ``error``) to an asyncio queue, so an async server can stream them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llamavid.errors import LlamaVidError
from llamavid.inference.engine import Engine, GenerationRequest
from llamavid.inference.results import Answer

logger = logging.getLogger(__name__)

__all__ = ["BatchScheduler", "Job", "QueueFullError"]


@dataclass
class Job:
    """One request waiting for, or in, a batch; `events` receives what the worker produces for it."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server shutting down)
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class QueueFullError(LlamaVidError):
    """The scheduler already holds `max_queue` waiting requests."""


class BatchScheduler:
    """One worker thread feeding the engine batches of waiting requests.

    Requests that sample differently cannot share a `generate` call; they wait for the next batch instead.
    Cancelled requests (timeout, client gone) are dropped from the queue or stopped mid-generation.
    """

    def __init__(self, engine: Engine, max_batch_size: int, batch_wait_ms: float, max_queue: int) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._carry: deque[Job] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self.batches_run = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llamavid-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError from None
        with self._changed:
            self._changed.notify_all()

    def queued(self) -> int:
        return self._queue.qsize() + len(self._carry)

    def wait_until_queued(self, count: int, timeout: float) -> bool:
        """Block until at least `count` requests wait (for tests and monitoring; no polling)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.queued() >= count, timeout=timeout)

    def _next(self, timeout: float | None) -> Job | None:
        if self._carry:
            return self._carry.popleft()
        try:
            return (
                self._queue.get(timeout=timeout)
                if timeout is None or timeout > 0
                else self._queue.get_nowait()
            )
        except queue.Empty:
            return None

    def _collect(self) -> list[Job]:
        first = self._next(timeout=0.1)
        if first is None or first.cancelled.is_set():
            return []
        batch: list[Job] = [first]
        skipped: list[Job] = []
        key = first.request.settings.batch_key
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.max_batch_size:
            job = self._next(timeout=deadline - time.monotonic())
            if job is None:
                break
            if job.cancelled.is_set():
                continue
            (batch if job.request.settings.batch_key == key else skipped).append(job)
        self._carry.extendleft(reversed(skipped))
        return batch

    def _generate(self, batch: list[Job]) -> list[Answer]:
        return self.engine.answer_batch(
            [job.request for job in batch],
            on_delta=lambda row, text: batch[row].send("delta", text),
            is_cancelled=lambda row: batch[row].cancelled.is_set(),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if not batch:
                continue
            with self._changed:
                self._changed.notify_all()
            self.batches_run += 1
            try:
                answers = self._generate(batch)
            except Exception as error:  # one bad batch must not stop the worker
                logger.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    job.send("error", error)
                continue
            for job, answer in zip(batch, answers, strict=True):
                job.send("done", answer)
