"""The tiny LLaMA-VID trained on the synthetic world: tokenizers, model, cached features, training and scoring.

Why a dedicated module: the generic recipe (``llamavid train CONFIG.yaml``, branch ``train``) did not exist yet when
this was written; this keeps one small loop (AdamW, cosine, masked next-token loss as docs/architecture.md §9) over *cached*
frozen stage-0 features, which is what makes the tiny model trainable on 2 shared CPU cores. When the generic
recipe lands, stages 1-3 should move to it; the pieces here (tokenizers, ``build_tiny_model``, feature caches,
``score_items``) are what it needs.

Design (measured reasons in ``docs/tiny-model.md``):

* vision: the stage-0 tower (64 px, patch 8 -> 8x8 patches, width 128), frozen;
* text decoder: an instruction-aware Q-Former (2 layers, width 128, 8 queries) with a WordPiece vocab built
  from the synth vocabulary (every word whole; characters as fallback);
* images keep ``grid:4`` content tokens (16, one per grid cell, aligned with the stage-0 cell targets) + 1 context
  token; video frames ``mean`` (1 + 1 = 2 tokens per frame, as the released video checkpoints);
* LLM: a from-scratch Llama (4 layers x 256) with a word-level tokenizer over the synth vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llamavid.errors import InvalidInputError
from llamavid.model.configuration_llamavid import IGNORE_INDEX, LlamaVidConfig
from llamavid.model.conversation import DEFAULT_IMAGE_TOKEN, build_long_video_message
from llamavid.model.modeling_llamavid import VISUAL_INPUT_NAMES, LlamaVidForConditionalGeneration
from llamavid.model.processing_llamavid import LlamaVidProcessor
from llamavid.synth import Episode, FrameSpec, render_frame
from llamavid.synth._common import QAItem
from llamavid.synth.phrasing import check_phrasing
from llamavid.synth.tokenizers import build_llm_tokenizer, build_qformer_vocab, synth_corpus
from llamavid.train.losses import (
    MAX_SCENE_CHANGES,
    AnswerPrior,
    AuxiliaryHeads,
    LossSettings,
    answer_index,
    grounding_targets,
    needle_targets,
    scene_targets,
)
from llamavid.train.stage0_vision import Stage0Settings, load_tower, normalise, tiny_vision_config

logger = logging.getLogger(__name__)

TEMPLATE = "synth_v1"


# Model ------------------------------------------------------------------------------------------------------------
@dataclass
class TinyModelSettings:
    llm_hidden: int = 256
    llm_layers: int = 4
    llm_heads: int = 4
    llm_intermediate: int = 768
    max_positions: int = 4096
    qformer_hidden: int = 128
    qformer_layers: int = 2
    qformer_heads: int = 4
    num_query: int = 8
    image_compress_type: str = "grid:4"
    compress_type: str = "mean"
    context_token: bool = True  # False / compress "off": the ablation's content-only / context-only models


def build_tiny_model(
    stage0_dir: Path, tokenizer: Any, qformer_tokenizer: Any, settings: TinyModelSettings
) -> LlamaVidForConditionalGeneration:
    """A LLaMA-VID with the frozen stage-0 tower loaded and everything else freshly initialised."""
    tower, stage0 = load_tower(stage0_dir)
    vision = tiny_vision_config(stage0)
    config = LlamaVidConfig(
        vision_config=vision.to_dict(),
        qformer_config={
            "vocab_size": len(qformer_tokenizer),
            "hidden_size": settings.qformer_hidden,
            "num_hidden_layers": settings.qformer_layers,
            "num_attention_heads": settings.qformer_heads,
            "intermediate_size": settings.qformer_hidden * 2,
            "max_position_embeddings": 256,
            "cross_attention_frequency": 1,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "pad_token_id": qformer_tokenizer.pad_token_id,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": settings.llm_hidden,
            "intermediate_size": settings.llm_intermediate,
            "num_hidden_layers": settings.llm_layers,
            "num_attention_heads": settings.llm_heads,
            "num_key_value_heads": settings.llm_heads,
            "max_position_embeddings": settings.max_positions,
            "rope_theta": 10000.0,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": True,
        },
        num_query=settings.num_query,
        bert_type="qformer_pretrain",
        compress_type=settings.compress_type,
        image_compress_type=settings.image_compress_type,
        context_token=settings.context_token,
        mm_projector_type="mlp2x_gelu",
    )
    model = LlamaVidForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.vision_tower.requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# Cached features --------------------------------------------------------------------------------------------------
def item_frames(item: QAItem, size: int) -> np.ndarray | None:
    """``(T, H, W, 3)`` uint8 frames of an item's medium (T = 1 for images), or None for text-only items."""
    if item.media is None:
        return None
    if isinstance(item.media, FrameSpec):
        return render_frame(item.media, size)[None]
    return item.media.render(size)


