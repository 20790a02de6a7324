"""The predictor interface the runner (and the lmms-eval plugin) talk to.

A predictor turns a batch of :class:`PredictRequest` into answer strings. :class:`ModelPredictor` batches
``model.generate`` through the processor with left padding; the serving engine can replace it later by
implementing the same two methods, without touching task code.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
        question: Instruction for the Q-Former (spec §10: the question itself); defaults to the last user turn.
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
        preset: The spec §6 row it came from (``video_qa``, ``image_eval``) or ``"greedy"`` when overridden.
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
            raise ValueError(f"unknown decoding preset {preset!r}; known: {sorted(GENERATION_DEFAULTS)}.")
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
    """Batched ``LlamaVidForConditionalGeneration.generate`` through :class:`LlamaVidProcessor` (left padding).

    Args:
        model: A LLaMA-VID model in eval mode.
        processor: Its processor.
        name: Recorded in predictions (the model folder for ``from_pretrained``).
    """

    def __init__(self, model: Any, processor: Any, name: str = "llamavid") -> None:
        self.model = model
        self.processor = processor
        self.name = name

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: str | None = None, dtype: str | None = None
    ) -> ModelPredictor:
        """Load a llamavid model folder (the format ``llamavid convert`` writes)."""
        import torch

        from llamavid.model import LlamaVidForConditionalGeneration, LlamaVidProcessor

        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = getattr(torch, dtype)
        model = LlamaVidForConditionalGeneration.from_pretrained(str(directory), **kwargs).eval()
        if device is not None:
            model = model.to(device)
        return cls(model, LlamaVidProcessor.from_pretrained(directory), name=str(directory))

    def _prompt(self, request: PredictRequest) -> tuple[str, str]:
        messages = [dict(message) for message in request.messages]
        if not messages or messages[-1].get("role") != "user":
            raise ValueError("a request must end with a user turn (the question to answer).")
        has_placeholder = any(DEFAULT_IMAGE_TOKEN in message["content"] for message in messages)
        if request.media is not None and not has_placeholder:
            messages[0]["content"] = f"{DEFAULT_IMAGE_TOKEN}\n{messages[0]['content']}"
        question = request.question
        if question is None:
            question = messages[-1]["content"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        return self.processor.apply_chat_template(messages), question

    def predict(
        self, requests: Sequence[PredictRequest], settings: GenerationSettings, seed: int
    ) -> list[str]:
        import torch

        prompts, questions, media = [], [], []
        for request in requests:
            prompt, question = self._prompt(request)
            prompts.append(prompt)
            media.append(request.media)
            # One instruction per <image> placeholder of the sample (multi-round: each turn's own question).
            count = prompt.count(DEFAULT_IMAGE_TOKEN)
            questions.append([question] * count if count else None)
        inputs = self.processor(prompts, media=media, questions=questions, padding_side="left")
        device = next(self.model.parameters()).device
        inputs = {name: value.to(device) if hasattr(value, "to") else value for name, value in inputs.items()}
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **settings.kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens)
