"""`LlamaVidProcessor`: prompts, media and questions -> the tensors `LlamaVidForConditionalGeneration` reads.

It is the only place that knows how many placeholder ids a visual input expands to (the token layout): a still
image yields ``1 + n_image`` tokens, a video frame ``1 + n_video`` (one context and n content tokens per
frame), so a ``<image>`` showing a T-frame clip becomes ``T * (1 + n_video)`` ids of -200, and the long-video
(movie) prompt has one ``<image>`` per frame. Expanding here (not inside the model) keeps sequence lengths known
before the forward pass, which makes left-padded batched generation and the KV cache plain transformers
behaviour. Callers ask `visual_block_lengths` / `num_visual_tokens` / `prompt_ids` instead of counting.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast, overload

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, BertTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from llamavid.errors import InvalidInputError, InvalidTypeError, MissingFileError
from llamavid.model.configuration_llamavid import IMAGE_TOKEN_INDEX, LlamaVidConfig
from llamavid.model.conversation import (
    DEFAULT_IMAGE_TOKEN,
    DEFAULT_VIDEO_TOKEN,
    TOKENIZER_TEMPLATE,
    VISUAL_PART_TYPES,
    TurnMarkers,
    build_long_video_message,
    chat_template_for,
    find_turn_markers,
    flatten_messages,
    get_template,
    last_user_text,
    qformer_question,
    render_chat_template,
)
from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor

PROCESSOR_CONFIG_NAME = "processor_config.json"
# transformers 5 keeps a processor's chat template in its own file next to processor_config.json.
CHAT_TEMPLATE_NAME = "chat_template.jinja"
QFORMER_TOKENIZER_DIR = "qformer_tokenizer"
_PLACEHOLDER = re.compile(f"{re.escape(DEFAULT_IMAGE_TOKEN)}|{re.escape(DEFAULT_VIDEO_TOKEN)}")

Message = Mapping[str, Any]


def bert_uncased_vocab_dir() -> Path:
    """Folder holding the bert-base-uncased ``vocab.txt`` that ships with llamavid (``llamavid/assets``).

    Only needed to *create* a Q-Former tokenizer; saved llamavid folders carry their own copy.
    """
    from llamavid.errors import MissingFileError

    folder = Path(str(resources.files("llamavid.assets") / "bert-base-uncased"))
    if not (folder / "vocab.txt").is_file():
        raise MissingFileError(
            f"{folder / 'vocab.txt'} is missing: this llamavid install is incomplete; reinstall llamavid "
            "(or pass a folder holding a BERT-uncased vocab.txt)."
        )
    return folder


def load_qformer_tokenizer(folder: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """BERT-uncased tokenizer for the text decoder: left truncation and an added ``[DEC]`` BOS (vocab 30523)."""
    folder = Path(folder) if folder is not None else bert_uncased_vocab_dir()
    tokenizer = BertTokenizer.from_pretrained(str(folder), truncation_side="left")
    if tokenizer.bos_token != "[DEC]":
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def tokenizer_chat_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The LLM tokenizer's own chat template (its default one when it has several), or None."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default")
    return source if isinstance(source, str) and source.strip() else None


def default_template_for(tokenizer: PreTrainedTokenizerBase) -> str:
    """``"tokenizer"`` for an LLM whose tokenizer has its own chat template, else Vicuna's ``"vicuna_v1"``.

    Vicuna (the released LLaMA-VID LLM) and the packaged demo tokenizer carry none (docs/llms.md).
    """
    return TOKENIZER_TEMPLATE if tokenizer_chat_template(tokenizer) is not None else "vicuna_v1"


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer starts a plain encoding with its BOS id (Llama-2 does; Qwen, SmolLM2 do not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _is_features(item: Any) -> bool:
    return isinstance(item, torch.Tensor) and item.is_floating_point() and item.ndim == 3


def _is_frame(item: Any) -> bool:
    """One still picture: PIL, or an ``(H, W)`` / ``(H, W, C)`` array."""
    return isinstance(item, Image.Image) or (
        isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim in (2, 3) and not _is_features(item)
    )


def _is_video(item: Any) -> bool:
    """A ``(T, H, W, 3)`` array, a non-empty list of frames, decoded frames (``.frames``) or feature tensor."""
    if _is_features(item) or getattr(item, "frames", None) is not None:
        return True
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4
    return isinstance(item, (list, tuple)) and len(item) > 0 and all(_is_frame(frame) for frame in item)


def _media_kind(item: Any) -> tuple[str, Any]:
    """Classify one media item as ``("image", img)``, ``("video", frames)`` or ``("features", tensor)``."""
    if _is_features(item):
        return "features", item
    frames = getattr(item, "frames", None)  # llamavid.data's decoded-video object
    if frames is not None:
        return "video", frames
    if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
        return "video", np.asarray(item)
    if isinstance(item, (list, tuple)):
        return "video", list(item)
    return "image", item


def _nest(value: Any, batch: int, is_item: Callable[[Any], bool], name: str) -> list[list[Any]]:
    """``images=`` / ``videos=`` as one list of items per sample.

    With one prompt: an item or a flat list of items. Otherwise: one entry per prompt, each an item, a list of
    items or None.
    """
    if value is None:
        return [[] for _ in range(batch)]
    if batch == 1 and is_item(value):
        return [[value]]
    if batch == 1 and isinstance(value, (list, tuple)) and value and all(is_item(entry) for entry in value):
        return [list(value)]
    if not isinstance(value, (list, tuple)) or len(value) != batch:
        found = f"{len(value)} entries" if isinstance(value, (list, tuple)) else type(value).__name__
        raise InvalidInputError(
            f"{name} got {found} for {batch} prompts; give one entry (an item, a list of items or None) "
            "per prompt."
        )
    nested: list[list[Any]] = []
    for sample, entry in enumerate(value):
        if entry is None:
            nested.append([])
        elif is_item(entry):
            nested.append([entry])
        elif isinstance(entry, (list, tuple)) and all(is_item(item) for item in entry):
            nested.append(list(entry))
        else:
            expected = "PIL images or (H, W, 3) uint8 arrays"
            if name == "videos":
                expected = "(T, H, W, 3) uint8 arrays or lists of frames"
            raise InvalidInputError(f"{name}[{sample}] is not understood: expected {expected}.")
    return nested


def _load_part(part: Message, kind: str) -> Any:
    """The media of an image/video content part (under its type's key or ``"path"``).

    Arrays and PIL images are used as they are; a path (local file or frame folder) is decoded at 1 fps.
    """
    value = part.get(kind, part.get("path"))
    if value is None:
        raise InvalidInputError(
            f"a {kind!r} content part needs its media under {kind!r} or 'path' (an array, image or path)."
        )
    if isinstance(value, (str, os.PathLike)):
        from llamavid.data import load_media

        value = load_media(value, fps=1.0).frames  # (T, H, W, 3) uint8; one frame for image files
    if kind == "image":
        if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 4:
            if len(value) != 1:
                raise InvalidInputError(
                    f"an 'image' content part holds {len(value)} frames; use a 'video' part."
                )
            value = value[0]
        return value
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim in (2, 3) and not _is_features(value):
        return np.asarray(value)[None]  # a one-frame video
    if isinstance(value, Image.Image):
        return [value]
    return value


class LlamaVidProcessor:
    """Tokenizers, frame preprocessing, chat template and the token layout of one checkpoint.

    Args:
        image_processor: frame preprocessing (resize/crop/normalise).
        tokenizer: the LLM tokenizer (LLaMA/Vicuna sentencepiece for released models).
        qformer_tokenizer: BERT-uncased tokenizer of the text decoder.
        image_tokens_per_frame / video_tokens_per_frame: ``1 + n`` for still images and video frames.
        template: conversation template name (see `llamavid.model.conversation.TEMPLATES`); it also sets the
            stop string `batch_decode` cuts answers at. ``"tokenizer"`` renders with the LLM tokenizer's own
            chat template (any non-Vicuna LLM, docs/llms.md); BOS then comes from that template only.
        qformer_max_length: questions are truncated from the left to this many BERT tokens (official: 256).
        add_bos: prepend the LLM tokenizer's BOS id (LLaMA does).
        chat_template: Jinja source to render prompts with; default: the one generated for `template`.
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
        chat_template: str | None = None,
    ) -> None:
        if template == TOKENIZER_TEMPLATE:
            if tokenizer_chat_template(tokenizer) is None:
                raise InvalidInputError(
                    f"template {TOKENIZER_TEMPLATE!r} renders with the LLM tokenizer's chat template, but "
                    f"{type(tokenizer).__name__} has none; pick a named template such as 'vicuna_v1'."
                )
        else:
            get_template(template)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.image_tokens_per_frame = int(image_tokens_per_frame)
        self.video_tokens_per_frame = int(video_tokens_per_frame)
        self.template = template
        self.qformer_max_length = int(qformer_max_length)
        self.add_bos = add_bos
        self._chat_template: str | None = None
        self.chat_template = chat_template
        self._turn_markers: dict[str, TurnMarkers | None] = {}

    @classmethod
    def from_config(
        cls,
        config: LlamaVidConfig,
        tokenizer: PreTrainedTokenizerBase,
        qformer_tokenizer: PreTrainedTokenizerBase | None = None,
        image_aspect_ratio: str = "pad",
        template: str | None = None,
        add_bos: bool | None = None,
    ) -> LlamaVidProcessor:
        """Build the processor that matches a model config (frame size and tokens per frame).

        Args:
            template: conversation template; default `default_template_for` the tokenizer (``"tokenizer"`` when
                it has its own chat template, else ``"vicuna_v1"``).
            add_bos: prepend BOS to prompts; default True (LLaMA/Vicuna). LLMs built with their own tokenizer
                pass `tokenizer_adds_bos`.
        """
        qformer_config, vision_config = config.qformer_config, config.vision_config
        if not isinstance(qformer_config, PreTrainedConfig) or not isinstance(
            vision_config, PreTrainedConfig
        ):
            raise InvalidTypeError(
                "the config's vision/Q-Former sub-configs are not built; pass a LlamaVidConfig."
            )
        qformer_tokenizer = qformer_tokenizer or load_qformer_tokenizer()
        if len(qformer_tokenizer) != qformer_config.vocab_size:
            raise InvalidInputError(
                f"the text-decoder tokenizer has {len(qformer_tokenizer)} tokens but the config's Q-Former vocab "
                f"is {qformer_config.vocab_size}; use the tokenizer the checkpoint was trained with."
            )
        size = vision_config.image_size
        return cls(
            LlamaVidImageProcessor(size=size, crop_size=size, image_aspect_ratio=image_aspect_ratio),
            tokenizer,
            qformer_tokenizer,
            image_tokens_per_frame=config.tokens_per_frame(is_image=True),
            video_tokens_per_frame=config.tokens_per_frame(is_image=False),
            template=template if template is not None else default_template_for(tokenizer),
            add_bos=True if add_bos is None else add_bos,
        )

    # Token layout ---------------------------------------------------------------------------------------------
    def visual_block_lengths(
        self, num_frames: int, *, is_image: bool = False, per_frame: bool = False
    ) -> list[int]:
        """Placeholder ids of each ``<image>`` block that shows one media item.

        Args:
            num_frames: frames of the media (1 for an image).
            is_image: a still image: one block of `image_tokens_per_frame`.
            per_frame: the long-video (movie) layout, one ``<image>`` per frame with its subtitles after it:
                `num_frames` blocks of `video_tokens_per_frame`. Otherwise a video is one block of
                ``num_frames * video_tokens_per_frame``.
        """
        if num_frames < 1:
            raise InvalidInputError(f"num_frames must be at least 1, got {num_frames}.")
        if is_image:
            if per_frame:
                raise InvalidInputError(
                    "per_frame lays out the frames of a video; an image is a single block."
                )
            if num_frames != 1:
                raise InvalidInputError(
                    f"an image is one frame, got num_frames={num_frames}; pass it as a video."
                )
            return [self.image_tokens_per_frame]
        if per_frame:
            return [self.video_tokens_per_frame] * num_frames
        return [self.video_tokens_per_frame * num_frames]

    def block_frame_counts(
        self, num_frames: int, *, is_image: bool = False, per_frame: bool = False
    ) -> list[int]:
        """Frames shown by each block of `visual_block_lengths` (``[1] * T`` per frame, else ``[T]``)."""
        self.visual_block_lengths(num_frames, is_image=is_image, per_frame=per_frame)  # checks the arguments
        return [1] * num_frames if per_frame else [num_frames]

    def num_visual_tokens(self, num_frames: int, *, is_image: bool = False) -> int:
        """Visual tokens one media item adds to the prompt (the same in either video layout)."""
        return sum(self.visual_block_lengths(num_frames, is_image=is_image))

    def prompt_ids(
        self,
        messages: Sequence[Message],
        *,
        num_frames: int | None = None,
        is_image: bool = False,
        per_frame: bool = False,
        template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Render a conversation about at most one media item and tokenise it with its placeholders expanded.

        Args:
            messages: the conversation (string content with ``<image>``, or content parts; see
                `apply_chat_template`). Media data in parts is not read here, only their placeholders.
            num_frames: frames of the media; None for a text-only conversation.
            is_image / per_frame: the layout, as in `visual_block_lengths`.
            template / add_generation_prompt: as in `apply_chat_template`.

        Raises:
            ValueError: the rendered prompt's ``<image>`` count is not the layout's block count (one for an
                image or clip, `num_frames` for the per-frame long-video layout, none without media).
        """
        prompt = self.apply_chat_template(messages, template, add_generation_prompt)
        blocks = (
            []
            if num_frames is None
            else self.visual_block_lengths(num_frames, is_image=is_image, per_frame=per_frame)
        )
        found = len(_PLACEHOLDER.findall(prompt))
        if found != len(blocks):
            if num_frames is None:
                layout = "a conversation without media needs none"
            elif is_image:
                layout = "an image needs exactly one"
            elif per_frame:
                layout = f"the per-frame layout of {num_frames} frames needs one per frame, {num_frames}"
            else:
                layout = f"a {num_frames}-frame video shown as one block needs exactly one"
            raise InvalidInputError(
                f"the rendered prompt has {found} {DEFAULT_IMAGE_TOKEN} placeholders but {layout}. Put one "
                f"{DEFAULT_IMAGE_TOKEN} per block in the messages (build_long_video_message for long videos)."
            )
        return self.tokenize_prompt(prompt, blocks)

    # Prompts ------------------------------------------------------------------------------------------------
    @property
    def uses_tokenizer_template(self) -> bool:
        """Prompts are rendered with the LLM tokenizer's own chat template (template ``"tokenizer"``)."""
        return self.template == TOKENIZER_TEMPLATE

    def _template_source(self, template: str) -> str:
        """Jinja source of a template name: the tokenizer's own for ``"tokenizer"``, else the generated one."""
        if template == TOKENIZER_TEMPLATE:
            source = tokenizer_chat_template(self.tokenizer)
            if source is None:
                raise InvalidInputError(
                    f"template {TOKENIZER_TEMPLATE!r}: {type(self.tokenizer).__name__} has no chat template."
                )
            return source
        return chat_template_for(template)

    @property
    def chat_template(self) -> str:
        """Jinja source prompts are rendered with: a custom one if set, else the `template`'s."""
        return (
            self._chat_template if self._chat_template is not None else self._template_source(self.template)
        )

    @chat_template.setter
    def chat_template(self, source: str | None) -> None:
        # Sources equal to the template's are not stored, so changing `template` later still takes effect.
        self._chat_template = (
            None if source is None or source == self._template_source(self.template) else source
        )

    def _render(
        self, source: str, conversation: Sequence[Message], add_generation_prompt: bool, template: str
    ) -> str:
        """One conversation rendered with `source`; an LLM's own template runs in transformers' renderer."""
        if template != TOKENIZER_TEMPLATE:
            return render_chat_template(source, conversation, add_generation_prompt)
        rendered = self.tokenizer.apply_chat_template(
            flatten_messages(conversation),
            chat_template=source,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
        return str(rendered)

    def render_with_tokenizer_template(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """Render with the LLM tokenizer's own chat template (training data under template ``"tokenizer"``)."""
        return self._render(
            self._template_source(TOKENIZER_TEMPLATE), messages, add_generation_prompt, TOKENIZER_TEMPLATE
        )

    def turn_markers(self, template: str | None = None) -> TurnMarkers | None:
        """The user-turn markers of the LLM tokenizer's chat template (`find_turn_markers`), found once."""
        template = template or self.template
        if template not in self._turn_markers:
            source = self.chat_template if template == self.template else self._template_source(template)
            self._turn_markers[template] = find_turn_markers(
                lambda messages, generation: self._render(source, messages, generation, template)
            )
        return self._turn_markers[template]

    def last_user_text(self, prompt: str) -> str:
        """The last user turn of a prompt rendered in this processor's template (the whole prompt if none)."""
        if self.uses_tokenizer_template:
            markers = self.turn_markers()
            return prompt if markers is None else markers.last_user_text(prompt)
        return last_user_text(prompt, self.template)

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Message],
        template: str | None = None,
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        tokenize: Literal[False] = False,
        return_dict: Literal[False] = False,
        **kwargs: Any,
    ) -> str: ...

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Sequence[Message]],
        template: str | None = None,
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        tokenize: Literal[False] = False,
        return_dict: Literal[False] = False,
        **kwargs: Any,
    ) -> list[str]: ...

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Message],
        template: str | None = None,
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        tokenize: Literal[True],
        return_dict: Literal[False] = False,
        **kwargs: Any,
    ) -> list[int]: ...

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Sequence[Message]],
        template: str | None = None,
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        tokenize: Literal[True],
        return_dict: Literal[False] = False,
        **kwargs: Any,
    ) -> list[list[int]]: ...

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        template: str | None = None,
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        tokenize: Literal[True],
        return_dict: Literal[True],
        **kwargs: Any,
    ) -> BatchFeature: ...

    def apply_chat_template(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        template: str | None = None,
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        tokenize: bool = False,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> str | list[str] | list[int] | list[list[int]] | BatchFeature:
        """Render a conversation (or a list of them) with the Jinja chat template, optionally as model inputs.

        Args:
            messages: ``[{"role": "user"|"assistant", "content": ...}, ...]``, alternating and starting with the
                user. Content is a string (``<image>`` marks media) or a list of parts ``{"type": "text",
                "text": ...}``, ``{"type": "image", "image": PIL | (H, W, 3) uint8 | path}``, ``{"type": "video",
                "video": (T, H, W, 3) uint8 | list of frames | path}``; every image/video part renders as
                ``<image>`` before the message's text, joined by ``"\\n"`` (the official ``"<image>\\n" +
                question``). Paths are decoded at 1 fps by `llamavid.data.load_media`.
            template: render with this named template instead of the processor's chat template.
            add_generation_prompt: end with ``"ASSISTANT:"`` after a final user turn (default True).
            chat_template: Jinja source to render with instead of the processor's.
            tokenize: return token ids (placeholders expanded) instead of the string.
            return_dict: with `tokenize`, return the `BatchFeature` `__call__` builds (pixels, Q-Former
                questions, ...) instead of the ids.
            kwargs: with `tokenize`, passed to `__call__` (``questions``, ``padding_side``, ``per_frame``, or the
                media as ``media`` / ``images`` / ``videos`` when the messages mark it with ``<image>``
                strings rather than parts). The questions default to the last user message's question.

        Returns:
            The prompt string; with `tokenize` its ids (unpadded); with `return_dict` the batch. Lists of these
            for a list of conversations (ids and strings), a batch of them for `return_dict`.
        """
        batched = bool(messages) and not isinstance(messages[0], Mapping)
        conversations = (
            cast("list[Sequence[Message]]", list(messages))
            if batched
            else [cast("Sequence[Message]", messages)]
        )
        if chat_template is None:
            chat_template = self.chat_template if template is None else self._template_source(template)
        prompts = [
            self._render(chat_template, conversation, add_generation_prompt, template or self.template)
            for conversation in conversations
        ]
        if not tokenize:
            if return_dict:
                raise InvalidInputError("return_dict=True needs tokenize=True.")
            if kwargs:
                raise InvalidTypeError(f"unexpected arguments without tokenize=True: {sorted(kwargs)}.")
            return prompts if batched else prompts[0]
        part_media = [_part_media(conversation) for conversation in conversations]
        if any(part_media):
            given = sorted(name for name in ("media", "images", "videos", "media_index") if name in kwargs)
            if given:
                raise InvalidInputError(
                    f"the messages carry media in content parts and {given} was given too; use one or the other."
                )
            kwargs["media"] = part_media
        if kwargs.get("questions") is None:
            kwargs["questions"] = [_last_user_question(conversation) for conversation in conversations]
        inputs = self(prompts, **kwargs)
        if return_dict:
            return inputs
        ids = [
            row[mask.bool()].tolist()
            for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ]
        return ids if batched else ids[0]

    def default_question(self, prompt: str) -> str:
        """The Q-Former instruction used when none is given: the question of the prompt's last user turn.

        With the two-role templates that is the text after the last ``"USER: "`` (up to ``" ASSISTANT:"``), the
        movie wrapper and placeholders removed, stripped; a prompt without the role is taken whole. The official
        chat CLI also conditions on the latest question, whichever turn holds the media.
        """
        return qformer_question(self.last_user_text(prompt))

    def long_video_prompt(self, prompt: str, frame_texts: Sequence[str]) -> tuple[str, list[int]]:
        """A rendered prompt about one video in the long-video (movie) layout, and its visual block lengths.

        The last user turn of `prompt` shows the video as its one ``<image>`` next to the question (the chat
        form ``"<image>\\n" + question``); it becomes `build_long_video_message` of `frame_texts` and the question
        (one ``<image>`` per frame, each followed by its subtitle), as `Engine` builds a movie question.

        Args:
            prompt: rendered in this processor's chat template, one placeholder in all, in the last user turn.
            frame_texts: one subtitle text per sampled frame (``""`` for none).

        Returns:
            The movie prompt and ``visual_block_lengths(len(frame_texts), per_frame=True)``:
            ``tokenize_prompt(*result)`` gives its ids.
        """
        turn = self.last_user_text(prompt)
        if len(_PLACEHOLDER.findall(prompt)) != 1 or len(_PLACEHOLDER.findall(turn)) != 1:
            raise InvalidInputError(
                f"subtitles need the video as the only {DEFAULT_IMAGE_TOKEN} of the prompt, in its last user "
                f"turn; found {len(_PLACEHOLDER.findall(prompt))} in the prompt and "
                f"{len(_PLACEHOLDER.findall(turn))} in the last user turn."
            )
        start = prompt.rindex(turn)
        message = build_long_video_message(list(frame_texts), qformer_question(turn))
        movie = prompt[:start] + message + prompt[start + len(turn) :]
        return movie, self.visual_block_lengths(len(frame_texts), per_frame=True)

    def tokenize_prompt(self, text: str, block_lengths: Sequence[int] | None = None) -> list[int]:
        """Token ids of a prompt with each ``<image>`` (or ``<video>``) replaced by its placeholder ids.

        Each text chunk between placeholders is tokenised on its own, as the official `tokenizer_image_token`
        does (sentencepiece then adds its word-boundary prefix at every chunk start), and only the prompt's
        start gets BOS. With `block_lengths` None every ``<image>`` becomes one -200 (the official,
        unexpanded form used for parity checks); see `visual_block_lengths` for the expanded lengths. With the
        LLM tokenizer's own chat template, BOS is whatever that template writes (as in transformers).
        """
        chunks = _PLACEHOLDER.split(text)
        if block_lengths is None:
            block_lengths = [1] * (len(chunks) - 1)
        if len(block_lengths) != len(chunks) - 1:
            raise InvalidInputError(
                f"the prompt has {len(chunks) - 1} {DEFAULT_IMAGE_TOKEN} placeholders but {len(block_lengths)} "
                "visual inputs were matched to it."
            )
        ids: list[int] = []
        if self.add_bos and not self.uses_tokenizer_template and self.tokenizer.bos_token_id is not None:
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
        questions: str | Sequence[str | Sequence[str] | None] | None = None,
        media_index: Sequence[Sequence[int]] | None = None,
        padding_side: str = "left",
        *,
        images: Any = None,
        videos: Any = None,
        per_frame: bool = False,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Build model inputs for a batch.

        Args:
            text: one prompt per sample; every ``<image>`` marks where a visual input goes (``<video>`` is
                accepted as well).
            media: per sample, one media item or a list. An item is a still image (PIL or ``(H, W, 3)`` uint8),
                a video (``(T, H, W, 3)`` uint8 frames, a list of frames, or a decoded-video object with
                ``.frames``), or precomputed features ``(T, N or 1+N, C)`` float (long videos).
            questions: per sample, the text-decoder instruction for each ``<image>`` (a string applies to all of
                that sample's placeholders). The context token of each placeholder is computed from it. Left
                out (None, for all or one sample), it is `default_question` of the prompt.
            media_index: per sample, which of its media each ``<image>`` shows (default: all show the single
                media item, or the i-th placeholder shows the i-th item).
            padding_side: ``"left"`` for generation, ``"right"`` for training.
            images / videos: the transformers way to pass media instead of `media`: per sample an item or a
                list (a bare item or flat list is one sample's). ``<image>`` placeholders show the sample's images
                in order and ``<video>`` ones its videos; a sample given only videos may mark them ``<image>``.
                A kind with a single item is shown by all of its placeholders.
            per_frame: the long-video layout: each sample's one video (or feature tensor) is split into its
                frames, one per ``<image>``, in order.
            return_tensors: ``"pt"`` (or None): the outputs are always PyTorch tensors.

        Returns:
            A `BatchFeature` with ``input_ids``, ``attention_mask``, ``pixel_values`` or ``vision_features``,
            ``frame_counts``, ``media_is_image``, ``qformer_input_ids``, ``qformer_attention_mask``,
            ``block_media`` and ``block_question``.
        """
        if return_tensors not in (None, "pt"):
            raise InvalidInputError(
                f"return_tensors={return_tensors!r}: only PyTorch tensors ('pt') are produced."
            )
        texts = [text] if isinstance(text, str) else list(text)
        batch = len(texts)
        if images is not None or videos is not None:
            if media is not None or media_index is not None:
                raise InvalidInputError(
                    "give the media either as media= (with media_index=) or as images=/videos=."
                )
            media, index = self._media_from_images_videos(texts, images, videos)
            media_index = None if per_frame else index
        texts = [_PLACEHOLDER.sub(DEFAULT_IMAGE_TOKEN, prompt) for prompt in texts]
        media_per_sample = self._per_sample(media, batch, "media")
        questions_per_sample = self._per_sample(questions, batch, "questions")
        if padding_side not in ("left", "right"):
            raise InvalidInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")

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
                raise InvalidInputError(
                    f"sample {sample}: the prompt has {placeholders} {DEFAULT_IMAGE_TOKEN} but no media."
                )
            if items and not placeholders:
                raise InvalidInputError(
                    f"sample {sample}: {len(items)} media given but the prompt has no {DEFAULT_IMAGE_TOKEN} "
                    "placeholder to put them in."
                )
            sample_questions = questions_per_sample[sample]
            if sample_questions is None and placeholders:
                sample_questions = self.default_question(prompt)
            if isinstance(sample_questions, str):
                sample_questions = [sample_questions] * placeholders
            if placeholders and (sample_questions is None or len(sample_questions) != placeholders):
                found = 0 if sample_questions is None else len(sample_questions)
                raise InvalidInputError(
                    f"sample {sample}: {placeholders} {DEFAULT_IMAGE_TOKEN} placeholders need {placeholders} "
                    f"questions for the text decoder, got {found}."
                )
            first_media = len(frame_counts)
            for item in items:
                kind, payload = _media_kind(item)
                if kind == "features":
                    if not len(payload):
                        raise InvalidInputError(f"sample {sample}: a feature tensor has no frames.")
                    feature_frames.append(payload)
                    frame_counts.append(len(payload))
                    media_is_image.append(False)
                else:
                    pixels = self.image_processor(payload, is_video=kind == "video")
                    pixel_frames.append(pixels)
                    frame_counts.append(len(pixels))
                    media_is_image.append(kind == "image")
            if per_frame:
                indices = self._split_frames(sample, frame_counts, media_is_image, first_media, placeholders)
            else:
                indices = self._media_indices(sample, items, placeholders, media_index)
            lengths = []
            for slot, media_id in enumerate(indices):
                global_media = first_media + media_id
                (length,) = self.visual_block_lengths(
                    frame_counts[global_media], is_image=media_is_image[global_media]
                )
                lengths.append(length)
                block_media.append(global_media)
                block_question.append(len(question_texts))
                question_texts.append(sample_questions[slot])
            sequences.append(self.tokenize_prompt(prompt, lengths))

        if pixel_frames and feature_frames:
            raise InvalidInputError(
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
    def _split_frames(
        sample: int, frame_counts: list[int], media_is_image: list[bool], first_media: int, placeholders: int
    ) -> list[int]:
        """Per-frame layout: turn the sample's one video into one-frame media, one per placeholder."""
        if len(frame_counts) - first_media != 1 or media_is_image[first_media]:
            raise InvalidInputError(
                f"sample {sample}: per_frame=True shows one video frame by frame, but the sample has "
                f"{len(frame_counts) - first_media} media ({sum(media_is_image[first_media:])} images)."
            )
        frames = frame_counts.pop()
        media_is_image.pop()
        if placeholders != frames:
            raise InvalidInputError(
                f"sample {sample}: per_frame=True needs one {DEFAULT_IMAGE_TOKEN} per frame: the video has "
                f"{frames} frames but the prompt has {placeholders} placeholders."
            )
        frame_counts.extend([1] * frames)
        media_is_image.extend([False] * frames)
        return list(range(frames))

    @staticmethod
    def _media_from_images_videos(
        texts: list[str], images: Any, videos: Any
    ) -> tuple[list[list[Any]], list[list[int]]]:
        """``images=`` / ``videos=`` as `media` (images first, then videos) and a `media_index` per sample."""
        batch = len(texts)
        images_per_sample = _nest(images, batch, _is_frame, "images")
        videos_per_sample = _nest(videos, batch, _is_video, "videos")
        media: list[list[Any]] = []
        media_index: list[list[int]] = []
        for sample, prompt in enumerate(texts):
            sample_images, sample_videos = images_per_sample[sample], videos_per_sample[sample]
            tokens = _PLACEHOLDER.findall(prompt)
            if sample_images and sample_videos and DEFAULT_VIDEO_TOKEN not in tokens:
                raise InvalidInputError(
                    f"sample {sample}: images and videos were given but the prompt only has "
                    f"{DEFAULT_IMAGE_TOKEN}; mark where each video goes with {DEFAULT_VIDEO_TOKEN}."
                )
            used = {"image": 0, "video": 0}
            indices: list[int] = []
            for token in tokens:
                kind = "video" if token == DEFAULT_VIDEO_TOKEN or not sample_images else "image"
                pool = sample_videos if kind == "video" else sample_images
                if not pool:
                    raise InvalidInputError(
                        f"sample {sample}: the prompt has {token} but no {kind}s were given."
                    )
                offset = len(sample_images) if kind == "video" else 0
                indices.append(offset + (0 if len(pool) == 1 else used[kind]))
                used[kind] += 1
            media.append(sample_images + sample_videos)
            media_index.append(indices)
        return media, media_index

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
            raise InvalidInputError(
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
            raise InvalidInputError(
                f"sample {sample}: cannot match {placeholders} placeholders to {len(items)} media items "
                f"(media_index={indices}); pass media_index with one valid media number per placeholder."
            )
        unused = set(range(len(items))) - set(indices)
        if unused:
            raise InvalidInputError(
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
        # An LLM's own chat template ends answers with its EOS token, which stops generation by itself.
        stops = () if self.uses_tokenizer_template else get_template(self.template).stop_strings
        eos = self.tokenizer.eos_token_id
        texts = []
        for sequence in sequences:
            ids = [int(token) for token in sequence if int(token) >= 0]
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            text = str(self.tokenizer.decode(ids, **kwargs))
            for stop in stops:
                text = text.split(stop)[0]
            texts.append(text.strip())
        return texts

    def decode(self, sequence: torch.Tensor | Sequence[int], **kwargs: Any) -> str:
        return self.batch_decode([sequence], **kwargs)[0]

    # Persistence ----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the processor: tokenizers, image processor, ``processor_config.json``, ``chat_template.jinja``."""
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
        # After the tokenizer, which writes its own chat template (if any) under the same name.
        (directory / CHAT_TEMPLATE_NAME).write_text(self.chat_template, encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **kwargs: Any) -> LlamaVidProcessor:
        """Load a folder written by `save_pretrained`.

        Keyword arguments override saved settings (``template``, ``chat_template``, ...); others are ignored.
        Folders saved without ``chat_template.jinja`` render with the template generated from their
        ``template`` name, as does a ``template`` override.
        """
        directory = Path(directory)
        settings_path = directory / PROCESSOR_CONFIG_NAME
        if not settings_path.is_file():
            raise MissingFileError(
                f"{settings_path} not found: {directory} is not a llamavid model folder (convert official "
                "checkpoints with `llamavid convert`)."
            )
        settings = json.loads(settings_path.read_text())
        settings.pop("processor_class", None)
        saved_template = settings.get("template")
        settings.update({key: value for key, value in kwargs.items() if key in settings})
        chat_template = kwargs.get("chat_template")
        template_path = directory / CHAT_TEMPLATE_NAME
        if chat_template is None and settings.get("template") == saved_template and template_path.is_file():
            chat_template = template_path.read_text(encoding="utf-8")
        return cls(
            LlamaVidImageProcessor.from_pretrained(directory),
            AutoTokenizer.from_pretrained(str(directory)),
            load_qformer_tokenizer(directory / QFORMER_TOKENIZER_DIR),
            chat_template=chat_template,
            **settings,
        )


def _part_media(conversation: Sequence[Message]) -> list[Any]:
    """Media of a conversation's image/video content parts, in the order their ``<image>`` are rendered."""
    media = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            continue
        media += [_load_part(part, part["type"]) for part in content if part.get("type") in VISUAL_PART_TYPES]
    return media


def _last_user_question(conversation: Sequence[Message]) -> str | None:
    """The Q-Former instruction of a conversation: its last user message's question."""
    for message in reversed(conversation):
        if message.get("role") == "user":
            return qformer_question(message["content"])
    return None


__all__ = [
    "LlamaVidProcessor",
    "bert_uncased_vocab_dir",
    "default_template_for",
    "load_qformer_tokenizer",
    "tokenizer_adds_bos",
    "tokenizer_chat_template",
]
