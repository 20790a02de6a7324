"""The predictor interface the runner (and the lmms-eval plugin) talk to.

A predictor turns a batch of :class:`PredictRequest` into answer strings. :class:`ModelPredictor` answers
through the inference core (`llamavid.inference.Engine`): the same media preparation, prompt layout and
`generate` path as ``llamavid ask`` and the server, so a benchmark scores what users get.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llamavid.errors import InvalidInputError
from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN, GENERATION_DEFAULTS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictRequest:
    """One generation: a conversation, its media and the text-decoder instruction.

    Attributes:
        messages: Alternating ``{"role": "user"|"assistant", "content": str}`` turns ending with a user turn.
            ``<image>`` marks where the media's visual tokens go (at most once per turn); when no turn contains
            it and ``media`` is given, it is prepended to the first user turn as the official eval scripts do
            (``"<image>\\n" + question``).
        media: ``(T, H, W, 3)`` uint8 frames (video), ``(H, W, 3)`` (image), a PIL image, or ``None``.
        question: Instruction for the Q-Former (docs/architecture.md §10: the question itself); defaults to the last user turn.
    """

    messages: tuple[dict[str, str], ...]
    media: Any = None
    question: str | None = None

    @classmethod
    def single(cls, text: str, media: Any = None, question: str | None = None) -> PredictRequest:
        return cls(({"role": "user", "content": text},), media, question)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding of one run, recorded verbatim in every report.

    Attributes:
        preset: The docs/architecture.md §6 row it came from (``video_qa``, ``image_eval``) or ``"greedy"`` when overridden.
        kwargs: ``generate`` keyword arguments.
        seed: Base seed; each batch reseeds with ``seed + crc32(first item id)`` so a resumed run samples the
            same way for the same batch regardless of what ran before it.
    """

    preset: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def for_task(
        cls, preset: str, greedy: bool = False, seed: int = 0, max_new_tokens: int | None = None
    ) -> GenerationSettings:
        """Spec §6 defaults for ``preset`` (``--greedy`` switches sampling off, keeping the length limit)."""
        if preset not in GENERATION_DEFAULTS:
            raise InvalidInputError(
                f"unknown decoding preset {preset!r}; known: {sorted(GENERATION_DEFAULTS)}."
            )
        kwargs = dict(GENERATION_DEFAULTS[preset])
        name = preset
        if greedy and kwargs.get("do_sample"):
            kwargs = {"do_sample": False, "max_new_tokens": kwargs["max_new_tokens"]}
            name = f"{preset}+greedy"
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = int(max_new_tokens)
        return cls(name, kwargs, seed)

    def batch_seed(self, first_id: str) -> int:
        return (self.seed + zlib.crc32(first_id.encode("utf-8"))) % (2**31)

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "seed": self.seed, **self.kwargs}


class Predictor(Protocol):
    """What the runner needs from a model."""

    name: str

    def predict(
        self, requests: Sequence[PredictRequest], settings: GenerationSettings, seed: int
    ) -> list[str]:
        """Answers for ``requests``, in order; raise only for failures of the whole batch."""
        ...


class ModelPredictor:
    """Answers through `llamavid.inference.Engine`, batched with left padding on the device.

    Args:
        model: A LLaMA-VID model in eval mode.
        processor: Its processor.
        name: Recorded in predictions (the model folder for ``from_pretrained``).
    """

    def __init__(self, model: Any, processor: Any, name: str = "llamavid") -> None:
        from llamavid.inference.engine import Engine

        self.engine = Engine(model, processor, name=name)
        self.model = model
        self.processor = processor
        self.name = name

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: str | None = None, dtype: str | None = None
    ) -> ModelPredictor:
        """Load a llamavid model folder (the format ``llamavid convert`` writes), as every command loads it."""
        from llamavid.inference.loading import load_model

        loaded = load_model(directory, device=device, dtype=dtype)
        return cls(loaded.model, loaded.processor, name=str(directory))

    def _prompt(self, request: PredictRequest) -> tuple[str, str]:
        messages = [dict(message) for message in request.messages]
        if not messages or messages[-1].get("role") != "user":
            raise InvalidInputError("a request must end with a user turn (the question to answer).")
        has_placeholder = any(DEFAULT_IMAGE_TOKEN in message["content"] for message in messages)
        if request.media is not None and not has_placeholder:
            messages[0]["content"] = f"{DEFAULT_IMAGE_TOKEN}\n{messages[0]['content']}"
        question = request.question
        if question is None:
            question = messages[-1]["content"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        return self.processor.apply_chat_template(messages), question

    @staticmethod
    def _sampling(settings: GenerationSettings, seed: int) -> Any:
        from llamavid.inference.settings import SamplingSettings

        kwargs = settings.kwargs
        sample = bool(kwargs.get("do_sample", False))
        return SamplingSettings(
            temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
            top_p=float(kwargs.get("top_p", 1.0)),
            max_new_tokens=int(kwargs.get("max_new_tokens", 128)),
            seed=seed,
        )

    def _media(self, media: Any) -> Any:
        import numpy as np

        if media is None:
            return None
        if isinstance(media, (list, tuple)):  # several media items, one per <image> in order
            return [self._media(item) for item in media]
        if not isinstance(media, np.ndarray):  # a PIL image
            media = np.asarray(media.convert("RGB"))
        return self.engine.load_media(media)

    def predict(
        self, requests: Sequence[PredictRequest], settings: GenerationSettings, seed: int
    ) -> list[str]:
        sampling = self._sampling(settings, seed)
        batch = []
        for request in requests:
            prompt, question = self._prompt(request)
            batch.append(
                self.engine.build_prompt_request(prompt, self._media(request.media), question, sampling)
            )
        return [answer.text for answer in self.engine.answer_batch(batch)]
