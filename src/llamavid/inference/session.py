"""Multi-turn chat about one media item: the frames are encoded once, every turn reuses their features."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamavid.errors import InvalidInputError
from llamavid.inference.media import PreparedMedia
from llamavid.inference.results import Answer, AttentionResult
from llamavid.inference.settings import SamplingSettings
from llamavid.inference.streaming import TextStream

if TYPE_CHECKING:
    from llamavid.inference.engine import Engine

__all__ = ["ChatSession"]


@dataclass
class ChatSession:
    """A multi-turn conversation about one media item, reusing its frame features every turn.

    Only the latest user turn carries the visual tokens and its context tokens follow that turn's question
    (as the official demo does); earlier turns stay in the prompt as text.
    """

    engine: Engine
    media: PreparedMedia | None
    settings: SamplingSettings
    history: list[tuple[str, str]] = field(default_factory=list)

    def ask(self, question: str, on_delta: Callable[[str], None] | None = None, **overrides: Any) -> Answer:
        """Answer the next question; the turn is appended to the history."""
        request = self.engine.build_request(
            question, self.media, self.history, self.settings.updated(**overrides)
        )
        callback = None if on_delta is None else (lambda row, text: on_delta(text))
        answer = self.engine.answer(request, on_delta=callback)
        self.history.append((request.question, answer.text))
        return answer

    def stream(self, question: str, **overrides: Any) -> Iterator[str]:
        """Yield the answer piece by piece; the turn is added to the history when the answer is complete."""
        request = self.engine.build_request(
            question, self.media, self.history, self.settings.updated(**overrides)
        )
        text_stream = TextStream(self.engine, request)
        yield from text_stream
        if text_stream.answer is not None:
            self.history.append((request.question, text_stream.answer.text))

    def reset(self) -> None:
        """Forget the conversation; the media and its features stay."""
        self.history.clear()

    @property
    def last_question(self) -> str | None:
        return self.history[-1][0] if self.history else None

    def attention(self, question: str | None = None) -> AttentionResult:
        """Attention for `question`, by default the last question asked."""
        if self.media is None:
            raise InvalidInputError("this chat has no media, so there is no attention to show.")
        question = question or self.last_question
        if not question:
            raise InvalidInputError("ask a question first (or pass one): attention depends on the question.")
        return self.engine.attention(self.media, question)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.engine.describe(),
            "media": None if self.media is None else self.media.source,
            "frames": 0 if self.media is None else self.media.num_frames,
            "turns": [{"user": user, "assistant": assistant} for user, assistant in self.history],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the conversation as JSON (model, media, turns)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path
