"""LLaVA-format training data (docs/architecture.md §9) -> rendered prompts, text-decoder questions, media and labels.

A record is ``{"id", "image"|"video"?, "conversations": [{"from": "human"|"gpt", "value"}, ...]}``. This module
turns one record into a plain dict (STYLE §3.6: datasets return dicts, only `collate.py` pads):

* the prompt in the stage's template (``plain_guided``: ``"<image>" + caption + "\\n"``; ``imgsp_v1``: the
  Vicuna conversation with the per-turn ``<image>`` rule of docs/architecture.md §5, placement drawn from a seeded RNG);
* one text-decoder question per ``<image>`` (that human turn's text with ``<image>`` and newlines removed);
* media: an image ``(H, W, 3)``, a video ``(T, H, W, 3)`` sampled at ``video_fps`` with a ``max_frames`` cap, or
  a long video as one item per frame (raw frames + ``.srt``, or precomputed EVA features) interleaved with
  subtitles as ``"<image>sub_0<image>sub_1..."`` (docs/architecture.md §4);
* ``input_ids`` with one -200 per ``<image>`` and ``labels`` in which only assistant answers and their ``</s>``
  (stage 1: caption + ``"\\n"``) are supervised (docs/architecture.md §9).

Labels come from character spans: the prompt is tokenised exactly as `LlamaVidProcessor.tokenize_prompt` does
(chunk by chunk around ``<image>``) with offset mappings, and a token is supervised when it overlaps an answer
span. The official code instead re-counts round lengths with a "-2" correction that only holds for the legacy
LLaMA tokenizer and silently masks whole samples on mismatch; spans give the same supervised tokens for Vicuna
and stay right for any tokenizer. The answer span starts at the space after ``"ASSISTANT:"`` because generation
prompts end at the colon, so the model must learn to emit that word-boundary token itself.

Every failure caused by the data raises `BadRecordError` naming the JSON file, the record index and its id.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llamavid.errors import InvalidInputError, LlamaVidError, LlamaVidRuntimeError, MissingFileError
from llamavid.model.configuration_llamavid import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llamavid.model.conversation import (
    DEFAULT_IMAGE_TOKEN,
    TOKENIZER_TEMPLATE,
    build_prompt,
    get_template,
    long_video_inputs,
)

logger = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".safetensors", ".pkl")
NPZ_SUFFIX = ".npz"


class BadRecordError(LlamaVidError, ValueError):
    """A training record that cannot be used; the message starts with ``file[index] (id=...)``."""

    def __init__(self, origin: str, message: str) -> None:
        super().__init__(f"{origin}: {message}")
        self.origin = origin


# ``render(messages, add_generation_prompt) -> str`` with the LLM tokenizer's own chat template.
ChatRender = Callable[[list[dict[str, str]], bool], str]


@dataclass(frozen=True)
class RenderedConversation:
    """A record's text side.

    Attributes:
        prompt: the full training text; each ``<image>`` marks one visual block.
        answer_spans: ``[(start, end), ...]`` character ranges of `prompt` that are supervised.
        questions: one text-decoder question per ``<image>`` in `prompt`, in order.
    """

    prompt: str
    answer_spans: list[tuple[int, int]]
    questions: list[str]


def read_training_json(path: str | Path) -> list[Any]:
    """Read one LLaVA-format training file: a non-empty JSON list of records.

    UTF-8 is expected (a BOM, UTF-16 and UTF-32 are recognised as the JSON standard allows). Every way the file
    can be unusable is reported naming it, so `llamavid train` can check its files before building the model.

    Raises:
        MissingFileError: the file does not exist.
        BadRecordError: undecodable text, malformed JSON, nesting deeper than the parser's limit, not a list, or
            an empty list; the message starts with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"training file {path} not found (data.train_files).")
    data = path.read_bytes()
    encoding = json.detect_encoding(data)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        name = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        raise BadRecordError(
            str(path),
            f"not valid {name} text: byte 0x{data[error.start]:02X} at line {line}, column {column} "
            f"({error.reason}). Training JSON must be UTF-8; convert the file, e.g. "
            "`iconv -f latin1 -t utf-8 old.json > new.json` for Latin-1.",
        ) from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRecordError(
            str(path), f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}."
        ) from None
    except RecursionError:
        # Python's parser recurses once per level and stops near the interpreter's recursion limit.
        raise BadRecordError(
            str(path),
            f"the JSON is nested deeper than the parser's limit of about {sys.getrecursionlimit()} levels; LLaVA-format "
            "records nest 4 (a list of records, each with a 'conversations' list of turns). Check that this is "
            "a training file.",
        ) from None
    if not isinstance(records, list):
        raise BadRecordError(str(path), f"expected a JSON list of records, got {type(records).__name__}.")
    if not records:
        raise BadRecordError(
            str(path), "holds no records (an empty JSON list); add records or drop it from data.train_files."
        )
    return records


