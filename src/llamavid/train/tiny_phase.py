"""One tiny-model phase inside the generic recipe (``llamavid train CONFIG`` with a ``data.tiny`` section).

The recipe (`train/recipe.py`) keeps its loop, checkpoints, resume, gradient accumulation, precision and
metrics; this module gives it what a tiny-model phase needs instead of LLaVA JSON:

* the phase (mixture, steps, batch sizes, learning rate, warmup, ``losses:``) from a curriculum YAML under
  ``train/configs/tiny/`` (:func:`llamavid.train.curriculum.load_curriculum`), addressed by name;
* the synthetic items of every set the phase mixes and their frozen vision features, cached through
  :class:`llamavid.data.FeatureCache` under a key holding the sha256 of the *model's own* vision tower and of the
  items' media, so features of another tower or of changed items can never be read back;
* a mixture sampler whose batch ``b`` depends only on (seed, epoch, b), so a resumed run draws the same batches;
* the loss: next-token loss (or :class:`~llamavid.train.losses.AnswerPrior`'s; the LLM runs once per group of
  rows of similar length, `logits_by_length`, with the gradients of one padded call) plus the
  :class:`~llamavid.train.losses.AuxiliaryHeads` terms the phase's ``losses:`` select. The heads are training-only
  (not part of the saved model); the recipe checkpoints them next to the trainable weights and writes them into
  ``final/`` so the next phase (``model.init`` = this phase's ``final``) continues with them.

Why not the recipe's defaults: the phase sets the optimizer's two learning rates (LLM, and visual side scaled by
``visual_lr_scale``) and the schedule (transformers' cosine with a 5 % floor); everything else is the recipe's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from llamavid.errors import InvalidInputError
from llamavid.model.modeling_llamavid import VISUAL_INPUT_NAMES
from llamavid.synth._common import QAItem
from llamavid.train.collate import is_right_padded
from llamavid.train.losses import AnswerPrior, AuxiliaryHeads, LossSettings, attention_loss
from llamavid.train.schema import ConfigError, packaged_config_dir
from llamavid.train.tiny import encode_frames, item_frames, make_batch

logger = logging.getLogger(__name__)

AUX_WEIGHTS = "auxiliary_heads.safetensors"  # training-only probes, beside a checkpoint's or final's weights
MIN_LR_RATE = 0.05  # the tiny phases' cosine ends at 5 % of the peak (v1-v4)
_LLM_PREFIXES = ("model.language_model.", "lm_head.")


@dataclass
class TinyPhaseConfig:
    """The ``data.tiny`` section of a run config.

    Attributes:
        curriculum: a tiny curriculum YAML (``tiny/v4`` = the packaged ``train/configs/tiny/v4.yaml``, or a path).
        phase: the name of the phase to train.
        work_dir: stage-0 tower, tokenizers (built once, for a phase that starts from ``model.init: random``).
        feature_cache: the :class:`~llamavid.data.FeatureCache` root; default ``work_dir/features``.
        threads: torch CPU threads (``null``: torch's default). Measured: 1 is fastest on 2 shared cores.
        eval: score the curriculum's ``evals`` sets at the phase's ``eval_every`` and at its end
            (``output_dir/scores.jsonl``).
        resume: rerunning the same command continues a killed phase from ``output_dir/latest`` and skips a
            finished one (``final/tiny_phase.json`` with the same settings; other settings are refused), so
            ``make tiny-model`` is a plain list of ``llamavid train`` calls that resumes where it stopped.
        export: also write the final model as a shippable fp16 llamavid folder here (:func:`llamavid.train.tiny_model.save_tiny_model`).
    """

    curriculum: str = ""
    phase: str = ""
    work_dir: str = "build/tiny-model"
    feature_cache: str | None = None
    threads: int | None = None
    eval: bool = True
    resume: bool = True
    export: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TinyPhaseConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"data.tiny: unknown key(s) {unknown}; expected some of {sorted(known)}.")
        settings = cls(**config)
        if not settings.curriculum or not settings.phase:
            raise ConfigError("data.tiny needs curriculum (e.g. tiny/v4) and phase (a phase name in it).")
        return settings

    def curriculum_path(self) -> Path:
        path = Path(self.curriculum)
        if path.is_file():
            return path
        packaged = packaged_config_dir() / (
            self.curriculum if self.curriculum.endswith(".yaml") else f"{self.curriculum}.yaml"
        )
        if packaged.is_file():
            return packaged
        raise ConfigError(f"data.tiny.curriculum: no file {path} and no packaged config {packaged}.")


# Features ---------------------------------------------------------------------------------------------------------
def media_sha256(items: Sequence[QAItem]) -> str:
    """sha256 over every item's medium (its full spec) and media id: what the cached features were rendered from."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.meta.get('media_id', item.id)}|{item.media!r}\n".encode())
    return digest.hexdigest()


def cached_features(
    cache: Any,
    items: Sequence[QAItem],
    tower: nn.Module,
    size: int,
    encoder_id: str,
    chunk_frames: int = 4096,
) -> dict[str, Tensor]:
    """Features of every item's medium (``features``, per-item ``offsets``/``counts``), through a FeatureCache.

    The entry's key holds ``encoder_id`` (:func:`llamavid.data.feature_cache.module_sha256` of `tower`), the
    items' :func:`media_sha256` and the frame size, so a retrained tower or changed items make a new entry; an
    interrupted build resumes from its finished chunks. Items sharing a medium (long-video questions) are
    encoded once.
    """
    from tqdm.auto import tqdm

    from llamavid.data.feature_cache import CacheKey

    key = CacheKey(
        video_sha256=media_sha256(items),
        fps=None,
        num_frames=len(items),
        max_frames=None,
        encoder_id=encoder_id,
        preprocessing_id=f"synth-render:{size}px",
    )
    entry, _why = cache.lookup(key)
    if entry is not None and "tiny_items" in entry.meta:
        layout = entry.meta["tiny_items"]
        return {
            "features": entry.load_features(),
            "offsets": torch.tensor(layout["offsets"], dtype=torch.long),
            "counts": torch.tensor(layout["counts"], dtype=torch.long),
        }
    cache.begin_entry(key)  # an interrupted build is redone whole: it is minutes, not hours, per set
    offsets, counts = [], []
    seen: dict[str, tuple[int, int]] = {}
    parts: list[Tensor] = []
    total = 0
    # Minutes for the large sets on 2 cores: a bar (stderr, only after ~2 s) says how far the encoding is.
    for item in tqdm(items, desc="encoding frozen features", unit="item", delay=2.0, mininterval=5.0):
        name = str(item.meta.get("media_id", item.id))
        if item.media is None:
            offsets.append(0)
            counts.append(0)
            continue
        if name not in seen:
            frames = item_frames(item, size)
            assert frames is not None
            parts.append(encode_frames(tower, frames))
            seen[name] = (total, len(frames))
            total += len(frames)
        offsets.append(seen[name][0])
        counts.append(seen[name][1])
    chunks = []
    if parts:
        features = torch.cat(parts)
        for index, start in enumerate(range(0, total, chunk_frames)):
            part = features[start : start + chunk_frames]
            times = np.arange(start, start + len(part), dtype=np.float64)
            chunks.append(cache.write_chunk(key, index, part, times))
    if not chunks:  # text-only items: one empty-feature placeholder chunk keeps the entry well formed
        chunks.append(cache.write_chunk(key, 0, torch.zeros(1, 1, 1), np.zeros(1)))
    entry = cache.finish_entry(
        key, {"path": "llamavid.synth", "sha256": key.video_sha256}, chunks, duration=None
    )
    meta = dict(entry.meta, tiny_items={"offsets": offsets, "counts": counts})
    cache.write_sidecar(key, meta)
    logger.info("cached %d frames of %d items in %s", total, len(items), entry.path)
    return {
        "features": entry.load_features(),
        "offsets": torch.tensor(offsets, dtype=torch.long),
        "counts": torch.tensor(counts, dtype=torch.long),
    }


# Data -------------------------------------------------------------------------------------------------------------
class MixtureSampler:
    """Batches of ``(set name, item index)`` drawn by the phase's mixture weights and per-set batch sizes.

    Batch ``b`` of epoch ``e`` uses its own RNG seeded from ``(seed, phase seed, e, b)``: resuming at any batch
    (``start_batch``) draws exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, phase: Any, sizes: dict[str, int], seed: int, batches: int) -> None:
        self.phase, self.sizes, self.seed, self.batches = phase, sizes, seed, batches
        self.names, self.weights = zip(*phase.mixture.items(), strict=True)
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        return self.batches

    def batch(self, index: int) -> list[tuple[str, int]]:
        rng = random.Random(f"{self.seed}/{self.phase.seed}/{self.epoch}/{index}")
        name = rng.choices(self.names, self.weights)[0]
        size = self.phase.batch_sizes.get(name, self.phase.batch_size)
        return [(name, rng.randrange(self.sizes[name])) for _ in range(size)]

    def __iter__(self) -> Iterator[list[tuple[str, int]]]:
        for index in range(self.start_batch, self.batches):
            yield self.batch(index)

    def __len__(self) -> int:
        return self.batches - self.start_batch


class MixtureDataset(torch.utils.data.Dataset):
    """Map-style view whose keys are ``(set name, index)`` pairs; the collator builds the batch."""

    def __init__(self, data: dict[str, tuple[list[QAItem], dict[str, Tensor]]]) -> None:
        self.data = data

    def __len__(self) -> int:
        return sum(len(items) for items, _ in self.data.values())

    def __getitem__(self, key: tuple[str, int]) -> tuple[str, int]:  # type: ignore[override]
        return key

    def set_epoch(self, epoch: int) -> None:
        """Nothing: the sampler's batches depend on the epoch already."""


class MixtureCollator:
    """Model inputs from cached features (:func:`llamavid.train.tiny.make_batch`) plus the items (``tiny_items``)."""

    def __init__(self, data: dict[str, tuple[list[QAItem], dict[str, Tensor]]], processor: Any) -> None:
        self.data, self.processor = data, processor

    def __call__(self, keys: list[tuple[str, int]]) -> dict[str, Any]:
        name = keys[0][0]
        items, cache = self.data[name]
        indices = [index for _, index in keys]
        batch: dict[str, Any] = make_batch(items, cache, indices, self.processor)
        batch["tiny_items"] = [items[i] for i in indices]
        return batch


def question_type_subset(
    items: Sequence[QAItem],
    cache: dict[str, Tensor],
    question_type: str | Sequence[str],
    answers: Sequence[str] | None = None,
) -> tuple[list[QAItem], dict[str, Tensor]]:
    """The items of one question type, or of any of several (with ``answers``: only those whose answer is one of
    them), and a view of their cached features (shared, not copied), for oversampling or for holding some types
    back. Several types keep the set's order, so a batch drawn from the subset mixes them.

    Raises:
        InvalidInputError: when no item qualifies (a mixture would otherwise sample from an empty set).
    """
    types = {question_type} if isinstance(question_type, str) else set(question_type)
    wanted = None if answers is None else {str(answer) for answer in answers}
    index = [
        i
        for i, item in enumerate(items)
        if item.question_type in types and (wanted is None or item.answer in wanted)
    ]
    if not index:
        among = "" if wanted is None else f" with an answer in {sorted(wanted)}"
        raise InvalidInputError(
            f"no item of question type(s) {sorted(types)}{among} among {len(items)} items"
        )
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


def load_phase_data(
    recipe: Any, names: Sequence[str], tower: nn.Module, size: int, cache_root: Path
) -> dict[str, tuple[list[QAItem], dict[str, Tensor]]]:
    """Items and cached features of the named datasets and subsets (subsets share their dataset's features)."""
    from llamavid.data.feature_cache import FeatureCache, module_sha256
    from llamavid.synth import generate_items

    cache = FeatureCache(cache_root)
    encoder_id = module_sha256(tower)
    data: dict[str, tuple[list[QAItem], dict[str, Tensor]]] = {}

    def dataset(name: str) -> tuple[list[QAItem], dict[str, Tensor]]:
        if name not in data:
            split, kind, count, seed, frames = recipe.datasets[name]
            extra: dict[str, Any] = dict(recipe.dataset_options.get(name, {}))
            if frames:
                extra["episode_frames"] = frames
            items = generate_items(split, count, seed=seed, kind=kind, **extra)
            data[name] = (items, cached_features(cache, items, tower, size, encoder_id))
        return data[name]

    out = {}
    for name in names:
        if name in recipe.datasets:
            out[name] = dataset(name)
            continue
        spec = recipe.subsets[name]
        items, features = dataset(spec["from"])
        if spec.get("subset") == "question_type":
            out[name] = question_type_subset(items, features, spec["question_type"], spec.get("answers"))
        elif spec.get("subset") == "visual_needle":
            length = int(spec.get("needle_length", 1))
            subset_items, subset_features = visual_needle_subset(items, features, length)
            if length != 1:  # new media: their own entry
                subset_features = cached_features(cache, subset_items, tower, size, encoder_id)
            out[name] = (subset_items, subset_features)
        else:
            raise InvalidInputError(f"subsets.{name}: unknown subset kind {spec.get('subset')!r}.")
    return out


# Loss -------------------------------------------------------------------------------------------------------------
def _in_batch_order(parts: Sequence[Tensor], groups: list[list[int]], length: int) -> Tensor:
    """Per-group outputs ``(b_g, l_g, D)`` back in batch order, padded with zeros to ``(B, length, D)``."""
    order = torch.tensor([row for rows in groups for row in rows], device=parts[0].device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    padded = [torch.nn.functional.pad(part, (0, 0, 0, length - part.shape[1])) for part in parts]
    return torch.cat(padded)[inverse]


# What one more LLM call is charged, in padded token positions (`length_groups`). Not critical: on a batch of 32
# clips of 5-60 frames (5,280 positions padded, 3,075 real) 64 / 128 / 256 give 5 / 4 / 3 groups of 3,339 / 3,447 /
# 3,578 positions; 128 keeps the calls few for the CPU's per-call overhead.
GROUP_OVERHEAD_TOKENS = 128


def length_groups(lengths: Sequence[int], overhead: int = GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Rows of a right-padded batch cut into groups of similar length, to run the LLM once per group.

    Rows are sorted by length and cut into consecutive runs that minimise the padded tokens the LLM processes
    (rows x the group's longest row) plus `overhead` per group (exact, by dynamic programming over the cut points).
    A batch of clips of 5-60 frames is ~58 % real tokens padded to its longest row, ~90 % in groups.

    Returns:
        The groups, each a list of row indices (longest row last); one group when cutting does not pay.
    """
    order = sorted(range(len(lengths)), key=lambda row: (lengths[row], row))
    sizes = [lengths[row] for row in order]
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j sorted rows
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + (end - start) * sizes[end - 1] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def right_padded_lengths(attention_mask: Tensor | None, labels: Tensor) -> list[int] | None:
    """Each row's length when the batch is right-padded with ignored labels on its pads (else None)."""
    if attention_mask is None or not is_right_padded(attention_mask, labels):
        return None
    return [int(n) for n in attention_mask.sum(dim=1).tolist()]


def logits_by_length(
    model: Any, batch: dict[str, Any], labels: Tensor, visual_attentions: bool = False
) -> tuple[Tensor, Any, list[list[int]] | None]:
    """The batch's logits ``(B, L, V)``, its visual output and the row groups the LLM ran in (None: one call).

    A right-padded batch (`right_padded_lengths`) gets its visual tokens in one pass for all rows, then the LLM
    once per `length_groups` group, each trimmed to its longest row and without a padding mask (causal
    attention keeps real tokens from the pads after them; `without_trailing_padding_mask`). Every row's
    computation is its own, so the real positions' logits and all gradients are those of one padded call, up
    to float rounding; pad positions get zero logits (their labels are ignored). Any other batch runs as one
    call of the model's forward, with its mask. ``visual_attentions`` keeps the context attention weights in
    the visual output (for :func:`~llamavid.train.losses.attention_loss`).
    """
    lengths = right_padded_lengths(batch.get("attention_mask"), labels)
    groups = length_groups(lengths) if lengths is not None else []
    if lengths is None or len(groups) == 1:
        inputs = {k: v for k, v in batch.items() if k != "attention_mask" or lengths is None}
        output = model(**inputs, output_visual_attentions=visual_attentions)
        return output.logits, output.visual, None
    visual_inputs = {name: batch[name] for name in VISUAL_INPUT_NAMES if name in batch}
    embeds, visual = model.model.get_inputs_embeds(
        batch["input_ids"], output_attentions=visual_attentions, **visual_inputs
    )
    parts = [
        model(inputs_embeds=embeds[rows, : max(lengths[row] for row in rows)], use_cache=False).logits
        for rows in groups
    ]
    return _in_batch_order(parts, groups, embeds.shape[1]), visual, groups


@dataclass
class TinyLoss:
    """The phase's loss on one batch: LM (or answer-prior) loss plus the selected auxiliary-head terms."""

    losses: LossSettings
    heads: AuxiliaryHeads
    prior: AnswerPrior | None
    context_probes: bool
    hidden_probes: bool  # the scene and/or count probes, which read LLM hidden states through forward hooks
    hidden: dict[int, list[Tensor]] = field(default_factory=dict)
    layers: tuple[int, int] = (0, 0)
    hooks: list[Any] = field(default_factory=list)

    @classmethod
    def build(
        cls, model: Any, losses: LossSettings, heads: AuxiliaryHeads, prior: AnswerPrior | None
    ) -> TinyLoss:
        context = bool(model.config.context_token and losses.uses_context)
        hidden = losses.lm and (losses.scene > 0 or losses.count > 0)
        layers = model.model.language_model.layers
        middle, late = max(0, len(layers) // 2 - 1), max(0, len(layers) - 2)
        loss = cls(losses, heads, prior, context, hidden, layers=(middle, late))
        if hidden:
            # The scene and count probes read LLM layers' outputs, kept by forward hooks during training steps only.
            for index in dict.fromkeys((middle, late)):
                loss.hooks.append(layers[index].register_forward_hook(loss._keep(index)))
        return loss

    def _keep(self, index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            # One entry per LLM call: `logits_by_length` runs the LLM once per length group.
            if torch.is_grad_enabled():
                self.hidden.setdefault(index, []).append(output[0] if isinstance(output, tuple) else output)

        return hook

    @property
    def uses_heads(self) -> bool:
        return self.context_probes or self.hidden_probes

    @property
    def attends(self) -> bool:
        """Whether the batch's context attention weights are kept for the attention loss."""
        return self.context_probes and self.losses.attend > 0

    def __call__(self, model: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        items = batch.pop("tiny_items")
        terms: dict[str, float] = {}
        try:
            if self.losses.lm:
                labels = batch.pop("labels")
                logits, visual, groups = logits_by_length(model, batch, labels, self.attends)
                if self.prior is not None:
                    loss = self.prior.loss(logits, labels, items)
                else:
                    loss = model.lm_loss(logits, labels)
                terms["lm"] = float(loss.detach())
            else:  # alignment: the LLM is not run, only the visual tokens and the probes
                if "vision_features" not in batch:
                    raise InvalidInputError(
                        "an lm: false phase mixes a text-only set; its batches train nothing."
                    )
                visual = model.model.get_visual_tokens(
                    **{key: batch[key] for key in VISUAL_INPUT_NAMES if key in batch},
                    from_pixels=False,
                    output_attentions=self.attends,
                )
                loss = visual.tokens.new_zeros(())
                groups = None
            if self.context_probes and visual is not None:
                prior = self.prior if self.losses.answer_prior_on_heads else None
                aux = self.heads.loss(
                    visual,
                    items,
                    self.losses.answer_head,
                    self.losses.grounding,
                    prior,
                    self.losses.count,
                    self.losses.shape_adversary,
                )
                terms["aux_context"] = float(aux.detach())
                loss = loss + aux
                if self.attends and (attend := attention_loss(visual, items)) is not None:
                    terms["aux_attend"] = float(attend.detach())
                    loss = loss + self.losses.attend * attend
            if self.hidden_probes:
                middle, late = self.layers
                placeholder = batch["input_ids"] == model.config.image_token_index
                hidden = [
                    self._assembled(self.hidden[i], groups, placeholder.shape[1]) for i in (middle, late)
                ]
                if self.losses.scene:
                    scene = self.heads.scene_loss(hidden[0], hidden[1], placeholder, items)
                    terms["aux_scene"] = float(scene.detach())
                    loss = loss + self.losses.scene * scene
                if self.losses.count:
                    count = self.heads.count_loss(hidden[1], placeholder, items)
                    terms["aux_count"] = float(count.detach())
                    loss = loss + self.losses.count * count
        finally:
            self.hidden.clear()
        return loss, terms

    @staticmethod
    def _assembled(parts: list[Tensor], groups: list[list[int]] | None, length: int) -> Tensor:
        """One LLM layer's outputs of every call in batch order ``(B, L, D)`` (zeros on trimmed pads)."""
        return parts[-1] if groups is None else _in_batch_order(parts, groups, length)

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def param_groups(
    model: Any, heads: AuxiliaryHeads | None, lr: float, visual_lr_scale: float
) -> list[dict[str, Any]]:
    """The tiny phases' two groups: the LLM at ``lr``; the visual side (and the heads) at ``lr * visual_lr_scale``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    llm = [p for n, p in named if n.startswith(_LLM_PREFIXES)]
    visual = [p for n, p in named if not n.startswith(_LLM_PREFIXES)]
    if heads is not None:
        visual += list(heads.parameters())
    return [{"params": llm, "lr": lr}, {"params": visual, "lr": lr * visual_lr_scale}]


def resolved_settings(phase: Any, optim: Any, accum: int) -> dict[str, Any]:
    """What a phase trains with, in one comparable dict (the equivalence test compares it with the old tool's)."""
    return {
        "name": phase.name,
        "steps": phase.steps,
        "mixture": dict(phase.mixture),
        "batch_size": phase.batch_size,
        "batch_sizes": dict(phase.batch_sizes),
        "lr": phase.lr,
        "visual_lr": phase.lr * phase.visual_lr_scale,
        "warmup": phase.warmup,
        "min_lr_rate": MIN_LR_RATE,
        "betas": [float(b) for b in optim.betas],
        "weight_decay": float(optim.weight_decay),
        "max_grad_norm": float(optim.max_grad_norm),
        "grad_accum_steps": accum,
        "losses": json.loads(json.dumps(asdict(phase.losses))),
    }


__all__ = [
    "AUX_WEIGHTS",
    "MIN_LR_RATE",
    "MixtureCollator",
    "MixtureDataset",
    "MixtureSampler",
    "question_type_subset",
    "visual_needle_subset",
    "TinyLoss",
    "TinyPhaseConfig",
    "cached_features",
    "load_phase_data",
    "media_sha256",
    "param_groups",
    "resolved_settings",
]