@torch.no_grad()
def encode_frames(tower: torch.nn.Module, frames: np.ndarray, chunk: int = 256) -> Tensor:
    """Frozen tower features ``(T, 1+N, C)`` in fp16 (what the cache stores)."""
    parts = [tower(normalise(frames[i : i + chunk])).half() for i in range(0, len(frames), chunk)]
    return torch.cat(parts)


def build_feature_cache(
    path: Path, items: Sequence[QAItem], tower: torch.nn.Module, size: int
) -> dict[str, Tensor]:
    """Features of every item's medium, concatenated, with per-item offsets; saved as fp16 safetensors.

    Returns the loaded cache if ``path`` exists (resumable ``make tiny-model``). Items sharing a medium (long
    video questions) are encoded once.
    """
    if path.is_file():
        cache = load_file(path)
        if len(cache["offsets"]) != len(items):
            raise InvalidInputError(
                f"{path} caches {len(cache['offsets'])} items but {len(items)} were asked for (the dataset "
                "changed since it was built); delete it to rebuild"
            )
        return cache
    started = time.time()
    offsets, counts, chunks = [], [], []
    seen: dict[str, tuple[int, int]] = {}
    total = 0
    for index, item in enumerate(items):
        key = item.meta.get("media_id", item.id)
        if item.media is None:
            offsets.append(0)
            counts.append(0)
            continue
        if key not in seen:
            frames = item_frames(item, size)
            assert frames is not None
            features = encode_frames(tower, frames)
            seen[key] = (total, len(features))
            chunks.append(features)
            total += len(features)
        offsets.append(seen[key][0])
        counts.append(seen[key][1])
        if index % 2000 == 0:
            logger.info("cache %s: %d/%d items (%.0f s)", path.name, index, len(items), time.time() - started)
    cache = {
        "features": torch.cat(chunks) if chunks else torch.zeros(0, 1, 1, dtype=torch.float16),
        "offsets": torch.tensor(offsets, dtype=torch.long),
        "counts": torch.tensor(counts, dtype=torch.long),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(cache, path)
    logger.info(
        "cached %d frames for %d items in %.0f s -> %s", total, len(items), time.time() - started, path
    )
    return cache


# Batches ----------------------------------------------------------------------------------------------------------
def prompt_for(item: QAItem, processor: LlamaVidProcessor) -> str:
    """The user turn in the model's template.

    Images and clips go first (``<image>\\n`` + question), as synth records do; a long video is the movie prompt,
    one ``<image>`` per frame with that frame's subtitles after it (docs/architecture.md §4).
    """
    if isinstance(item.media, Episode):
        content = build_long_video_message(item.media.frame_subtitles(), item.question)
    else:
        content = item.question if item.media is None else DEFAULT_IMAGE_TOKEN + "\n" + item.question
    return processor.apply_chat_template([{"role": "user", "content": content}])


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


# Scoring ----------------------------------------------------------------------------------------------------------
def normalise_answer(text: str) -> str:
    from llamavid.inference.text import normalize_answer

    return normalize_answer(text)


@torch.no_grad()
def score_items(
    model: LlamaVidForConditionalGeneration,
    processor: LlamaVidProcessor,
    items: Sequence[QAItem],
    cache: dict[str, Tensor],
    batch_size: int = 32,
    max_new_tokens: int = 4,
) -> dict[str, Any]:
    """Greedy-decode every item and report exact-match accuracy per question type (and held-out-combo items).

    Long videos go one per batch (their prompts differ in length by thousands of tokens).
    """
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    combo: list[int] = []
    every: list[int] = []
    examples: list[dict[str, str]] = []
    if any(isinstance(item.media, Episode) for item in items):
        batch_size = 1
    for start in range(0, len(items), batch_size):
        indices = list(range(start, min(start + batch_size, len(items))))
        batch = make_batch(items, cache, indices, processor, train=False)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.batch_decode(output[:, batch["input_ids"].shape[1] :])
        for index, text in zip(indices, texts, strict=True):
            item = items[index]
            correct = int(normalise_answer(text) == normalise_answer(item.answer))
            hits[item.question_type].append(correct)
            every.append(correct)
            if item.meta.get("heldout_combo"):
                combo.append(correct)
            if len(examples) < 12:
                examples.append({"q": item.question, "answer": item.answer, "predicted": text})
    model.train()
    per_type = {name: float(np.mean(values)) for name, values in sorted(hits.items())}
    return {
        "per_type": per_type,
        "mean": float(np.mean(list(per_type.values()))) if per_type else 0.0,
        "heldout_combo": float(np.mean(combo)) if combo else None,
        "count": len(items),
        "correct": every,  # per item, in order (paired comparisons between models)
        "examples": examples,
    }


# Training ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainPhase:
    """One phase of the curriculum: a mixture of cached item sets sampled by weight."""

    name: str
    steps: int
    mixture: dict[str, float]
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 30
    eval_every: int = 0
    seed: int = 0  # added to the run seed for this phase's batch sampling
    context_aux: float = 0.0  # weight of the image "answer from the context token" loss (AuxiliaryHeads)
    grounding_aux: float = 0.0  # weight of the per-frame "where is the named object" loss on clips
    visual_lr_scale: float = 1.0  # lr multiplier of the text decoder, attention and content projectors
    batch_sizes: dict[str, int] = field(default_factory=dict)  # per-dataset batch size (long videos: small)
    # False: an alignment phase that trains the context path on the auxiliary losses only (the LLM is not run).
    llm_loss: bool = True
    # Question types whose answers are trained against a fixed question-only expert (AnswerPrior), counted on
    # this phase's mixture.
    answer_prior: tuple[str, ...] = ()
    # Also add that expert to the auxiliary answer head on the context token (which reads the question too).
    answer_prior_on_heads: bool = False
    # Weight of the per-frame scene probes on the LLM's hidden states at clip frames (AuxiliaryHeads.scene_loss).
    scene_aux: float = 0.0

    @property
    def losses(self) -> LossSettings:
        """This phase's losses in the config form (``losses:`` of ``train/configs/tiny/*.yaml``)."""
        return LossSettings(
            lm=self.llm_loss,
            answer_head=self.context_aux,
            grounding=self.grounding_aux,
            scene=self.scene_aux,
            answer_prior=tuple(self.answer_prior),
            answer_prior_on_heads=self.answer_prior_on_heads,
        )


_PHASE_KEYS = (
    "name",
    "steps",
    "mixture",
    "batch_size",
    "lr",
    "warmup",
    "eval_every",
    "seed",
    "visual_lr_scale",
)
_DATASET_KEYS = ("split", "kind", "n", "seed", "episode_frames")
_DATASET_OPTIONS = ("phrasing", "turns", "balanced_needles", "clip_frames")  # generate_items keywords

SEALED_TEST_SEED = 933225671
"""The v5 sealed test seed (docs/tiny-model.md, "v5 plan"): reserved for the one final score; a recipe that
names it as a data seed is refused."""


@dataclass
class TinyRecipe:
    """A tiny-model curriculum read from YAML (:func:`load_tiny_recipe`).

    Attributes:
        datasets: name -> ``(split, kind, items, data seed, frames per long video or 0)``, cached once each.
        subsets: name -> how a set is derived from a cached one (``{"from", "subset", ...}``; built in code).
        evals: the sets scored during training.
        phases: the phases, in order.
        dataset_options: name -> extra ``generate_items`` keywords (``phrasing``, ``turns``,
            ``balanced_needles``, ``clip_frames``) of the datasets that set any.
        stage0: :class:`Stage0Settings` fields of the stage-0 tower a fresh model is built around.
    """

    datasets: dict[str, tuple[str, str, int, int, int]]
    subsets: dict[str, dict[str, Any]]
    evals: tuple[str, ...]
    phases: list[TrainPhase]
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage0: dict[str, Any] = field(default_factory=dict)  # Stage0Settings fields of the frozen tower


def _phase_from_config(config: dict[str, Any], where: str) -> TrainPhase:
    unknown = sorted(set(config) - {*_PHASE_KEYS, "batch_sizes", "losses"})
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown key(s) {unknown}; expected some of {[*_PHASE_KEYS, 'batch_sizes', 'losses']}."
        )
    for key in ("name", "steps", "mixture"):
        if key not in config:
            raise InvalidInputError(f"{where}: missing {key!r}.")
    losses = LossSettings.from_config(config.get("losses") or {}, f"{where}.losses")
    return TrainPhase(
        **{key: config[key] for key in _PHASE_KEYS if key in config},
        batch_sizes=dict(config.get("batch_sizes") or {}),
        llm_loss=losses.lm,
        context_aux=losses.answer_head,
        grounding_aux=losses.grounding,
        scene_aux=losses.scene,
        answer_prior=losses.answer_prior,
        answer_prior_on_heads=losses.answer_prior_on_heads,
    )


