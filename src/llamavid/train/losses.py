"""Training-only losses of the tiny LLaMA-VID, selected by a phase's configuration.

Moved out of ``train/tiny.py`` (issue #20: the tiny trainer folds into the generic recipe, where these become
losses a config selects). Each is measured in ``docs/tiny-model.md``:

* :class:`AuxiliaryHeads`: linear probes on the context tokens (``answer``, ``cell``, ``needle``, ``shapes``) and
  on the LLM's hidden states (``background`` / ``changes``, :meth:`AuxiliaryHeads.scene_loss`; ``seen``,
  :meth:`AuxiliaryHeads.count_loss`);
* :class:`AnswerPrior`: a fixed question-only expert added to the answer logits (product of experts);
* their targets, computed from the synthetic items (:func:`answer_index`, :func:`grounding_targets`,
  :func:`scene_targets`, :func:`needle_targets`, :func:`count_targets`);
* :class:`LossSettings`: which of them a phase uses and with which weights, from a config mapping
  (:meth:`LossSettings.from_config`, the ``losses:`` block of ``train/configs/tiny/*.yaml``).

None of them is part of a saved model: the heads are saved beside a phase only to resume training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from llamavid.errors import InvalidInputError, LlamaVidRuntimeError
from llamavid.model.configuration_llamavid import IGNORE_INDEX
from llamavid.synth import QUESTION_TYPES, Episode, FrameSpec
from llamavid.synth._common import QAItem
from llamavid.synth.episodes import NEEDLE_COLOURS
from llamavid.synth.render import quadrant_of
from llamavid.synth.text import TEXT_COPY_TYPES
from llamavid.synth.world import BACKGROUNDS, QUADRANTS, SHAPES
from llamavid.train.stage0_vision import patch_cell_index


# Selection --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSettings:
    """Which training losses a phase uses, and their weights (the ``losses:`` block of a tiny-model config).

    Attributes:
        lm: the next-token loss on answers; ``False`` makes an alignment phase where the LLM is not run and only
            the context path learns from the probes.
        answer_head: weight of the image "answer from the context token" probe (``AuxiliaryHeads.answer``).
        grounding: weight of the per-frame probes on the context tokens: the cell of the named object in clips,
            the needle colour in long videos (``AuxiliaryHeads.cell`` / ``needle``).
        scene: weight of the per-frame scene probes on the LLM's hidden states (``AuxiliaryHeads.scene_loss``).
        count: weight of the per-frame shape-count probes: which shapes a count clip's frame shows, from its
            context token (``AuxiliaryHeads.shapes``), and how many different shapes any clip has shown so far,
            from the LLM's hidden states (``AuxiliaryHeads.count_loss``).
        attend: weight of the image attention loss (:func:`attention_loss`): the context attention of an image
            question that names one object is asked to rest on that object's grid cell.
        shape_adversary: weight of the needle-shape adversary (``AuxiliaryHeads.needle_shape``): a probe reads
            the needle's shape from the needle frame's context token of a visual-needle question, and the token is
            trained so that it cannot (:meth:`AuxiliaryHeads.shape_confusion`); the token then carries the colour the
            question asks for and not the shape, which the train split ties to the colour.
        answer_prior: question types trained against a fixed question-only expert (:class:`AnswerPrior`).
        answer_prior_on_heads: also add that expert to the ``answer`` probe.
    """

    lm: bool = True
    answer_head: float = 0.0
    grounding: float = 0.0
    scene: float = 0.0
    count: float = 0.0
    attend: float = 0.0
    shape_adversary: float = 0.0
    answer_prior: tuple[str, ...] = ()
    answer_prior_on_heads: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "losses") -> LossSettings:
        """Read a config mapping; ``answer_prior`` is ``{types: [...], on_heads: bool}`` or a list of types.

        Raises:
            InvalidInputError: on an unknown key, a negative weight or an unknown question type, naming ``where``.
        """
        known = {
            "lm",
            "answer_head",
            "grounding",
            "scene",
            "count",
            "attend",
            "shape_adversary",
            "answer_prior",
        }
        unknown = sorted(set(config) - known)
        if unknown:
            raise InvalidInputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}.")
        weights: dict[str, float] = {}
        for key in ("answer_head", "grounding", "scene", "count", "attend", "shape_adversary"):
            value = config.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidInputError(f"{where}.{key}: expected a weight >= 0, found {value!r}.")
            weights[key] = float(value)
        lm = config.get("lm", True)
        if not isinstance(lm, bool):
            raise InvalidInputError(f"{where}.lm: expected true or false, found {lm!r}.")
        prior = config.get("answer_prior", ())
        on_heads = False
        if isinstance(prior, Mapping):
            extra = sorted(set(prior) - {"types", "on_heads"})
            if extra:
                raise InvalidInputError(
                    f"{where}.answer_prior: unknown key(s) {extra}; expected types, on_heads."
                )
            on_heads = prior.get("on_heads", False)
            if not isinstance(on_heads, bool):
                raise InvalidInputError(
                    f"{where}.answer_prior.on_heads: expected true or false, found {on_heads!r}."
                )
            prior = prior.get("types", ())
        if isinstance(prior, str) or not all(isinstance(t, str) for t in prior):
            raise InvalidInputError(
                f"{where}.answer_prior: expected a list of question types, found {prior!r}."
            )
        bad = [t for t in prior if t not in QUESTION_TYPES]
        if bad:
            raise InvalidInputError(
                f"{where}.answer_prior: unknown question type(s) {bad}; expected some of {list(QUESTION_TYPES)}."
            )
        return cls(lm=lm, answer_prior=tuple(prior), answer_prior_on_heads=on_heads, **weights)

    @property
    def uses_heads(self) -> bool:
        """Whether any probe of :class:`AuxiliaryHeads` is trained."""
        return bool(self.answer_head or self.grounding or self.scene or self.count or self.shape_adversary)

    @property
    def uses_context(self) -> bool:
        """Whether a loss reads the context tokens or their attention (needs ``config.context_token``)."""
        return bool(self.answer_head or self.grounding or self.count or self.attend or self.shape_adversary)


# Targets ----------------------------------------------------------------------------------------------------------
# The answer probe's rows, one block per question type in this order. Only images reach it, but it keeps a block for
# every type the world had when the first v5 heads were saved, so saved ``auxiliary_heads.safetensors`` load; the
# text-only types added since (``text_copy``) get none.
ANSWER_HEAD_TYPES: tuple[str, ...] = tuple(t for t in QUESTION_TYPES if t not in TEXT_COPY_TYPES)


def answer_index(item: QAItem) -> tuple[int, int]:
    """``(question type number, answer number among that type's options)`` for the auxiliary answer heads."""
    types = list(ANSWER_HEAD_TYPES)
    return types.index(item.question_type), list(QUESTION_TYPES[item.question_type]).index(item.answer)


def rows_per_item(per_block: Tensor, visual: Any, items: Sequence[QAItem]) -> list[tuple[Tensor, QAItem]]:
    """``per_block`` (one row per (block, frame), like ``visual.context_tokens``) regrouped per item with media:
    a long video has one block per frame, anything else one block."""
    blocks = iter(per_block.split(visual.block_frame_counts.tolist()))
    rows = []
    for item in items:
        if item.media is None:
            continue
        taken = item.media.num_frames if isinstance(item.media, Episode) else 1
        rows.append((torch.cat([next(blocks) for _ in range(taken)]), item))
    return rows


def named_object_cell(item: QAItem, grid: int = 4) -> int | None:
    """The grid cell (row-major) of the one object an image question names, else None.

    ``image_shape`` names the object by colour and ``image_colour`` by shape (their distractors differ in both, so
    the answer singles the object out); ``image_size`` and ``image_position`` name colour and shape (read from the
    question's words: typos never touch them) or, asked by place, the object's quadrant. Other types (count,
    text, background) name no object.
    """
    media = item.media
    if not isinstance(media, FrameSpec) or not media.objects:
        return None
    kind = item.question_type
    if kind == "image_shape":
        found = [o for o in media.objects if o.shape == item.answer]
    elif kind == "image_colour":
        found = [o for o in media.objects if o.colour == item.answer]
    elif kind in ("image_size", "image_position"):
        question = item.question.lower()
        if item.meta.get("asks_by") == "place":
            found = [o for o in media.objects if QUADRANTS[quadrant_of(o, grid)] in question]
        else:
            words = set(re.findall(r"[a-z]+", question))
            found = [o for o in media.objects if o.shape in words and o.colour in words]
    else:
        return None
    if len(found) != 1:
        return None
    row, col = found[0].cell(grid)
    return row * grid + col


def attention_loss(visual: Any, items: Sequence[QAItem], grid: int = 4) -> Tensor | None:
    """Mean ``-log`` of the context attention (averaged over queries) that rests on the named object's cell.

    For every image question :func:`named_object_cell` resolves; None when the batch has none. ``visual`` must
    carry ``attention_weights`` (``output_attentions=True``). Measured on v5.4 (docs/tiny-model.md, "After
    v5.5"): on unseen (shape, colour) pairs the attention finds the named object less (0.51 of its mass on the
    object's cell against 0.68 on seen pairs), and the answer probe reads their shape at 0.58 instead of 0.44
    when the attention is put on the cell.
    """
    weights = visual.attention_weights
    if weights is None:
        raise LlamaVidRuntimeError("attention_loss needs the visual output's attention weights")
    rows, cells = [], []
    for block, item in rows_per_item(weights, visual, items):
        if (cell := named_object_cell(item, grid)) is not None:
            rows.append(block[0].mean(0))  # (N,) this image's attention, mean over queries
            cells.append(cell)
    if not rows:
        return None
    attention = torch.stack(rows)  # (R, N)
    index = patch_cell_index(attention.shape[1], grid).to(attention.device)
    on_cell = index[None, :] == torch.tensor(cells, device=attention.device)[:, None]  # (R, N)
    mass = (attention.float() * on_cell).sum(1)
    return -torch.log(mass.clamp_min(1e-6)).mean()


def grounding_targets(item: QAItem) -> list[int] | None:
    """Per frame, the grid cell of the object a clip's first event names (``G*G`` = not on screen), else None.

    Clips whose first event names one object by shape and colour (motion, colour change, appearing, ...) get a
    target for every frame; other items get none.
    """
    media = item.media
    events = getattr(media, "events", None)
    if not events or isinstance(media, FrameSpec):
        return None
    detail = events[0].detail
    shape, colour = detail.get("shape"), detail.get("colour")
    if shape is None or colour is None:
        return None
    grid = media.grid
    cells = []
    for frame in media.frames:
        found = [o for o in frame.objects if o.shape == shape and o.colour == colour]
        if len(found) == 1:
            row, col = found[0].cell(grid)
            cells.append(row * grid + col)
        else:
            cells.append(grid * grid if not found else -1)  # -1 = ambiguous, ignored
    return cells


MAX_SCENE_CHANGES = 4  # the most background changes a clip question asks about


def scene_targets(item: QAItem) -> tuple[Tensor, Tensor] | None:
    """Per frame of a short clip: its background's number and how often the background has changed up to and
    including that frame (capped at ``MAX_SCENE_CHANGES``); ``None`` for images, long videos and text."""
    media = item.media
    if media is None or isinstance(media, (FrameSpec, Episode)):
        return None
    backgrounds = [frame.background for frame in media.frames]
    if not backgrounds or any(b not in BACKGROUNDS for b in backgrounds):
        return None
    changed = [0] + [int(a != b) for a, b in zip(backgrounds, backgrounds[1:], strict=False)]
    so_far = torch.tensor(changed).cumsum(0).clamp_max(MAX_SCENE_CHANGES)
    return torch.tensor([BACKGROUNDS.index(b) for b in backgrounds]), so_far


MAX_SHAPE_COUNT = len(SHAPES)  # "how many different shapes" is answered 1..6


def count_targets(item: QAItem) -> tuple[Tensor, Tensor] | None:
    """Per frame of a short clip: which shapes it shows (``(T, len(SHAPES))`` multi-hot) and how many different
    shapes the clip has shown up to and including that frame (``(T,)``); ``None`` for images, long videos and
    text."""
    media = item.media
    if media is None or isinstance(media, (FrameSpec, Episode)) or not getattr(media, "frames", None):
        return None
    shown = torch.zeros(len(media.frames), len(SHAPES))
    for t, frame in enumerate(media.frames):
        for obj in frame.objects:
            shown[t, SHAPES.index(obj.shape)] = 1.0
    so_far = shown.cummax(0).values.sum(1).long().clamp_max(MAX_SHAPE_COUNT)
    return shown, so_far


def needle_targets(item: QAItem) -> Tensor | None:
    """Per frame of a visual-needle question's long video: the needle colour's number + 1 there, 0 elsewhere."""
    media = item.media
    if item.question_type != "long_visual_needle" or not isinstance(media, Episode):
        return None
    target = torch.zeros(media.num_frames, dtype=torch.long)
    colour = NEEDLE_COLOURS.index(media.needle_colour) + 1
    target[media.needle_start : media.needle_start + media.needle_length] = colour
    return target


class AuxiliaryHeads(nn.Module):
    """Training-only linear probes on the context tokens and, for clips, the LLM's hidden states (discarded after
    training; never part of the saved model).

    * ``answer``: an image's context token -> the answer, one linear head per question type (a context token is
      a softmax-weighted mix of patches: it says *what was attended*, while the question type, which the LLM
      reads from the text, says which attribute to report). Supervising it directly trains the text queries to
      find the object a question names, a one-hop lookup the LLM alone learned slowly.
    * ``cell``: each frame's context token of a clip -> the cell of the object the question names, so motion and
      position over frames are carried by the 2 tokens a video frame keeps.
    * ``needle``: for a long video's visual-needle question, each frame's context token -> the needle's colour on
      the needle frame and "none" elsewhere (weighted like ``cell``). Measured: without it the LLM stayed at
      chance on visual needles while it learned subtitle needles; with every other frame saying "none", the one
      frame that differs is what the LLM has to find.
    * ``needle_shape`` (the ``shape_adversary`` weight): the needle frame's context token of a visual-needle
      question -> the needle's shape, trained to read it while the token is trained to leave its prediction
      uniform (a confusion loss, :meth:`shape_confusion`). Added for v5.16: the LLM read a held-out orange
      square needle as red because its context token said "square" as loudly as "orange" (swapping in an
      orange circle's context token alone made it answer orange 10 / 10; docs/tiny-model.md, "v5.16 plan" and,
      for this bounded form, "v5.17 plan").
    * ``background`` / ``changes`` (`scene_loss`): on the LLM's *hidden states* at each clip frame's last visual
      token, the frame's background (read from a middle layer) and how often the background has changed so far
      (read from the layer before the last, so the answer position can still attend to it). "How many times does
      the background colour change?" needs exactly this running count, which no other loss asks the LLM to keep.
    * ``shapes`` / ``seen`` (the ``count`` weight): "how many different shapes appear?" needs, per frame, which
      shapes are on screen (``shapes``: a count clip's context tokens, multi-label, since the question steers the
      text queries) and a running union over frames (``seen``: the number of different shapes shown so far, on
      the same late layer and positions as ``changes``, for every clip). Added for v5.2: v5.1 answered count
      clips at 0.37 while its other clip types averaged 0.82 (docs/tiny-model.md).
    """

    def __init__(self, width: int, cells: int = 16):
        super().__init__()
        self.options = [len(QUESTION_TYPES[question_type]) for question_type in ANSWER_HEAD_TYPES]
        self.answer = nn.Linear(width, sum(self.options))
        self.cell = nn.Linear(width, cells + 1)
        self.needle = nn.Linear(width, len(NEEDLE_COLOURS) + 1)
        self.background = nn.Linear(width, len(BACKGROUNDS))
        self.changes = nn.Linear(width, MAX_SCENE_CHANGES + 1)
        self.shapes = nn.Linear(width, len(SHAPES))
        self.seen = nn.Linear(width, MAX_SHAPE_COUNT + 1)
        with torch.random.fork_rng(devices=[]):  # drawn aside: what is drawn after the heads stays as it was
            self.needle_shape = nn.Linear(width, len(SHAPES))

    def answer_logits(self, context: Tensor, types: Tensor) -> Tensor:
        """``(B, D)`` context tokens and ``(B,)`` question types -> ``(B, max options)`` logits (-inf padded)."""
        logits = self.answer(context)
        starts = torch.tensor([0, *self.options]).cumsum(0)[:-1]
        width = max(self.options)
        columns = starts[types][:, None] + torch.arange(width)[None]
        valid = torch.arange(width)[None] < torch.tensor(self.options)[types][:, None]
        gathered = logits.gather(1, columns.clamp_max(logits.shape[1] - 1))
        return gathered.masked_fill(~valid, float("-inf"))

    def loss(
        self,
        visual: Any,
        items: Sequence[QAItem],
        context_weight: float,
        grounding_weight: float,
        prior: AnswerPrior | None = None,
        count_weight: float = 0.0,
        adversary_weight: float = 0.0,
    ) -> Tensor:
        """Weighted auxiliary losses for one batch (``items`` in batch order, text-only ones included).

        With ``prior``, the answer head is trained against the same question-only expert as the LLM.
        """
        context = visual.context_tokens
        total = context.new_zeros(())
        rows = rows_per_item(context, visual, items)
        images = [(row, item) for row, item in rows if isinstance(item.media, FrameSpec)]
        if context_weight and images:
            types, answers = zip(*(answer_index(item) for _, item in images), strict=True)
            logits = self.answer_logits(torch.cat([row for row, _ in images]), torch.tensor(types))
            if prior is not None:
                bias = torch.zeros_like(logits)
                for row, (_, item) in enumerate(images):
                    if (found := prior.lookup(item)) is not None:
                        bias[row, : len(found[1])] = found[1].to(bias.dtype)
                logits = logits + bias
            total = total + context_weight * F.cross_entropy(logits, torch.tensor(answers))
        needles = [  # (context rows, per-frame needle targets, episode) of the visual-needle questions
            (row, frames, item.media)
            for row, item in rows
            if (grounding_weight or adversary_weight) and (frames := needle_targets(item)) is not None
        ]
        if grounding_weight:
            grounded = [(row, cells) for row, item in rows if (cells := grounding_targets(item)) is not None]
            if grounded:
                logits = self.cell(torch.cat([row for row, _ in grounded]))
                target = torch.tensor([cell for _, cells in grounded for cell in cells])
                total = total + grounding_weight * F.cross_entropy(logits, target, ignore_index=-1)
            if needles:
                logits = self.needle(torch.cat([row for row, _, _ in needles]))
                target = torch.cat([frames for _, frames, _ in needles])
                total = total + grounding_weight * F.cross_entropy(logits, target)
        if adversary_weight and needles:
            tokens, shapes = [], []
            for context_rows, marks, episode in needles:
                shown = context_rows[marks > 0]  # the needle frames' context tokens
                tokens.append(shown)
                shapes += [SHAPES.index(episode.needle_shape)] * len(shown)
            total = total + adversary_weight * self.shape_confusion(torch.cat(tokens), torch.tensor(shapes))
        if count_weight:
            counted = [
                (row, targets[0])
                for row, item in rows
                if item.question_type == "video_count" and (targets := count_targets(item)) is not None
            ]
            if counted:
                logits = self.shapes(torch.cat([row for row, _ in counted]))
                target = torch.cat([shown for _, shown in counted]).to(logits)
                total = total + count_weight * F.binary_cross_entropy_with_logits(logits, target)
        return total

    def shape_confusion(self, tokens: Tensor, shapes: Tensor) -> Tensor:
        """The needle-shape adversary on ``(N, D)`` needle-frame context tokens of needles shaped ``shapes``.

        Two bounded terms (a confusion loss, Tzeng et al. 2015, rather than a reversed gradient, whose unbounded
        objective diverged in v5.16: the tokens grew until the loss was 80): the probe learns to read the shape
        from the tokens as they are (its own cross-entropy, tokens detached), and the tokens learn to leave it
        uniform (cross-entropy of the probe's prediction, probe weights detached, against the uniform
        distribution, minus its floor ``log K``, so the term is 0 when the shape cannot be read).
        """
        head = F.cross_entropy(self.needle_shape(tokens.detach()), shapes.to(tokens.device))
        logits = F.linear(tokens, self.needle_shape.weight.detach(), self.needle_shape.bias.detach())
        confusion = -logits.log_softmax(-1).mean(-1).mean() - math.log(logits.shape[-1])
        return head + confusion

    def scene_loss(
        self, middle: Tensor, late: Tensor, placeholder: Tensor, items: Sequence[QAItem]
    ) -> Tensor:
        """Per-frame scene probes for one batch.

        Args:
            middle / late: ``(B, L, D)`` outputs of two LLM layers (row ``i`` is ``items[i]``'s sequence).
            placeholder: ``(B, L)`` where the visual tokens sit; a clip frame's tokens are consecutive there.
        """
        index, found = _frame_ends(placeholder, items, scene_targets)
        if not found:
            return middle.new_zeros(())
        index = index.to(middle.device)
        background = self.background(middle.flatten(0, 1)[index])
        so_far = self.changes(late.flatten(0, 1)[index])
        return F.cross_entropy(
            background, torch.cat([t[0] for t in found]).to(middle.device)
        ) + F.cross_entropy(so_far, torch.cat([t[1] for t in found]).to(middle.device))

    def count_loss(self, late: Tensor, placeholder: Tensor, items: Sequence[QAItem]) -> Tensor:
        """The ``seen`` probe for one batch: at each clip frame's last visual token of ``late`` (``(B, L, D)``), the
        number of different shapes shown so far (arguments as in :meth:`scene_loss`)."""
        index, found = _frame_ends(placeholder, items, count_targets)
        if not found:
            return late.new_zeros(())
        seen = self.seen(late.flatten(0, 1)[index.to(late.device)])
        return F.cross_entropy(seen, torch.cat([t[1] for t in found]).to(late.device))


def _frame_ends(
    placeholder: Tensor,
    items: Sequence[QAItem],
    targets_of: Callable[[QAItem], tuple[Tensor, Tensor] | None],
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Flat ``(B * L)`` positions of each clip frame's last visual token, and the per-frame targets of the items
    that have some (``targets_of(item)``: a pair whose first element has one row per frame, or None)."""
    picks: list[Tensor] = []
    found: list[tuple[Tensor, Tensor]] = []
    for row, item in enumerate(items):
        targets = targets_of(item)
        if targets is None:
            continue
        positions = placeholder[row].nonzero().squeeze(1)
        frames = len(targets[0])
        if len(positions) % frames:
            raise InvalidInputError(
                f"item {item.id}: {len(positions)} visual tokens do not split into {frames} frames evenly"
            )
        per_frame = len(positions) // frames
        picks.append(row * placeholder.shape[1] + positions[per_frame - 1 :: per_frame])
        found.append(targets)
    return (torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)), found


def prior_key(item: QAItem) -> tuple[str, str]:
    """What :class:`AnswerPrior`'s expert conditions on: ``(question type, question text)``; for a visual needle
    ``(type, "needle <shape>")`` and for a clip's colour change ``(type, "shape <shape>")``, the one thing besides
    the asked colour that the answer must not be inferred from (a clip question names its shape in any wording)."""
    if item.question_type == "long_visual_needle" and isinstance(item.media, Episode):
        return item.question_type, f"needle {item.media.needle_shape}"
    if item.question_type == "video_colour_change":
        named = [shape for shape in SHAPES if re.search(rf"\b{shape}\b", item.question.lower())]
        if len(named) == 1:
            return item.question_type, f"shape {named[0]}"
    return item.question_type, item.question


class AnswerPrior:
    """A fixed question-only expert for product-of-experts training (as in Clark et al., 2019, "Don't take the easy
    way out"), used only while training and never saved.

    For each chosen question type it counts, on the training items, how often each answer follows each exact
    question text, and keeps ``log P(answer | question)`` (add-``smoothing`` over the type's options). During
    training these log-probabilities are added to the LLM's logits at the answer's first token, so the loss only
    rewards what the question alone does not predict; the model decodes without them. Why: the train split holds
    out some (shape, colour) pairs, and a model reading "What shape is the purple object?" learned "purple objects
    are never circles" from the text instead of looking (held-out pairs 0.31 vs seen 0.94; ``docs/tiny-model.md``).

    A visual needle's expert is keyed by the needle's *shape* instead of the question (:func:`prior_key`): its
    question says nothing about the colour, but the needle frame does, beyond its colour. The train split never
    shows an orange square or a red diamond on the needle screen, and a model trained without this expert learnt
    "a needle square is never orange" from the pixels: v5.13 read every held-out orange-square needle as red
    (0 / 10 at every checkpoint of its tail, 60-frame dev episodes; ``docs/tiny-model.md``, "v5.14 plan"). With
    ``log P(colour | needle shape)`` added during training, that shortcut earns no loss, so nothing teaches it.
    """

    def __init__(
        self,
        items: Iterable[QAItem],
        tokenizer: Any,
        question_types: Sequence[str],
        smoothing: float = 0.5,
    ) -> None:
        self.token_ids: dict[str, Tensor] = {}
        for question_type in question_types:
            if question_type not in QUESTION_TYPES:
                raise InvalidInputError(
                    f"unknown question type {question_type!r}; expected one of {list(QUESTION_TYPES)}"
                )
            first = [
                tokenizer(" " + option, add_special_tokens=False)["input_ids"][0]
                for option in QUESTION_TYPES[question_type]
            ]
            if len(set(first)) != len(first):
                raise InvalidInputError(
                    f"the options of {question_type!r} do not start with distinct tokens; an answer prior needs them"
                )
            self.token_ids[question_type] = torch.tensor(first)
        counts: dict[tuple[str, str], Tensor] = {}
        for item in items:
            if item.question_type in self.token_ids:
                options = list(QUESTION_TYPES[item.question_type])
                row = counts.setdefault(prior_key(item), torch.full((len(options),), float(smoothing)))
                row[options.index(item.answer)] += 1
        self.log_prior = {key: (row / row.sum()).log() for key, row in counts.items()}

    def __len__(self) -> int:
        return len(self.log_prior)

    def lookup(self, item: QAItem) -> tuple[Tensor, Tensor] | None:
        """``(option token ids, log-prior)`` for ``item``, or ``None`` if its question was never counted."""
        log_prior = self.log_prior.get(prior_key(item))
        return None if log_prior is None else (self.token_ids[item.question_type], log_prior)

    def loss(self, logits: Tensor, labels: Tensor, items: Sequence[QAItem]) -> Tensor:
        """The masked next-token loss of ``logits`` (``(B, L, V)``) with the expert added at each answer's first
        token; equal to the model's own loss where no item has a prior."""
        logits, targets = logits[:, :-1].float(), labels[:, 1:]
        per_token = F.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        rows, columns, biases = [], [], []
        for row, item in enumerate(items):
            found = self.lookup(item)
            if found is None:
                continue
            answer = (targets[row] != IGNORE_INDEX).nonzero()
            if not len(answer):
                continue
            token_ids, log_prior = found
            bias = logits.new_zeros(logits.shape[-1])
            bias[token_ids] = log_prior.to(logits.dtype)
            rows.append(row)
            columns.append(int(answer[0]))
            biases.append(bias)
        if rows:
            index = (torch.tensor(rows), torch.tensor(columns))
            combined = logits[index] + torch.stack(biases)
            per_token = per_token.index_put(
                index, F.cross_entropy(combined, targets[index], reduction="none")
            )
        return per_token.sum() / (targets != IGNORE_INDEX).sum().clamp_min(1)
