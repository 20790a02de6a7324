"""lmms-eval model plugin: ``lmms-eval --model llamavid --model_args pretrained=DIR,batch_size=4 --tasks ...``.

Registered through lmms-eval's ``lmms_eval.models`` entry-point group (see ``pyproject.toml``), so installing
llamavid next to lmms-eval is enough. It is a *chat* model (``is_simple = False``): it reads each task's
``doc_to_messages`` (text, image and video parts; several user/assistant turns make a multi-round prompt),
batches ``batch_size`` documents per ``generate`` call through :class:`~llamavid.eval.predictor.ModelPredictor`,
and implements ``generate_until_multi_round`` for tasks that drive rounds with ``doc_to_text``.

This module imports ``lmms_eval`` at import time; only lmms-eval (or a test that installs a stand-in) loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from lmms_eval.api.model import lmms

from llamavid.errors import InvalidInputError
from llamavid.eval.predictor import GenerationSettings, ModelPredictor, PredictRequest
from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN

logger = logging.getLogger(__name__)


def manifest() -> Any:
    """Entry-point payload: the model id ``llamavid`` -> :class:`LlamaVidLmms` (chat and simple paths)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    path = "llamavid.eval.lmms_plugin.LlamaVidLmms"
    return ModelManifest(model_id="llamavid", chat_class_path=path, simple_class_path=path)


def _to_media(url: Any, fps: float, max_frames: int | None) -> np.ndarray:
    """An lmms-eval media part (PIL image, array, or a path to a video/image/frame folder) as uint8 pixels."""
    if isinstance(url, np.ndarray):
        return url
    if hasattr(url, "convert"):  # PIL image
        return np.asarray(url.convert("RGB"), dtype=np.uint8)
    from llamavid.data import load_media

    frames = load_media(str(url), fps=fps, max_frames=max_frames)
    return frames.frames[0] if frames.fps is None and len(frames) == 1 else frames.frames