def _question_text(text: str) -> str:
    # Official imgsp_v1: the turn's text with <image> and every "\n" removed, no space inserted (docs/architecture.md §5, §11).
    return text.replace(DEFAULT_IMAGE_TOKEN, "").replace("\n", "")


def _check_turns(conversations: Any, origin: str) -> list[tuple[str, str]]:
    """Validate the ``conversations`` list and return ``[(role, text), ...]`` starting with a human turn."""
    if not isinstance(conversations, list) or not conversations:
        raise BadRecordError(origin, "'conversations' must be a non-empty list of {from, value} turns.")
    turns = []
    for number, turn in enumerate(conversations):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("value"), str)
            or turn.get("from")
            not in (
                "human",
                "gpt",
            )
        ):
            raise BadRecordError(
                origin, f"turn {number} must be {{'from': 'human'|'gpt', 'value': str}}, got {turn!r:.120}."
            )
        try:
            turn["value"].encode("utf-8")
        except UnicodeEncodeError as error:  # JSON can spell half a UTF-16 pair; no tokenizer takes one
            raise BadRecordError(
                origin,
                f"turn {number} holds a lone surrogate ({turn['value'][error.start]!r} at character "
                f"{error.start}), a \\uD800-\\uDFFF escape without its pair; fix or drop it.",
            ) from None
        turns.append((turn["from"], turn["value"]))
    if turns[0][0] == "gpt":
        # The official preprocessing drops a leading assistant turn (LLaVA data starts some chats that way).
        turns = turns[1:]
    if not any(role == "gpt" for role, _ in turns):
        raise BadRecordError(origin, "the conversation has no answer (no 'gpt' turn): nothing to supervise.")
    for number, (role, text) in enumerate(turns):
        expected = "human" if number % 2 == 0 else "gpt"
        if role != expected:
            raise BadRecordError(
                origin,
                f"turn {number} is from {role!r} but turns must alternate human/gpt starting with human.",
            )
        if role == "gpt" and not text.strip():
            raise BadRecordError(origin, f"turn {number} (gpt) has an empty answer.")
        if role == "gpt" and DEFAULT_IMAGE_TOKEN in text:
            raise BadRecordError(
                origin, f"turn {number} (gpt) contains {DEFAULT_IMAGE_TOKEN}; only human turns may."
            )
    if turns[-1][0] == "human":
        turns = turns[:-1]  # a trailing question without answer adds nothing to the loss
    return turns


