"""Streaming text out of a batched `generate`: per-row deltas, per-row stops, and an iterator for one answer.

transformers' `TextIteratorStreamer` only handles batches of one; `RowTracker` receives the ``(B,)`` tokens of
every step and decodes each row incrementally, so batched requests can still stream, stop at their own limits
and be cancelled one by one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from llamavid.inference.engine import Engine, GenerationRequest
    from llamavid.inference.results import Answer

DeltaCallback = Callable[[int, str], None]

__all__ = ["DeltaCallback", "RowTracker", "TextStream", "make_stopper", "make_streamer"]


def _streamer_classes() -> tuple[type, type]:
    from transformers.generation.stopping_criteria import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    return BaseStreamer, StoppingCriteria


class RowTracker:
    """Per-row bookkeeping for one batched `generate`: tokens so far, why each row stopped, text deltas.

    transformers' `TextIteratorStreamer` only handles batches of one; this tracker receives the ``(B,)`` tokens
    of every step and decodes each row incrementally, so batched requests can still stream.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        limits: list[int],
        on_delta: DeltaCallback | None,
        is_cancelled: Callable[[int], bool] | None,
    ) -> None:
        self.decode = decode
        self.eos_ids = eos_ids
        self.limits = limits
        self.on_delta = on_delta
        self.is_cancelled = is_cancelled
        self.tokens: list[list[int]] = [[] for _ in limits]
        self.finish: list[str | None] = [None] * len(limits)
        self.emitted: list[str] = [""] * len(limits)
        self.prompt_seen = False

    def check_cancelled(self) -> None:
        if self.is_cancelled is None:
            return
        for row, finish in enumerate(self.finish):
            if finish is None and self.is_cancelled(row):
                self.finish[row] = "cancelled"

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen and value.ndim == 2:
            self.prompt_seen = True  # generate() first hands the streamer the prompt ids
            return
        self.prompt_seen = True
        self.check_cancelled()
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finish[row] is not None:
                continue  # finished rows receive pad ids until the whole batch stops
            self.tokens[row].append(int(token))
            if int(token) in self.eos_ids:
                self.finish[row] = "stop"
            elif len(self.tokens[row]) >= self.limits[row]:
                self.finish[row] = "length"
            self._emit(row, final=False)

    def _emit(self, row: int, final: bool) -> None:
        if self.on_delta is None:
            return
        text = self.decode(self.tokens[row])
        if not final:
            # Hold back the last word: byte-fallback tokens (parts of one UTF-8 character) change how the tail
            # decodes once the rest arrives, but never the text before a following space (TextStreamer's rule).
            text = text[: text.rfind(" ") + 1]
        if text.startswith(self.emitted[row]) and len(text) > len(self.emitted[row]):
            delta = text[len(self.emitted[row]) :]
            self.emitted[row] = text
            self.on_delta(row, delta)

    def end(self) -> None:
        for row in range(len(self.limits)):
            if self.finish[row] is None:
                self.finish[row] = "length"
            self._emit(row, final=True)

    def done(self) -> list[bool]:
        self.check_cancelled()
        return [finish is not None for finish in self.finish]


def make_streamer(tracker: RowTracker) -> Any:
    base_streamer, _ = _streamer_classes()

    class _Streamer(base_streamer):  # type: ignore[misc, valid-type]
        def put(self, value: Tensor) -> None:
            tracker.put(value)

        def end(self) -> None:
            tracker.end()

    return _Streamer()


def make_stopper(tracker: RowTracker) -> Any:
    _, stopping_criteria = _streamer_classes()

    class _Stopper(stopping_criteria):  # type: ignore[misc, valid-type]
        # Per-row limits, EOS and cancellation in one place: finished rows stop without stopping the batch.
        def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
            return torch.tensor(tracker.done(), dtype=torch.bool, device=input_ids.device)

    return _Stopper()


class TextStream:
    """Iterate over answer pieces while `generate` runs in a worker thread; `.answer` is set at the end.

    Leaving the loop early (``break``) cancels the generation instead of letting it run to the limit.
    """

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self.engine = engine
        self.request = request
        self.answer: Answer | None = None
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._cancel = threading.Event()

    def _run(self) -> None:
        try:
            answer = self.engine.answer_batch(
                [self.request],
                on_delta=lambda row, text: self._queue.put(("delta", text)),
                is_cancelled=lambda row: self._cancel.is_set(),
            )[0]
            self._queue.put(("done", answer))
        except BaseException as error:  # re-raised in the consumer's thread
            self._queue.put(("error", error))

    def __iter__(self) -> Iterator[str]:
        thread = threading.Thread(target=self._run, name="llamavid-generate", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = self._queue.get()
                if kind == "delta":
                    yield value
                elif kind == "done":
                    self.answer = value
                    return
                else:
                    raise value
        finally:
            self._cancel.set()
            thread.join()