def load_tiny_recipe(path: str | Path) -> TinyRecipe:
    """Read a tiny-model curriculum (``src/llamavid/train/configs/tiny/*.yaml``): datasets, subsets, phases.

    Every mixture entry must name a dataset or a subset; ``presets`` is free space for YAML anchors. A dataset
    may add ``generate_items`` options (``phrasing``, ``turns``, ``balanced_needles``, ``clip_frames``); a
    train-split dataset may not use the held-out templates, and no dataset may use :data:`SEALED_TEST_SEED`.

    Raises:
        InvalidInputError: on an unknown key, a missing field, a mixture naming an undefined set, held-out
            templates in training or the sealed seed, with the file and the phase or dataset in the message.
    """
    import yaml

    path = Path(path)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path}: expected a mapping at the top level.")
    unknown = sorted(set(config) - {"version", "presets", "stage0", "datasets", "subsets", "evals", "phases"})
    if unknown:
        raise InvalidInputError(f"{path}: unknown top-level key(s) {unknown}.")
    datasets = {}
    options: dict[str, dict[str, Any]] = {}
    for name, spec in (config.get("datasets") or {}).items():
        extra = sorted(set(spec) - set(_DATASET_KEYS) - set(_DATASET_OPTIONS))
        if extra or not {"split", "kind", "n"} <= set(spec):
            raise InvalidInputError(
                f"{path}: datasets.{name}: expected split, kind, n and optionally seed, episode_frames, "
                f"{', '.join(_DATASET_OPTIONS)}; found {sorted(spec)}."
            )
        if int(spec.get("seed", 0)) == SEALED_TEST_SEED:
            raise InvalidInputError(
                f"{path}: datasets.{name}: seed {SEALED_TEST_SEED} is the sealed v5 test seed, reserved for the one "
                "final score (docs/tiny-model.md, v5 plan)."
            )
        chosen = {key: spec[key] for key in _DATASET_OPTIONS if key in spec}
        if "phrasing" in chosen:
            check_phrasing(chosen["phrasing"])
            if chosen["phrasing"] == "heldout_templates" and spec["split"] == "train":
                raise InvalidInputError(
                    f"{path}: datasets.{name}: a train set may not use the held-out templates (they measure "
                    "phrasings never trained)."
                )
        for key in ("turns", "clip_frames"):
            if isinstance(chosen.get(key), list):
                chosen[key] = tuple(chosen[key])
        if chosen:
            options[name] = chosen
        datasets[name] = (
            spec["split"],
            spec["kind"],
            int(spec["n"]),
            int(spec.get("seed", 0)),
            int(spec.get("episode_frames", 0)),
        )
    subsets = {name: dict(spec) for name, spec in (config.get("subsets") or {}).items()}
    for name, spec in subsets.items():
        if spec.get("from") not in datasets:
            raise InvalidInputError(f"{path}: subsets.{name}.from={spec.get('from')!r} is not a dataset.")
    phases = [
        _phase_from_config(phase, f"{path}: phases[{index}]")
        for index, phase in enumerate(config.get("phases") or [])
    ]
    for phase in phases:
        missing = sorted(set(phase.mixture) - set(datasets) - set(subsets))
        if missing:
            raise InvalidInputError(f"{path}: phase {phase.name!r} mixes undefined set(s) {missing}.")
    evals = tuple(config.get("evals") or ())
    if not set(evals) <= set(datasets):
        raise InvalidInputError(f"{path}: evals {sorted(set(evals) - set(datasets))} are not datasets.")
    stage0 = dict(config.get("stage0") or {})
    bad = sorted(set(stage0) - {f.name for f in dataclasses.fields(Stage0Settings)})
    if bad:
        raise InvalidInputError(f"{path}: stage0: unknown Stage0Settings field(s) {bad}.")
    return TinyRecipe(datasets, subsets, evals, phases, options, stage0)