def render_conversation(
    conversations: Any,
    template: str,
    has_media: bool,
    rng: np.random.Generator | None = None,
    long_video_inputs_text: str | None = None,
    origin: str = "<record>",
    chat_render: ChatRender | None = None,
) -> RenderedConversation:
    """Render a record's turns in a template, apply the ``<image>`` rules and find the supervised spans.

    Args:
        conversations: the record's ``conversations`` list.
        template: a name from `llamavid.model.conversation.TEMPLATES`.
        has_media: whether the record has an image or video (text-only records must have no ``<image>``).
        rng: draws the placement of later turns' ``<image>`` under ``imgsp_v1`` (before or after the text).
            Seed it per record so runs and resumes are reproducible (docs/architecture.md §11).
        long_video_inputs_text: for long videos, the ``"<image>sub_0<image>sub_1..."`` string that replaces the
            single ``<image>`` of the first human turn; later turns then get no extra ``<image>`` (docs/architecture.md §11).
        origin: record name used in error messages.
        chat_render: ``render(messages, add_generation_prompt) -> str`` with the LLM tokenizer's own chat
            template; required by template ``"tokenizer"`` (docs/llms.md), which otherwise follows ``imgsp_v1``'s
            per-turn ``<image>`` rule.

    Raises:
        BadRecordError: malformed turns, no answer, or a wrong number of ``<image>`` markers.
    """
    own_template = template == TOKENIZER_TEMPLATE
    if own_template and chat_render is None:
        raise InvalidInputError(
            f"template {TOKENIZER_TEMPLATE!r} renders with the LLM tokenizer's chat template; pass chat_render."
        )
    conv = get_template("imgsp_v1" if own_template else template)
    turns = _check_turns(conversations, origin)
    image_counts = [text.count(DEFAULT_IMAGE_TOKEN) for _, text in turns]
    if not has_media and any(image_counts):
        raise BadRecordError(
            origin,
            f"a text-only record (no 'image'/'video') has {sum(image_counts)} {DEFAULT_IMAGE_TOKEN} markers.",
        )
    if has_media and (image_counts[0] != 1 or sum(image_counts) != 1):
        raise BadRecordError(
            origin,
            f"expected exactly one {DEFAULT_IMAGE_TOKEN}, in the first human turn; found {image_counts[0]} there and "
            f"{sum(image_counts) - image_counts[0]} in later turns.",
        )

    if conv.style == "plain":
        # Stage 1 (official preprocess_plain): one caption per sample; the instruction only feeds the Q-Former.
        if len(turns) != 2:
            raise BadRecordError(
                origin,
                f"the {template} template needs exactly one human and one gpt turn, got {len(turns)} turns.",
            )
        head = DEFAULT_IMAGE_TOKEN if has_media else ""
        prompt = head + turns[1][1] + conv.sep
        caption_questions = [_question_text(turns[0][1])] if has_media else []
        return RenderedConversation(prompt, [(len(head), len(prompt))], caption_questions)

    messages: list[dict[str, str]] = []
    questions: list[str] = []
    per_turn = template in ("imgsp_v1", TOKENIZER_TEMPLATE) and has_media and long_video_inputs_text is None
    for number, (role, text) in enumerate(turns):
        if role == "human":
            if number == 0 and has_media:
                body = text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                if long_video_inputs_text is not None:
                    text = long_video_inputs_text + "\n" + body
                    frames = long_video_inputs_text.count(DEFAULT_IMAGE_TOKEN)
                    questions += [
                        body
                    ] * frames  # one question, repeated for every frame (docs/architecture.md §4)
                else:
                    text = DEFAULT_IMAGE_TOKEN + "\n" + body
                    questions.append(_question_text(text))
            elif per_turn:
                generator = rng if rng is not None else np.random.default_rng(0)
                before = bool(generator.integers(0, 2))
                text = DEFAULT_IMAGE_TOKEN + "\n" + text if before else text + "\n" + DEFAULT_IMAGE_TOKEN
                questions.append(_question_text(text))
        messages.append({"role": "user" if role == "human" else "assistant", "content": text})

    if own_template:
        assert chat_render is not None
        prompt, spans = _own_template_spans(messages, chat_render, origin)
        return RenderedConversation(prompt, spans, questions)

    # Build the text piecewise to know where each answer sits, then check it against the one template table.
    prompt = conv.system + conv.sep
    spans = []
    for index, message in enumerate(messages):
        role = conv.roles[index % 2]
        prompt += f"{role}:"
        if index % 2 == 1:
            start = len(prompt)  # the space after "ASSISTANT:" is supervised: generation prompts end at ":"
            prompt += " " + message["content"] + conv.sep2
            spans.append((start, len(prompt)))
        else:
            prompt += " " + message["content"] + conv.sep
    if prompt != build_prompt(messages, template, add_generation_prompt=False):
        raise LlamaVidRuntimeError(
            f"template {template!r} rendering drifted from llamavid.model.conversation.build_prompt."
        )
    return RenderedConversation(prompt, spans, questions)


