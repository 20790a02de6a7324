"""Synthetic items as training batches: rendered frames, frozen features, prompts and subsets (tiny model glue).

What :mod:`llamavid.train.tiny_phase` feeds the recipe: an item's frames rendered by the synthetic world, encoded
by the frozen tower (cached through :class:`llamavid.data.FeatureCache`), and model inputs built from those cached
features exactly as :class:`~llamavid.model.LlamaVidProcessor` builds them from pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from llamavid.model.configuration_llamavid import IGNORE_INDEX
from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN, build_long_video_message
from llamavid.model.processing_llamavid import LlamaVidProcessor
from llamavid.synth import Episode, FrameSpec, render_frame
from llamavid.synth._common import QAItem
from llamavid.train.stage0_vision import normalise


def item_frames(item: QAItem, size: int) -> np.ndarray | None:
    """``(T, H, W, 3)`` uint8 frames of an item's medium (T = 1 for images), or None for text-only items."""
    if item.media is None:
        return None
    if isinstance(item.media, FrameSpec):
        return render_frame(item.media, size)[None]
    return item.media.render(size)


@torch.no_grad()
def encode_frames(tower: torch.nn.Module, frames: np.ndarray, chunk: int = 64) -> Tensor:
    """Frozen tower features ``(T, 1+N, C)`` in fp16 (what the cache stores).

    64 frames a chunk, as the inference engine uses: on 2 CPU threads 1,200 frames take 1.2 s against 1.5 s in
    chunks of 256, with bit-identical features (each frame is encoded on its own).
    """
    parts = [tower(normalise(frames[i : i + chunk])).half() for i in range(0, len(frames), chunk)]
    return torch.cat(parts)


def prompt_for(item: QAItem, processor: LlamaVidProcessor) -> str:
    """The conversation up to the item's answer, in the model's template.

    Images and clips go first in the first user turn (``<image>\n`` + question), as synth records do; an item's
    earlier turns (``turns=``) come before its own question with their answers (only the last answer is
    trained; the Q-Former reads the last question, as at inference). A long video is the movie prompt, one
    ``<image>`` per frame with that frame's subtitles after it (docs/architecture.md §4).
    """
    if isinstance(item.media, Episode):
        content = build_long_video_message(item.media.frame_subtitles(), item.question)
        return processor.apply_chat_template([{"role": "user", "content": content}])
    media = "" if item.media is None else DEFAULT_IMAGE_TOKEN + "\n"
    messages: list[dict[str, str]] = []
    for turn in item.earlier_turns:
        messages.append({"role": "user", "content": ("" if messages else media) + turn["question"]})
        messages.append({"role": "assistant", "content": turn["answer"]})
    messages.append({"role": "user", "content": ("" if messages else media) + item.question})
    return processor.apply_chat_template(messages)


def make_batch(
    items: Sequence[QAItem],
    cache: dict[str, Tensor],
    indices: Sequence[int],
    processor: LlamaVidProcessor,
    train: bool = True,
) -> dict[str, Tensor]:
    """Model inputs from cached features: right-padded with labels (train) or left-padded prompts (eval).

    Mirrors what `LlamaVidProcessor.__call__` builds from pixels, but from cached features and with
    ``media_is_image`` set, so images keep their ``grid`` content tokens (the processor marks every feature
    tensor as a video).
    """
    tokenizer = processor.tokenizer
    sequences, label_rows, features, frame_counts, is_image = [], [], [], [], []
    questions: list[str] = []
    block_question: list[int] = []
    for index in indices:
        item = items[index]
        prompt = prompt_for(item, processor)
        lengths: list[int] = []
        if item.media is not None:
            start, count = int(cache["offsets"][index]), int(cache["counts"][index])
            image = isinstance(item.media, FrameSpec)
            per_frame = processor.image_tokens_per_frame if image else processor.video_tokens_per_frame
            frames = cache["features"][start : start + count]
            # A long video's prompt has one <image> per frame: each frame is its own medium and block.
            parts = list(frames.split(1)) if isinstance(item.media, Episode) else [frames]
            for part in parts:
                lengths.append(len(part) * per_frame)
                features.append(part)
                frame_counts.append(len(part))
                is_image.append(image)
                block_question.append(len(questions))
            questions.append(item.question)
        ids = processor.tokenize_prompt(prompt, lengths)
        labels = [IGNORE_INDEX] * len(ids)
        if train:
            answer = tokenizer(" " + item.answer, add_special_tokens=False)["input_ids"] + [
                tokenizer.eos_token_id
            ]
            ids, labels = ids + answer, labels + answer
        sequences.append(ids)
        label_rows.append(labels)
    longest = max(len(s) for s in sequences)
    pad = processor.pad_token_id
    input_ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
    label_ids = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, (ids, labs) in enumerate(zip(sequences, label_rows, strict=True)):
        span = slice(0, len(ids)) if train else slice(longest - len(ids), longest)
        input_ids[row, span] = torch.tensor(ids)
        label_ids[row, span] = torch.tensor(labs)
        mask[row, span] = 1
    batch: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": mask}
    if train:
        batch["labels"] = label_ids
    if features:
        encoded = processor.qformer_tokenizer(questions, padding="longest", return_tensors="pt")
        batch.update(
            vision_features=torch.cat(features).float(),
            frame_counts=torch.tensor(frame_counts),
            media_is_image=torch.tensor(is_image),
            qformer_input_ids=encoded["input_ids"],
            qformer_attention_mask=encoded["attention_mask"],
            block_media=torch.arange(len(features)),
            block_question=torch.tensor(block_question),
        )
    return batch


__all__ = ["encode_frames", "item_frames", "make_batch", "prompt_for"]
