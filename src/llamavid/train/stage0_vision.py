"""Stage 0: pretrain the tiny EVA-style vision tower on per-cell synthetic labels, then freeze it.

Why a separate recipe: LLaMA-VID keeps its vision encoder frozen (EVA ViT-g, pretrained elsewhere), and no image
weights can be downloaded here, so the tiny model needs its own "pretrained" encoder before stages 1-3. Its loop
trains the tower and throw-away heads on dense labels, not the LLM, so it does not fit the generic recipe.

The findings (``shared/tiny-model-findings.md``) drive the targets:

* attribute-only targets made features position-blind ("where" stayed at blind), so every target is **per grid
  cell** (shape, colour, size of the object whose centre is in the cell; 0 = empty), read from the patches of
  that cell (2x2 patches at 64 px / patch 8 with a 4x4 grid; the same pooling as ``grid:4`` content tokens);
* video frames are compressed to one ``mean`` content token, so heads on the **mean of all patches** must also
  predict which cells are occupied and which shapes/colours are present: this forces the mean-pooled token
  (what a video frame becomes) to keep layout information for motion and counting questions;
* background and on-screen word from the mean token; the word also from the bottom-row cell features;
* with ``patch_targets`` (the shipped model), every single patch must also say which cell it lies in when that
  cell is occupied ("empty" otherwise) and the shape/colour of that cell's object. Measured on the first tower:
  a lone patch decoded its quadrant at chance (0.29 vs 0.25), so an instruction-guided context token, a
  softmax-weighted mix of patches, could find "the red star" but not say *where* it is. With the targets, a
  context token that attends to one object carries that object's cell, and the mean of the patches (a video
  frame's content token) carries the sum of the occupied cells' codes;
* with ``grey_share`` > 0, that share of every batch is shown in grey levels (luminance only) with the colour
  targets (cell and patch colour, colours present, background) left out, so shape and size must also be read
  without colour. Why: the train split never renders some (shape, colour) pairs (``HELDOUT_PAIRS``), and a shape
  reader fitted on colour features learns "purple objects are never circles"; grey frames show every shape at
  every brightness without showing any colour with it (``docs/tiny-model.md``, "After v5.4");
* with ``colour_channels`` = k > 0, the features are split into two codes: the last k channels (the *colour
  code*) feed the colour heads (cell, patch, colours present, background) and nothing else, the other channels
  (the *form code*) feed every other head. Two linear adversaries try to read colour from the form code and
  shape from the colour code, and the tower is trained (weight ``adversary``) to leave them guessing, so it keeps
  each out of the other; with ``grey_pairs`` > 0, every frame of the last half of a batch is also shown in
  grey levels and the form code of each patch is pulled towards its grey twin's (``1 - cosine``, that weight),
  so shape and size are coded the same whatever the colour. Why: a linear probe that cannot see colour reads
  shape on the unseen pairs at 0.86 where one that can reads 0.68 ("After v5.5"), so a tower whose shape code
  carries no colour leaves a reader fitted on seen pairs nothing to key the "this colour is never that shape"
  prior on except the separate colour code;
* ``occupancy_weight`` and ``shapes_present_weight`` scale the mean-token occupancy and shapes-present losses (1
  in every committed tower). Why: the adversaries cost the mean token, a video frame's content token, its exact
  cell occupancy (0.94 -> 0.54 at ``adversary: 1.0``; a linear probe fitted on all 128 mean channels reads 0.67),
  and with the occupancy loss x4 (occupancy 0.98) which shapes it holds (``tools/probe_shape_combos.py
  --mean-token``: 0.65 against the committed tower's 0.83); the short-video questions about what appears, disappears and comes first need both.

Inputs are normalised exactly as :class:`~llamavid.model.image_processing_llamavid.LlamaVidImageProcessor`
does for a square frame of the tower's size (no resize), so the frozen tower sees the same pixels at inference.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.models.instructblip.configuration_instructblip import InstructBlipVisionConfig

from llamavid.errors import InvalidInputError
from llamavid.model.image_processing_llamavid import CLIP_MEAN, CLIP_STD
from llamavid.model.modeling_llamavid import LlamaVidVisionTower
from llamavid.synth import pretraining_batch
from llamavid.synth.world import BACKGROUNDS, COLOURS, SHAPES, SIZES, WORDS

logger = logging.getLogger(__name__)

TOWER_WEIGHTS = "vision_tower.safetensors"
TOWER_CONFIG = "vision_config.json"
METRICS = "stage0_metrics.json"


@dataclass
class Stage0Settings:
    """Everything that defines a stage-0 run (saved next to the weights for reproducibility)."""

    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    grid: int = 4
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    seed: int = 0
    eval_frames: int = 2000
    threads: int = 1  # measured: 2 threads are ~8x slower than 1 when other jobs share the 2 cores
    patch_targets: bool = False  # per-patch cell/shape/colour targets (see the module docstring)
    grey_share: float = 0.0  # share of each batch in grey levels, without colour targets (module docstring)
    colour_channels: int = 0  # > 0: the last channels are a colour code, the rest a form code
    adversary: float = 0.0  # weight of the adversaries that keep the two codes apart (module docstring)
    grey_pairs: float = 0.0  # weight tying a frame's form code to its grey twin's (module docstring)
    occupancy_weight: float = 1.0  # scales the mean-token occupancy loss (module docstring)
    shapes_present_weight: float = 1.0  # scales the mean-token shapes-present loss (module docstring)

    def __post_init__(self) -> None:
        if not 0.0 <= self.grey_share <= 1.0:
            raise InvalidInputError(f"stage0 grey_share must be within 0..1, found {self.grey_share!r}.")
        if not 0 <= self.colour_channels < self.hidden_size:
            raise InvalidInputError(
                f"stage0 colour_channels must be within 0..{self.hidden_size - 1} (hidden_size "
                f"{self.hidden_size}), found {self.colour_channels!r}."
            )
        for name in ("occupancy_weight", "shapes_present_weight"):
            if getattr(self, name) < 0:
                raise InvalidInputError(
                    f"stage0 {name} is a loss weight (>= 0), found {getattr(self, name)!r}."
                )
        if self.adversary < 0 or self.grey_pairs < 0:
            raise InvalidInputError(
                f"stage0 adversary and grey_pairs are loss weights (>= 0), found {self.adversary!r} and "
                f"{self.grey_pairs!r}."
            )
        if (self.adversary or self.grey_pairs) and not self.colour_channels:
            raise InvalidInputError(
                "stage0 adversary and grey_pairs act on the form and colour codes: set colour_channels > 0 too."
            )


def tiny_vision_config(settings: Stage0Settings) -> InstructBlipVisionConfig:
    """EVA layout (fused qkv with zero key bias, pre-norm, exact GELU) at a CPU-sized width."""
    config = InstructBlipVisionConfig(
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        image_size=settings.image_size,
        patch_size=settings.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        qkv_bias=True,
    )
    config._attn_implementation = "sdpa"
    return config


def normalise(images: np.ndarray) -> Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float, CLIP-normalised like the processor (square, no resize)."""
    pixels = torch.from_numpy(images).float().div_(255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()


class Stage0Heads(nn.Module):
    """Throw-away probes on the tower output; linear on purpose so the *features* must carry the information.

    With ``colour_channels`` = k > 0 the colour heads read only the last k channels and every other head only the
    rest; ``adversary`` > 0 adds two linear adversaries on the cell features, colour from the form code and shape
    from the colour code. Each is returned twice: ``adv_*`` on detached features (trains the adversary) and
    ``confuse_*`` through frozen adversary weights (trains the tower to leave it guessing),
    see :func:`code_separation_loss`.
    """

    def __init__(
        self,
        width: int,
        grid: int,
        patch_targets: bool = False,
        colour_channels: int = 0,
        adversary: float = 0.0,
    ):
        super().__init__()
        cells = grid * grid
        self.grid = grid
        self.patch_targets = patch_targets
        self.colour_channels = colour_channels
        self.adversaries = adversary > 0  # a flag here: the loss weight is applied by the caller
        form = width - colour_channels
        colour = colour_channels or width
        if patch_targets:
            self.patch_cell = nn.Linear(form, cells + 1)  # last class = the patch's cell is empty
            self.patch_shape = nn.Linear(form, len(SHAPES) + 1)
            self.patch_colour = nn.Linear(colour, len(COLOURS) + 1)
        self.cell_shape = nn.Linear(form, len(SHAPES) + 1)
        self.cell_colour = nn.Linear(colour, len(COLOURS) + 1)
        self.cell_size = nn.Linear(form, len(SIZES) + 1)
        self.background = nn.Linear(colour, len(BACKGROUNDS))
        self.word = nn.Linear(form, len(WORDS) + 1)  # last class = no word
        self.row_word = nn.Linear(form * grid, len(WORDS) + 1)
        self.mean_occupancy = nn.Linear(form, cells)
        self.mean_shapes = nn.Linear(form, len(SHAPES))
        self.mean_colours = nn.Linear(colour, len(COLOURS))
        if adversary > 0:
            self.adv_colour = nn.Linear(form, len(COLOURS))  # object classes only: empty cells are not asked
            self.adv_shape = nn.Linear(colour, len(SHAPES))

    def split(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(form code, colour code)`` of features ``(..., C)``; both are all channels without a split."""
        if not self.colour_channels:
            return features, features
        return features[..., : -self.colour_channels], features[..., -self.colour_channels :]

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """``features`` ``(B, 1+N, C)`` tower output -> logits per target."""
        patches = features[:, 1:]
        batch, num_patches, width = patches.shape
        side = math.isqrt(num_patches)
        stride = side // self.grid
        grid_map = patches.reshape(batch, side, side, width).permute(0, 3, 1, 2)
        cells = F.avg_pool2d(grid_map, stride, stride).permute(0, 2, 3, 1)  # (B, G, G, C), as grid:G pooling
        form_cells, colour_cells = self.split(cells)
        form_mean, colour_mean = self.split(patches.mean(dim=1))
        logits = {
            "shape": self.cell_shape(form_cells),
            "colour": self.cell_colour(colour_cells),
            "size": self.cell_size(form_cells),
            "background": self.background(colour_mean),
            "word": self.word(form_mean),
            "row_word": self.row_word(form_cells[:, -1].flatten(1)),
            "occupancy": self.mean_occupancy(form_mean),
            "shapes_present": self.mean_shapes(form_mean),
            "colours_present": self.mean_colours(colour_mean),
        }
        if self.patch_targets:
            form_patches, colour_patches = self.split(patches)
            logits["patch_cell"] = self.patch_cell(form_patches)
            logits["patch_shape"] = self.patch_shape(form_patches)
            logits["patch_colour"] = self.patch_colour(colour_patches)
        if self.adversaries:
            for name, code in (("colour", form_cells), ("shape", colour_cells)):
                head = getattr(self, f"adv_{name}")
                logits[f"adv_{name}"] = head(code.detach())
                logits[f"confuse_{name}"] = F.linear(code, head.weight.detach(), head.bias.detach())
        return logits


def patch_cell_index(num_patches: int, grid: int) -> Tensor:
    """``(N,)`` row-major grid cell of every patch of a square patch grid."""
    side = math.isqrt(num_patches)
    stride = side // grid
    rows, cols = torch.arange(num_patches) // side, torch.arange(num_patches) % side
    return (rows // stride) * grid + cols // stride


def batch_targets(labels: dict[str, np.ndarray], num_patches: int | None = None) -> dict[str, Tensor]:
    """Synth labels -> training targets (word -1 becomes the explicit "no word" class).

    With ``num_patches``, also the per-patch targets: the patch's cell (or ``G*G`` = empty) and its cell's
    object shape/colour (0 = empty).
    """
    shape = torch.from_numpy(labels["shape"])
    colour = torch.from_numpy(labels["colour"])
    word = torch.from_numpy(labels["word"]).clone()
    word[word < 0] = len(WORDS)
    shapes_present = torch.zeros(len(shape), len(SHAPES) + 1).scatter_(1, shape.flatten(1), 1.0)[:, 1:]
    colours_present = torch.zeros(len(colour), len(COLOURS) + 1).scatter_(1, colour.flatten(1), 1.0)[:, 1:]
    targets = {
        "shape": shape,
        "colour": colour,
        "size": torch.from_numpy(labels["size"]),
        "background": torch.from_numpy(labels["background"]),
        "word": word,
        "row_word": word,
        "occupancy": (shape > 0).flatten(1).float(),
        "shapes_present": shapes_present,
        "colours_present": colours_present,
    }
    if num_patches is not None:
        cells = shape.shape[1] * shape.shape[2]
        of_patch = patch_cell_index(num_patches, shape.shape[1])  # (N,)
        patch_shape = shape.flatten(1)[:, of_patch]  # (B, N)
        targets["patch_cell"] = torch.where(patch_shape > 0, of_patch.expand_as(patch_shape), cells)
        targets["patch_shape"] = patch_shape
        targets["patch_colour"] = colour.flatten(1)[:, of_patch]
    return targets


_MULTI_LABEL = ("occupancy", "shapes_present", "colours_present")


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


def to_grey(images: np.ndarray, targets: dict[str, Tensor], count: int) -> np.ndarray:
    """Show the first ``count`` frames in grey levels and leave out their colour targets (-1: ignored)."""
    if count <= 0:
        return images
    images = images.copy()
    luma = np.rint(images[:count].astype(np.float32) @ _LUMA).clip(0, 255).astype(np.uint8)
    images[:count] = luma[..., None]
    for name in ("colour", "patch_colour", "background", "colours_present"):
        if name in targets:
            targets[name] = targets[name].clone()  # may share memory with the caller's labels
            targets[name][:count] = -1
    return images


def code_separation_loss(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    """The adversaries' loss plus the tower's: keep colour out of the form code and shape out of the colour code.

    On occupied cells only (an empty cell's "no object" is rightly in both codes), and not on grey frames' colours
    (their targets are -1). Each adversary learns to name the object's class from the other code (cross-entropy,
    on detached features); the tower is trained to make the frozen adversary's answer uniform over the classes
    (cross-entropy against the uniform distribution, minus its floor ``log K`` so that 0 means "no idea").
    """
    total = logits["shape"].new_zeros(())
    for name in ("colour", "shape"):
        target = targets[name].flatten()
        keep = target > 0
        if not bool(keep.any()):
            continue
        adversary = logits[f"adv_{name}"].flatten(0, -2)[keep]
        confused = logits[f"confuse_{name}"].flatten(0, -2)[keep]
        floor = math.log(confused.shape[-1])
        total = total + F.cross_entropy(adversary, target[keep] - 1)
        total = total + (-F.log_softmax(confused, dim=-1).mean(-1)).mean() - floor
    return total


def with_grey_twins(
    images: np.ndarray, targets: dict[str, Tensor], count: int
) -> tuple[np.ndarray, dict[str, Tensor]]:
    """Append grey copies of the last ``count`` frames (colour targets left out) after the whole batch."""
    twin_targets = {name: value[-count:] for name, value in targets.items()}
    twins = to_grey(images[-count:], twin_targets, count)
    merged = {name: torch.cat([value, twin_targets[name]]) for name, value in targets.items()}
    return np.concatenate([images, twins]), merged


def grey_pair_loss(form: Tensor, count: int) -> Tensor:
    """Mean ``1 - cosine`` between the form code of each patch of the last ``count`` colour frames and its twin's.

    ``form`` is ``(B + count, N, C)``: the batch, then the grey twins of its last ``count`` frames.
    """
    batch = form.shape[0] - count
    return (1 - F.cosine_similarity(form[batch - count : batch], form[batch:], dim=-1)).mean()


def stage0_loss(
    logits: dict[str, Tensor], targets: dict[str, Tensor], weights: dict[str, float] | None = None
) -> Tensor:
    """Sum of the heads' losses, each times its entry in ``weights`` (default 1); a target of -1 (a grey frame's
    colours, :func:`to_grey`) is left out."""
    total = logits["shape"].new_zeros(())
    for name, value in logits.items():
        if name.startswith(("adv_", "confuse_")):
            continue  # code_separation_loss
        weight = (weights or {}).get(name, 1.0)
        loss = _head_loss(name, value, targets[name])
        # A weight of 1 is not multiplied in, so the committed towers' loss stays bit for bit.
        total = total + (loss if weight == 1.0 else weight * loss)
    return total


def _head_loss(name: str, value: Tensor, target: Tensor) -> Tensor:
    # Masked only when a target is left out: the plain mean below keeps the committed towers' loss bit for bit
    # (a weighted sum divided by the count rounds differently).
    if name in _MULTI_LABEL and bool((target < 0).any()):
        weight = (target >= 0).to(value.dtype)
        loss = F.binary_cross_entropy_with_logits(value, target.clamp_min(0), weight, reduction="sum")
        return loss / weight.sum().clamp_min(1.0)
    if name in _MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(value, target)
    return F.cross_entropy(value.flatten(0, -2), target.flatten(), ignore_index=-1)


@torch.no_grad()
def evaluate_tower(
    tower: LlamaVidVisionTower, heads: Stage0Heads, frames: int, grid: int, size: int, seed: int = 0
) -> dict[str, float]:
    """Per-attribute accuracy on held-out frames (held-out split: new seeds *and* held-out shape/colour pairs).

    Cell accuracies are reported over all cells and over occupied cells only (most cells are empty, so the
    all-cell number alone flatters the probe).
    """
    tower.eval()
    heads.eval()
    hits: dict[str, float] = {}
    counts: dict[str, float] = {}

    def add(name: str, correct: Tensor, mask: Tensor | None = None) -> None:
        if mask is not None:
            correct = correct[mask]
        hits[name] = hits.get(name, 0.0) + float(correct.float().sum())
        counts[name] = counts.get(name, 0.0) + float(correct.numel())

    for start in range(0, frames, 250):
        images, labels = pretraining_batch("heldout", seed, start, min(250, frames - start), size, grid)
        features = tower(normalise(images))
        targets = batch_targets(labels, features.shape[1] - 1 if heads.patch_targets else None)
        logits = heads(features)
        occupied = targets["shape"] > 0
        for name in ("shape", "colour", "size"):
            correct = logits[name].argmax(-1) == targets[name]
            add(f"cell_{name}", correct)
            add(f"object_{name}", correct, occupied)
        add(
            "cell_all3_object",
            (
                (logits["shape"].argmax(-1) == targets["shape"])
                & (logits["colour"].argmax(-1) == targets["colour"])
                & (logits["size"].argmax(-1) == targets["size"])
            ),
            occupied,
        )
        add("background", logits["background"].argmax(-1) == targets["background"])
        add("word_mean", logits["word"].argmax(-1) == targets["word"])
        add("word_row", logits["row_word"].argmax(-1) == targets["word"])
        has_word = targets["word"] < len(WORDS)
        add("word_row_present", logits["row_word"].argmax(-1) == targets["word"], has_word)
        for name in _MULTI_LABEL:
            add(f"mean_{name}_exact", ((logits[name] > 0) == (targets[name] > 0.5)).all(-1))
        if heads.patch_targets:
            on_object = targets["patch_shape"] > 0
            for name in ("patch_cell", "patch_shape", "patch_colour"):
                add(f"{name}_object", logits[name].argmax(-1) == targets[name], on_object)
    tower.train()
    heads.train()
    return {name: hits[name] / max(counts[name], 1.0) for name in hits}


def save_tower(tower: LlamaVidVisionTower, settings: Stage0Settings, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tower.state_dict().items()}, out_dir / TOWER_WEIGHTS)
    (out_dir / TOWER_CONFIG).write_text(json.dumps(asdict(settings), indent=2) + "\n")


def load_tower(out_dir: str | Path) -> tuple[LlamaVidVisionTower, Stage0Settings]:
    """The frozen stage-0 tower (eval mode, no grad) and the settings it was trained with."""
    out_dir = Path(out_dir)
    settings = Stage0Settings(**json.loads((out_dir / TOWER_CONFIG).read_text()))
    tower = LlamaVidVisionTower(tiny_vision_config(settings))
    tower.load_state_dict(load_file(out_dir / TOWER_WEIGHTS))
    tower.eval().requires_grad_(False)
    return tower, settings


def train_stage0(settings: Stage0Settings, out_dir: str | Path) -> dict[str, Any]:
    """Train, evaluate on held-out frames, save ``vision_tower.safetensors`` + metrics; resumable by skipping.

    If ``out_dir`` already holds metrics for these settings the run is skipped (``make tiny-model`` reruns).
    """
    out_dir = Path(out_dir)
    metrics_path = out_dir / METRICS
    if metrics_path.is_file() and (out_dir / TOWER_WEIGHTS).is_file():
        saved = json.loads(metrics_path.read_text())
        # A setting added later (with a default that changes nothing) is absent from older metrics. The thread
        # count changes only the order of float sums, not the recipe: a tower trained with another is reused.
        recipe = {**asdict(Stage0Settings()), **saved.get("settings", {}), "threads": settings.threads}
        if recipe == asdict(settings):
            logger.info("stage 0 already done in %s; skipping", out_dir)
            return saved
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    tower = LlamaVidVisionTower(tiny_vision_config(settings))
    for module in tower.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(tower.embeddings.position_embedding, std=0.02)
    nn.init.trunc_normal_(tower.embeddings.class_embedding, std=0.02)
    heads = Stage0Heads(
        settings.hidden_size,
        settings.grid,
        settings.patch_targets,
        settings.colour_channels,
        settings.adversary,
    )
    twins = settings.batch_size // 2 if settings.grey_pairs > 0 else 0
    weights = {"occupancy": settings.occupancy_weight, "shapes_present": settings.shapes_present_weight}
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    def lr_at(step: int) -> float:
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    curve: list[dict[str, float]] = []
    started = time.time()
    for step in range(settings.steps):
        images, labels = pretraining_batch(
            "train",
            settings.seed,
            step * settings.batch_size,
            settings.batch_size,
            settings.image_size,
            settings.grid,
        )
        num_patches = (settings.image_size // settings.patch_size) ** 2 if settings.patch_targets else None
        targets = batch_targets(labels, num_patches)
        images = to_grey(images, targets, round(settings.grey_share * settings.batch_size))
        if twins:
            images, targets = with_grey_twins(images, targets, twins)
        features = tower(normalise(images))
        logits = heads(features)
        loss = stage0_loss(logits, targets, weights)
        if settings.adversary > 0:
            loss = loss + settings.adversary * code_separation_loss(logits, targets)
        if twins:
            loss = loss + settings.grey_pairs * grey_pair_loss(heads.split(features[:, 1:])[0], twins)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == settings.steps - 1:
            logger.info("stage0 step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - started)
            curve.append({"step": step, "loss": float(loss.detach()), "seconds": time.time() - started})
    train_seconds = time.time() - started
    held = evaluate_tower(tower, heads, settings.eval_frames, settings.grid, settings.image_size)
    logger.info("stage0 held-out: %s", json.dumps({k: round(v, 4) for k, v in held.items()}))
    save_tower(tower, settings, out_dir)
    result = {
        "settings": asdict(settings),
        "train_seconds": train_seconds,
        "frames_seen": settings.steps * settings.batch_size,
        "heldout": held,
        "curve": curve,
        "tower_parameters": sum(p.numel() for p in tower.parameters()),
    }
    metrics_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    for name, value in asdict(Stage0Settings()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out_dir = args.pop("out_dir")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train_stage0(Stage0Settings(**args), out_dir)


if __name__ == "__main__":
    main()