def _own_template_spans(
    messages: list[dict[str, str]], chat_render: ChatRender, origin: str
) -> tuple[str, list[tuple[int, int]]]:
    """A conversation in the LLM's own chat template and its supervised spans: each answer and the text the
    template closes an answer with (its end-of-turn token, e.g. ``<|im_end|>``), found by a probe render."""
    probe = "\x01a\x01"
    closing = chat_render([{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], False)
    answer_end = closing[closing.index(probe) + len(probe) :].rstrip() if probe in closing else ""
    prompt = chat_render(messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for message in messages:
        start = prompt.find(message["content"], cursor)
        if start < 0:
            raise BadRecordError(
                origin, "the LLM's chat template changed a message's text; cannot supervise it."
            )
        cursor = start + len(message["content"])
        if message["role"] == "assistant":
            if answer_end and prompt.startswith(answer_end, cursor):
                cursor += len(answer_end)
            spans.append((start, cursor))
    return prompt, spans


def tokenize_with_labels(
    tokenizer: Any, prompt: str, spans: Sequence[tuple[int, int]], add_bos: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids (one -200 per ``<image>``) and labels (-100 outside `spans`) for a prompt.

    Tokenises chunk by chunk around ``<image>`` exactly like `LlamaVidProcessor.tokenize_prompt` (docs/architecture.md §3), so
    the collator's expanded ids line up one-to-one with these labels.
    """
    ids: list[int] = []
    labels: list[int] = []
    if add_bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    position = 0
    for index, chunk in enumerate(chunks):
        if chunk:
            encoded = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
            for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
                lo, hi = position + start, position + end
                supervised = any(hi > a and lo < b for a, b in spans)
                ids.append(int(token))
                labels.append(int(token) if supervised else IGNORE_INDEX)
        position += len(chunk)
        if index < len(chunks) - 1:
            ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
            position += len(DEFAULT_IMAGE_TOKEN)
    return ids, labels


def sample_frame_indices(timestamps: np.ndarray, fps: float, max_frames: int | None) -> np.ndarray:
    """Indices of stored frames to keep: the first frame at or after each ``k / fps``; above `max_frames`,
    `max_frames` targets spread uniformly over the duration (as `llamavid.data.decode_video` does, so a capped
    video still shows its ending)."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if len(timestamps) == 0:
        return np.zeros(0, dtype=np.int64)
    duration = float(timestamps[-1]) + (float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 1.0)
    count = math.floor(max(duration - 1e-6, 0.0) * fps) + 1
    if max_frames is not None and count > max_frames:
        targets = np.arange(max_frames) * duration / max_frames
    else:
        targets = np.arange(count) / fps
    indices = np.searchsorted(timestamps, targets - 1e-3, side="left")
    indices = indices[indices < len(timestamps)]
    return np.unique(indices)


def _exists(path: Path, origin: str) -> bool:
    """`Path.exists`, with a path the system refuses (too long, ...) reported as the record's mistake."""
    try:
        return path.exists()
    except OSError as error:
        shown = str(path) if len(str(path)) <= 160 else f"{str(path)[:100]}...{str(path)[-40:]}"
        raise BadRecordError(origin, f"media path {shown} cannot be used: {error.strerror}.") from None


class LlavaJsonDataset(Dataset):
    """LLaVA-style JSON records -> training sample dicts (see the module docstring).

    Args:
        files: JSON files, each a list of records.
        tokenizer: the LLM tokenizer (must return offset mappings: any `tokenizers`-backed tokenizer does).
        template: conversation template name.
        image_folder / video_folder: media roots; default: each JSON file's folder.
        video_fps / max_frames: video sampling; long videos use `long_video_max_frames`.
        seed: seeds the per-record RNG of the ``<image>`` placement (with the epoch and record index).
        validate: check every record's structure and media paths now (cheap, no decoding).
        add_bos: prepend BOS (LLaMA does).
        chat_render: renders with the LLM tokenizer's own chat template, for template ``"tokenizer"``
            (`render_conversation`; the recipe passes the processor's).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        tokenizer: Any,
        template: str,
        image_folder: str | Path | None = None,
        video_folder: str | Path | None = None,
        video_fps: float = 1.0,
        max_frames: int | None = None,
        long_video_max_frames: int | None = None,
        seed: int = 0,
        validate: bool = True,
        add_bos: bool = True,
        chat_render: ChatRender | None = None,
    ) -> None:
        if not files:
            raise InvalidInputError(
                "no training files given; set data.train_files to one or more LLaVA-format JSON files."
            )
        if template != TOKENIZER_TEMPLATE:
            get_template(template)
        elif chat_render is None:
            raise InvalidInputError(
                f"template {TOKENIZER_TEMPLATE!r} needs the LLM tokenizer's chat template (chat_render)."
            )
        self.chat_render = chat_render
        self.tokenizer = tokenizer
        self.template = template
        self.video_fps = video_fps
        self.max_frames = max_frames
        self.long_video_max_frames = long_video_max_frames
        self.seed = seed
        self.add_bos = add_bos
        self.epoch = 0
        self.records: list[tuple[int, int, dict[str, Any]]] = []  # (file number, index in file, record)
        self.files = [Path(f) for f in files]
        self.folders: list[tuple[Path, Path]] = []
        for number, path in enumerate(self.files):
            records = read_training_json(path)
            root = path.resolve().parent
            self.folders.append(
                (Path(image_folder) if image_folder else root, Path(video_folder) if video_folder else root)
            )
            self.records += [(number, index, record) for index, record in enumerate(records)]
        if validate:
            for position in range(len(self.records)):
                self.check(position)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the ``<image>`` placement draw per epoch (still reproducible: seeded by seed, epoch, index)."""
        self.epoch = epoch

    def origin(self, position: int) -> str:
        number, index, record = self.records[position]
        record_id = record.get("id") if isinstance(record, dict) else None
        return f"{self.files[number]}[{index}] (id={record_id!r})"

    # Structure checks ------------------------------------------------------------------------------------------
    def _media_path(self, position: int, key: str) -> Path:
        number, _, record = self.records[position]
        value = record[key]
        if not isinstance(value, str) or not value:
            raise BadRecordError(
                self.origin(position), f"'{key}' must be a relative path string, got {value!r}."
            )
        folder = self.folders[number][0 if key == "image" else 1]
        return folder / value

    def _is_long(self, record: dict[str, Any]) -> bool:
        video = record.get("video")
        return bool(record.get("subtitles")) or (
            isinstance(video, str) and Path(video).suffix.lower() in (*FEATURE_SUFFIXES, ".json")
        )

    def check(self, position: int) -> None:
        """Validate a record without decoding media: structure, ``<image>`` counts, media files exist."""
        origin = self.origin(position)
        _, _, record = self.records[position]
        if not isinstance(record, dict):
            raise BadRecordError(origin, f"a record must be a JSON object, got {type(record).__name__}.")
        if "image" in record and "video" in record:
            raise BadRecordError(origin, "a record may have 'image' or 'video', not both.")
        key = "image" if "image" in record else "video" if "video" in record else None
        long_text = DEFAULT_IMAGE_TOKEN if key == "video" and self._is_long(record) else None
        render_conversation(
            record.get("conversations"),
            self.template,
            has_media=key is not None,
            long_video_inputs_text=long_text,
            origin=origin,
            chat_render=self.chat_render,
        )
        if key is not None:
            path = self._media_path(position, key)
            candidates = [path]
            if path.suffix.lower() in (".safetensors", ".json"):
                candidates = [path.with_suffix(".safetensors"), path.with_suffix(".json")]
            for candidate in candidates:
                if not _exists(candidate, origin):
                    raise BadRecordError(
                        origin, f"{key} file {candidate} not found (check data.{key}_folder)."
                    )
            if record.get("subtitles"):
                subtitles = self.folders[self.records[position][0]][1] / str(record["subtitles"])
                if not _exists(subtitles, origin) or not subtitles.is_file():
                    raise BadRecordError(origin, f"subtitle file {subtitles} not found.")

    # Loading ---------------------------------------------------------------------------------------------------
    def _load_video_frames(self, path: Path, max_frames: int | None) -> tuple[np.ndarray, np.ndarray, float]:
        """``(frames (T, H, W, 3) uint8, timestamps (T,), duration)`` sampled at ``video_fps``."""
        if path.suffix.lower() == NPZ_SUFFIX:
            with np.load(path, allow_pickle=False) as archive:
                frames = archive["frames"]
                timestamps = (
                    archive["timestamps"] if "timestamps" in archive else np.arange(len(frames), dtype=float)
                )
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise InvalidInputError(
                    f"{path}: 'frames' must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}."
                )
            keep = sample_frame_indices(timestamps, self.video_fps, max_frames)
            step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 1.0
            return frames[keep], np.asarray(timestamps)[keep], float(timestamps[-1]) + step
        from llamavid.data import load_media

        decoded = load_media(path, fps=self.video_fps, max_frames=max_frames)
        return decoded.frames, decoded.timestamps, decoded.duration

    def _load_features(self, path: Path) -> tuple[torch.Tensor, str]:
        if path.suffix.lower() == ".pkl":
            from llamavid.data.official_features import load_official_feature_pickle

            return load_official_feature_pickle(path)  # restricted unpickler: tensors and strings only
        from llamavid.data.official_features import load_features

        feats, sidecar = load_features(path.with_suffix(""))
        return feats, str(sidecar.get("inputs", ""))

    def _media(
        self, position: int, record: dict[str, Any]
    ) -> tuple[list[Any], list[tuple[int, bool]], str | None]:
        """Media items, per-``<image>`` ``(frames, is_image)``, and the long-video inputs string (or None)."""
        if "image" in record:
            from llamavid.data import load_media

            image = load_media(self._media_path(position, "image")).frames[0]
            return [image], [(1, True)], None
        path = self._media_path(position, "video")
        if path.suffix.lower() in (*FEATURE_SUFFIXES, ".json"):
            feats, inputs = self._load_features(path)
            inputs = inputs.replace("...", "")  # the official loader deletes "..." (docs/architecture.md §4)
            if inputs.count(DEFAULT_IMAGE_TOKEN) != len(feats):
                raise InvalidInputError(
                    f"{path}: inputs has {inputs.count(DEFAULT_IMAGE_TOKEN)} <image> but the features have "
                    f"{len(feats)} frames."
                )
            per_frame = [feats[i : i + 1].float() for i in range(len(feats))]  # (1, 1+N, C) per frame
            return per_frame, [(1, False)] * len(per_frame), inputs
        long = self._is_long(record)
        frames, timestamps, duration = self._load_video_frames(
            path, self.long_video_max_frames if long else self.max_frames
        )
        if not len(frames):
            raise InvalidInputError(f"{path}: no frames were sampled.")
        if not long:
            return [frames], [(len(frames), False)], None
        from llamavid.data import interleave_subtitles, read_subtitles

        subtitles = self.folders[self.records[position][0]][1] / str(record["subtitles"])
        pairs = interleave_subtitles(
            read_subtitles(subtitles), timestamps, duration=duration, source=str(subtitles)
        )
        inputs = long_video_inputs([text for _, text in pairs])
        return [frames[i : i + 1] for i in range(len(frames))], [(1, False)] * len(frames), inputs

    def rng_for(self, position: int) -> np.random.Generator:
        """Per-record generator, independent of data order and worker count (resume-safe)."""
        return np.random.default_rng([self.seed, self.epoch, position])

    def __getitem__(self, position: int) -> dict[str, Any]:
        origin = self.origin(position)
        _, _, record = self.records[position]
        if not isinstance(record, dict):
            raise BadRecordError(origin, f"a record must be a JSON object, got {type(record).__name__}.")
        has_media = "image" in record or "video" in record
        media: list[Any] = []
        blocks: list[tuple[int, bool]] = []
        long_inputs = None
        if has_media:
            try:
                media, blocks, long_inputs = self._media(position, record)
            except BadRecordError:
                raise
            except (OSError, ValueError, KeyError) as error:
                raise BadRecordError(origin, f"cannot load media: {error}") from error
        rendered = render_conversation(
            record.get("conversations"),
            self.template,
            has_media=has_media,
            rng=self.rng_for(position),
            long_video_inputs_text=long_inputs,
            origin=origin,
            chat_render=self.chat_render,
        )
        placeholders = rendered.prompt.count(DEFAULT_IMAGE_TOKEN)
        if long_inputs is None and has_media:
            # Per-turn rule: every <image> shows the same single media item.
            blocks = blocks * placeholders
            media_index = [0] * placeholders
        else:
            media_index = list(range(len(media)))
        input_ids, labels = tokenize_with_labels(
            self.tokenizer, rendered.prompt, rendered.answer_spans, self.add_bos
        )
        return {
            "id": record.get("id"),
            "origin": origin,
            "prompt": rendered.prompt,
            "questions": rendered.questions,
            "media": media,
            "media_index": media_index,
            "blocks": blocks,
            "input_ids": input_ids,
            "labels": labels,
        }


__all__ = [
    "BadRecordError",
    "LlavaJsonDataset",
    "RenderedConversation",
    "render_conversation",
    "read_training_json",
    "sample_frame_indices",
    "tokenize_with_labels",
]