def _generation_kwargs(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> dict[str, Any]:
    """lmms-eval ``generation_kwargs`` -> ``generate`` kwargs (temperature 0 or absent means greedy)."""
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens),
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        kwargs["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            kwargs["top_p"] = float(gen_kwargs["top_p"])
    if int(gen_kwargs.get("num_beams") or 1) > 1:
        kwargs["num_beams"] = int(gen_kwargs["num_beams"])
    return kwargs


def _cut(text: str, until: Sequence[str] | str | None) -> str:
    for stop in [until] if isinstance(until, str) else list(until or []):
        if stop:
            text = text.split(stop)[0]
    return text


class LlamaVidLmms(lmms):
    """LLaMA-VID for lmms-eval.

    Args (``--model_args``):
        pretrained: llamavid model folder.
        batch_size: documents per ``generate`` call.
        device: torch device (default CPU); dtype: ``float32``/``bfloat16``/``float16``.
        fps / max_frames: video sampling (1 fps as the paper; no cap by default).
        max_new_tokens: default when a task gives none (1024, the paper's video QA setting).
        seed: sampling seed (reseeded per batch, as in ``llamavid eval``).
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 1,
        device: str | None = None,
        dtype: str | None = None,
        fps: float | str = 1.0,
        max_frames: int | str | None = None,
        max_new_tokens: int | str = 1024,
        seed: int | str = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            logger.warning("llamavid lmms-eval plugin ignores unknown model_args %s", sorted(kwargs))
        self.predictor = ModelPredictor.from_pretrained(pretrained, device=device, dtype=dtype)
        self.batch_size = int(batch_size)
        self.batch_size_per_gpu = self.batch_size
        self.fps = float(fps)
        self.max_frames = int(max_frames) if max_frames not in (None, "", "None") else None
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)

    # Message conversion -------------------------------------------------------------------------------------
    def request_from_messages(self, messages: Sequence[Any]) -> PredictRequest:
        """lmms-eval chat messages -> one :class:`PredictRequest` (``<image>`` where each media part sits).

        System messages are dropped: LLaMA-VID's template has its own system text (docs/architecture.md §6), and replacing it
        would change the model's behaviour. Text parts of one turn are joined with newlines.
        """
        turns: list[dict[str, str]] = []
        media: list[np.ndarray] = []
        question = None
        for message in messages:
            message = message if isinstance(message, dict) else message.model_dump()
            if message["role"] == "system":
                continue
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            texts: list[str] = []
            for part in parts:
                part = part if isinstance(part, dict) else part.model_dump()
                if part["type"] == "text":
                    texts.append(part["text"])
                elif part["type"] in ("image", "video"):
                    media.append(_to_media(part["url"], self.fps, self.max_frames))
                    texts.append(DEFAULT_IMAGE_TOKEN)
                else:
                    raise InvalidInputError(
                        f"LLaMA-VID cannot take {part['type']!r} inputs (only text, image, video)."
                    )
            text = "\n".join(texts)
            if turns and turns[-1]["role"] == message["role"]:
                turns[-1]["content"] += "\n" + text
            else:
                turns.append({"role": message["role"], "content": text})
            if message["role"] == "user":
                question = "\n".join(t for t in texts if t != DEFAULT_IMAGE_TOKEN)
        chosen: Any = None if not media else (media[0] if len(media) == 1 else media)
        return PredictRequest(tuple(turns), chosen, question)

    def _predict(
        self, requests: list[PredictRequest], gen_kwargs: dict[str, Any], first_id: str
    ) -> list[str]:
        settings = GenerationSettings(
            "lmms-eval", _generation_kwargs(gen_kwargs, self.max_new_tokens), self.seed
        )
        answers = self.predictor.predict(requests, settings, settings.batch_seed(first_id))
        return [_cut(answer, gen_kwargs.get("until")) for answer in answers]

    # lmms-eval API ------------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Chat requests ``(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)``, batched per gen_kwargs."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[2].items())), []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = []
                for index in chunk:
                    _, doc_to_messages, _, doc_id, task, split = requests[index].args
                    doc = self.task_dict[task][split][doc_id]
                    batch.append(self.request_from_messages(doc_to_messages(doc)))
                gen_kwargs = dict(requests[chunk[0]].args[2])
                answers = self._predict(
                    batch, gen_kwargs, f"{requests[chunk[0]].args[4]}/{requests[chunk[0]].args[3]}"
                )
                for index, answer in zip(chunk, answers, strict=True):
                    results[index] = answer
                    self.cache_hook.add_partial(
                        "generate_until", (requests[index].args[0], gen_kwargs), answer
                    )
        return [answer or "" for answer in results]

    def generate_until_multi_round(self, requests: list[Any]) -> list[Any]:
        """Rounds driven by the task: ``doc_to_text(doc, previous_output, round_idx, previous_round_info)``
        returns ``(visuals, context, terminal, round_results, round_info)``; earlier rounds stay in the prompt
        as user/assistant turns. Returns, per request, the task's final ``round_results``."""
        outputs: list[Any] = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            visuals = doc_to_visual(doc) or []
            media = [_to_media(v, self.fps, self.max_frames) for v in visuals]
            history: list[dict[str, str]] = []
            previous: list[str] = []
            info = None
            round_results: Any = previous
            round_index = 0
            while True:
                if round_index > 0:
                    _, context, terminal, round_results, info = doc_to_text(
                        doc, previous_output=previous, round_idx=round_index, previous_round_info=info
                    )
                    if terminal:
                        break
                prompt = context if history or not media else f"{DEFAULT_IMAGE_TOKEN}\n{context}"
                turns = (*history, {"role": "user", "content": prompt})
                chosen: Any = None if not media else (media[0] if len(media) == 1 else media)
                answer = self._predict(
                    [PredictRequest(turns, chosen, context)], dict(gen_kwargs), f"{task}/{doc_id}"
                )[0]
                history = [*turns, {"role": "assistant", "content": answer}]
                previous.append(answer)
                round_index += 1
            outputs.append(round_results)
        return outputs

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "the llamavid lmms-eval plugin implements generation tasks only; loglikelihood tasks are not supported."
        )
