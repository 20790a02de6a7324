"""Batching: the only place that pads (STYLE §3.6).

`LlamaVidProcessor` builds the expanded inputs (each ``<image>`` -> ``T * (1 + n)`` placeholder ids, frames
preprocessed, questions tokenised for the Q-Former); the collator lines the dataset's labels up with them
(visual positions -> -100), enforces ``model_max_length`` *after* expansion (the official collator truncated
before it, so long videos overflowed; docs/architecture.md §3, §11) and right-pads, as the model's training path expects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from llamavid.errors import LlamaVidError, LlamaVidRuntimeError
from llamavid.model.configuration_llamavid import IGNORE_INDEX, IMAGE_TOKEN_INDEX

logger = logging.getLogger(__name__)


class OverlongSampleError(LlamaVidError, ValueError):
    """A sample longer than ``model_max_length`` with ``data.overlong: error``."""


class LlamaVidCollator:
    """Turn dataset samples into one right-padded model batch with ``labels``.

    Args:
        processor: the checkpoint's `LlamaVidProcessor`.
        model_max_length: longest allowed expanded sequence.
        overlong: ``skip`` (drop with a warning), ``truncate`` (cut trailing text when every visual token
            still fits and something stays supervised; otherwise skip) or ``error``.

    Returns (from ``__call__``):
        ``None`` when every sample was skipped, else a dict of model inputs plus ``labels`` and ``sample_ids``
        (a list of record names, not a tensor: pop it before calling the model).
    """

    def __init__(self, processor: Any, model_max_length: int, overlong: str = "skip") -> None:
        self.processor = processor
        self.model_max_length = int(model_max_length)
        self.overlong = overlong

    def block_length(self, frames: int, is_image: bool) -> int:
        """Placeholder ids of one ``<image>`` block showing `frames` frames (the processor's layout)."""
        return self.processor.num_visual_tokens(frames, is_image=is_image)

    def expand(self, sample: dict[str, Any]) -> tuple[list[int], list[int]]:
        """The sample's ids and labels with each -200 widened to its visual block (labels -100 there)."""
        lengths = iter([self.block_length(frames, is_image) for frames, is_image in sample["blocks"]])
        ids: list[int] = []
        labels: list[int] = []
        for token, label in zip(sample["input_ids"], sample["labels"], strict=True):
            if token == IMAGE_TOKEN_INDEX:
                width = next(lengths)
                ids += [IMAGE_TOKEN_INDEX] * width
                labels += [IGNORE_INDEX] * width
            else:
                ids.append(token)
                labels.append(label)
        return ids, labels

    def _admit(self, sample: dict[str, Any], ids: list[int], labels: list[int]) -> bool:
        if len(ids) <= self.model_max_length:
            return True
        limit = self.model_max_length
        message = (
            f"{sample['origin']}: {len(ids)} tokens after visual expansion exceed model_max_length={limit} "
            "(data.model_max_length); lower data.max_frames or raise the limit."
        )
        if self.overlong == "error":
            raise OverlongSampleError(message + " Set data.overlong=skip or truncate to continue past it.")
        last_visual = max((i for i, token in enumerate(ids) if token == IMAGE_TOKEN_INDEX), default=-1)
        keeps_answer = any(label != IGNORE_INDEX for label in labels[:limit])
        if self.overlong == "truncate" and last_visual < limit and keeps_answer:
            logger.warning("%s Truncating its text to fit.", message)
            return True
        logger.warning("%s Skipping it.", message)
        return False

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        kept, expanded = [], []
        for sample in samples:
            if sample is None:
                continue
            ids, labels = self.expand(sample)
            if self._admit(sample, ids, labels):
                kept.append(sample)
                expanded.append((ids, labels))
        if not kept:
            return None
        has_media = [bool(sample["media"]) for sample in kept]
        batch = self.processor(
            text=[sample["prompt"] for sample in kept],
            media=[sample["media"] for sample in kept],
            questions=[
                sample["questions"] if media else None for sample, media in zip(kept, has_media, strict=True)
            ],
            media_index=[sample["media_index"] for sample in kept] if any(has_media) else None,
            padding_side="right",
        )
        input_ids = batch["input_ids"]
        label_tensor = torch.full_like(input_ids, IGNORE_INDEX)
        for row, (ids, row_labels) in enumerate(expanded):
            built = input_ids[row, : len(ids)].tolist()
            if built != ids or int(batch["attention_mask"][row].sum()) != len(ids):
                raise LlamaVidRuntimeError(
                    f"{kept[row]['origin']}: the processor tokenised the prompt differently from the dataset "
                    "(labels would be misaligned); the tokenizer must tokenise each chunk deterministically."
                )
            label_tensor[row, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
        limit = self.model_max_length
        if input_ids.shape[1] > limit:
            # Right padding: cutting columns only trims the admitted samples' trailing text.
            batch["input_ids"] = input_ids[:, :limit]
            batch["attention_mask"] = batch["attention_mask"][:, :limit]
            label_tensor = label_tensor[:, :limit]
        batch["labels"] = label_tensor
        data = dict(batch)
        data["sample_ids"] = [sample["origin"] for sample in kept]
        return data


def without_trailing_padding_mask(inputs: dict[str, Any]) -> dict[str, Any]:
    """A right-padded training batch without its attention mask, where the mask adds nothing to causality.

    In a right-padded row every pad comes after the last real token, so causal attention alone already keeps
    real tokens from reading pads; the pads' own outputs carry ignored labels and reach no loss. Without the
    mask, SDPA runs its causal kernel instead of the masked one (on CPU about twice as fast on long rows) and the
    loss and gradients are the same up to float rounding. Any other mask (left padding, holes) is kept.
    """
    if not is_right_padded(inputs.get("attention_mask"), inputs.get("labels")):
        return inputs
    return {name: value for name, value in inputs.items() if name != "attention_mask"}


def is_right_padded(mask: torch.Tensor | None, labels: torch.Tensor | None) -> bool:
    """Whether every ``(B, L)`` mask row is ones then zeros and every pad's label is ignored."""
    if mask is None or labels is None or mask.ndim != 2 or not mask.shape[1]:
        return False
    right_padded = bool(mask[:, 0].all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())
    return right_padded and bool((labels[mask == 0] == IGNORE_INDEX).all())


__all__ = ["LlamaVidCollator", "OverlongSampleError", "is_right_padded", "without_trailing_padding_mask"]