def question_type_subset(
    items: Sequence[QAItem], cache: dict[str, Tensor], question_type: str
) -> tuple[list[QAItem], dict[str, Tensor]]:
    """The items of one question type and a view of their cached features (shared, not copied), for oversampling.

    Raises:
        ValueError: when no item has that type (a mixture would otherwise sample from an empty set).
    """
    index = [i for i, item in enumerate(items) if item.question_type == question_type]
    if not index:
        raise InvalidInputError(f"no item of question type {question_type!r} among {len(items)} items")
    subset = {
        "features": cache["features"],
        "offsets": cache["offsets"][index],
        "counts": cache["counts"][index],
    }
    return [items[i] for i in index], subset


def visual_needle_subset(
    items: Sequence[QAItem], cache: dict[str, Tensor], needle_length: int = 1
) -> tuple[list[QAItem], dict[str, Tensor]]:
    """The visual-needle questions of a long-video set, for oversampling them in a phase.

    With ``needle_length`` 1 the items and the cached features are shared with the full set. A longer needle is
    a *training curriculum* only (held-out needles stay one frame): the same episodes with the white screen held
    for ``needle_length`` frames, whose features must be cached separately (their media ids change).
    """
    if needle_length == 1:
        return question_type_subset(items, cache, "long_visual_needle")
    index = [i for i, item in enumerate(items) if item.question_type == "long_visual_needle"]
    longer = []
    for i in index:
        item, episode = items[i], items[i].media
        start = min(episode.needle_start, episode.num_frames - needle_length)
        media = dataclasses.replace(episode, needle_length=needle_length, needle_start=start)
        meta = dict(item.meta, media_id=f"{item.meta['media_id']}-n{needle_length}")
        longer.append(dataclasses.replace(item, media=media, meta=meta))
    return longer, {}


@dataclass
class TrainLog:
    curve: list[dict[str, Any]] = field(default_factory=list)


_LLM_PREFIXES = ("model.language_model.", "lm_head.")


def train_phase(
    model: LlamaVidForConditionalGeneration,
    processor: LlamaVidProcessor,
    phase: TrainPhase,
    data: dict[str, tuple[list[QAItem], dict[str, Tensor]]],
    evals: dict[str, tuple[list[QAItem], dict[str, Tensor]]],
    log: TrainLog,
    seed: int = 0,
    aux: AuxiliaryHeads | None = None,
) -> None:
    """AdamW + warmup/cosine over a weighted mixture; every trainable module except the frozen tower learns.

    The losses are ``phase.losses`` (:class:`~llamavid.train.losses.LossSettings`): with probe weights set,
    ``aux`` (kept by the caller across phases) adds the auxiliary losses; they change only training, not the
    saved model.
    """
    rng = random.Random(seed + phase.seed)
    losses = phase.losses
    context_probes = aux is not None and bool(
        model.config.context_token and (losses.answer_head or losses.grounding)
    )
    scene_probes = aux is not None and losses.lm and losses.scene > 0
    use_aux = context_probes or scene_probes
    llm = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(_LLM_PREFIXES)]
    visual = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(_LLM_PREFIXES)]
    if use_aux and aux is not None:
        visual += list(aux.parameters())
    params = llm + visual
    groups: list[dict[str, Any]] = [
        {"params": llm},
        {"params": visual, "lr": phase.lr * phase.visual_lr_scale},
    ]
    optimizer = torch.optim.AdamW(groups, lr=phase.lr, weight_decay=0.0, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < phase.warmup:
            return (step + 1) / phase.warmup
        progress = (step - phase.warmup) / max(1, phase.steps - phase.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    names, weights = zip(*phase.mixture.items(), strict=True)
    prior = None
    if losses.answer_prior and losses.lm:
        prior = AnswerPrior(
            (item for name in names for item in data[name][0]), processor.tokenizer, losses.answer_prior
        )
        logger.info(
            "%s: answer prior over %d questions of %s", phase.name, len(prior), list(losses.answer_prior)
        )
    # The scene probes read two LLM layers' outputs, kept by forward hooks for the training step that runs them
    # (not for the no-grad scoring passes).
    hidden: dict[int, Tensor] = {}
    layers = model.model.language_model.layers
    middle, late = max(0, len(layers) // 2 - 1), max(0, len(layers) - 2)

    def keep(index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if torch.is_grad_enabled():
                hidden[index] = output[0] if isinstance(output, tuple) else output

        return hook

    hooks = (
        [layers[i].register_forward_hook(keep(i)) for i in dict.fromkeys((middle, late))]
        if scene_probes
        else []
    )
    started = time.time()
    running = 0.0
    model.train()
    try:
        for step in range(phase.steps):
            name = rng.choices(names, weights)[0]
            items, cache = data[name]
            indices = [
                rng.randrange(len(items)) for _ in range(phase.batch_sizes.get(name, phase.batch_size))
            ]
            batch = make_batch(items, cache, indices, processor)
            chosen = [items[i] for i in indices]
            if losses.lm:
                # With an answer prior the loss is computed here, so the model is not given the labels.
                labels = batch.pop("labels") if prior is not None else batch["labels"]
                output = model(**batch)
                loss = output.loss if prior is None else prior.loss(output.logits, labels, chosen)
                visual_output = output.visual
            else:  # the LLM is not run at all: only the visual tokens and the probes
                if not context_probes or "vision_features" not in batch:
                    continue
                visual_output = model.model.get_visual_tokens(
                    **{key: batch[key] for key in VISUAL_INPUT_NAMES if key in batch}, from_pixels=False
                )
                loss = visual_output.tokens.new_zeros(())
            if context_probes and aux is not None and visual_output is not None:
                heads_prior = prior if losses.answer_prior_on_heads else None
                loss = loss + aux.loss(
                    visual_output, chosen, losses.answer_head, losses.grounding, heads_prior
                )
            if scene_probes and aux is not None:  # scene_probes implies an LM pass
                placeholder = batch["input_ids"] == model.config.image_token_index
                scene = aux.scene_loss(hidden[middle], hidden[late], placeholder, chosen)
                loss = loss + losses.scene * scene
            hidden.clear()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            running = 0.98 * running + 0.02 * float(loss.detach()) if step else float(loss.detach())
            if step % 50 == 0:
                logger.info(
                    "%s step %d/%d loss %.3f (%.0f s)",
                    phase.name,
                    step,
                    phase.steps,
                    running,
                    time.time() - started,
                )
            last = step == phase.steps - 1
            if (phase.eval_every and step and step % phase.eval_every == 0) or last:
                point: dict[str, Any] = {
                    "phase": phase.name,
                    "step": step,
                    "loss": running,
                    "seconds": time.time() - started,
                }
                for eval_name, (eval_items, eval_cache) in evals.items():
                    result = score_items(model, processor, eval_items, eval_cache)
                    point[eval_name] = {"mean": result["mean"], "per_type": result["per_type"]}
                    logger.info(
                        "%s step %d %s: mean %.3f %s",
                        phase.name,
                        step,
                        eval_name,
                        result["mean"],
                        json.dumps({k: round(v, 2) for k, v in result["per_type"].items()}),
                    )
                log.curve.append(point)
    finally:
        for hook in hooks:
            hook.remove()


def save_tiny_model(
    model: LlamaVidForConditionalGeneration, processor: LlamaVidProcessor, out_dir: Path
) -> None:
    """A complete llamavid folder in fp16 (config, weights, processor, both tokenizers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(str(out_dir), safe_serialization=True)
    model.float()
    processor.save_pretrained(out_dir)


__all__ = [
    "TEMPLATE",
    "TinyModelSettings",
    "answer_index",
    "AnswerPrior",
    "AuxiliaryHeads",
    "TrainPhase",
    "TinyRecipe",
    "load_tiny_recipe",
    "SEALED_TEST_SEED",
    "TrainLog",
    "grounding_targets",
    "needle_targets",
    "scene_targets",
    "MAX_SCENE_CHANGES",
    "LossSettings",
    "question_type_subset",
    "visual_needle_subset",
    "build_feature_cache",
    "build_llm_tokenizer",
    "build_qformer_vocab",
    "build_tiny_model",
    "make_batch",
    "prompt_for",
    "save_tiny_model",
    "score_items",
    "synth_corpus",
    "train_phase",
    "Stage0Settings",
]
