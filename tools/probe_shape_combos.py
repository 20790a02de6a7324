"""Linear probes on a model's frozen vision features: is shape readable on held-out (shape, colour) pairs?

Frames come from ``llamavid.synth.pretraining_batch`` (train split to fit, held-out split to score). Each occupied
grid cell's feature is the average of its patches (the same pooling as ``image_compress_type="grid:G"``). Three
linear probes are fitted on train-split cells and scored separately on seen and on held-out pairs: shape, colour,
and shape again after projecting the colour subspace (the per-colour mean directions) out of the features. A
large gap that closes once colour is removed means the features carry shape, and a reader fitted on the train
split leans on the "this colour never has that shape" prior (docs/tiny-model.md, "Against the targets").

``--tower DIR`` probes a stage-0 tower folder (``vision_tower.safetensors``, before any LLM phase) instead of a
model; with a split tower (``colour_channels`` > 0) the probes are also fitted on its form code alone.

``--mean-token`` probes the mean of all patches instead (a video frame's content token, ``mean`` pooling): which of
the grid's cells are occupied and which shapes are present, each a multi-label linear probe scored by exact match
over the whole frame (docs/tiny-model.md, "v5.8 on the dev seed": an adversary can keep where objects are and
still lose which shapes they are).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
from llamavid.model.modeling_llamavid import LlamaVidContentPooling
from llamavid.serve.defaults import EMBEDDED_MODEL_DIR
from llamavid.synth import pretraining_batch
from llamavid.synth.world import COLOURS, HELDOUT_PAIRS, SHAPES
from llamavid.train.stage0_vision import batch_targets, load_tower, normalise

# uint8 frames (B, H, W, 3) -> patch features (B, N, C), without the CLS token
PatchFeatures = Callable[[np.ndarray], Tensor]


def model_patches(model: LlamaVidForConditionalGeneration, processor: LlamaVidProcessor) -> PatchFeatures:
    """Patch features of a llamavid model's vision tower, through its own image processor."""

    def patches(images: np.ndarray) -> Tensor:
        features = model.model.get_vision_features(processor.image_processor(images, is_video=True))
        return model.model.split_vision_features(features, from_pixels=True)[0].float()

    return patches


def tower_patches(tower_dir: Path) -> tuple[PatchFeatures, int, int]:
    """``(patch features, image size, colour channels)`` of a stage-0 tower folder."""
    tower, settings = load_tower(tower_dir)
    return lambda images: tower(normalise(images))[:, 1:], settings.image_size, settings.colour_channels


@torch.no_grad()
def cell_features(
    patches_of: PatchFeatures, size: int, split: str, frames: int, grid: int, chunk: int = 250
) -> tuple[Tensor, Tensor, Tensor]:
    """``(features (M, C), shape (M,), colour (M,))`` of every occupied cell of ``frames`` synthetic frames."""
    pooling = LlamaVidContentPooling()
    features, shapes, colours = [], [], []
    for start in range(0, frames, chunk):
        images, labels = pretraining_batch(split, 0, start, min(chunk, frames - start), size, grid)
        cells = pooling(patches_of(images), f"grid:{grid}").flatten(
            0, 1
        )  # row-major cells, as content tokens
        shape = torch.from_numpy(labels["shape"]).reshape(-1)
        colour = torch.from_numpy(labels["colour"]).reshape(-1)
        occupied = shape > 0
        features.append(cells[occupied])
        shapes.append(shape[occupied] - 1)
        colours.append(colour[occupied] - 1)
    return torch.cat(features), torch.cat(shapes), torch.cat(colours)


def fit_probe(
    features: Tensor, targets: Tensor, classes: int, steps: int, seed: int = 0, multi_label: bool = False
) -> torch.nn.Linear:
    """A linear probe fitted full-batch with Adam: one class per row, or (``multi_label``) a 0/1 row per target."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    criterion = F.binary_cross_entropy_with_logits if multi_label else F.cross_entropy
    for _ in range(steps):
        loss = criterion(probe(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Both feature sets scaled by the train set's per-channel mean and spread."""
    mean, std = train.mean(0), train.std(0) + 1e-5
    return (train - mean) / std, (test - mean) / std


def probe_combos(
    patches_of: PatchFeatures,
    size: int,
    train_frames: int = 3000,
    heldout_frames: int = 2000,
    steps: int = 600,
    grid: int = 4,
    colour_channels: int = 0,
) -> dict[str, dict[str, float]]:
    """Accuracy of each probe on seen and on held-out (shape, colour) pairs of held-out frames.

    With ``colour_channels`` > 0 (a split stage-0 tower), ``shape_form_code`` is the shape probe on the form code
    alone (every channel but the last ``colour_channels``).
    """
    train_x, train_shape, train_colour = cell_features(patches_of, size, "train", train_frames, grid)
    test_x, test_shape, test_colour = cell_features(patches_of, size, "heldout", heldout_frames, grid)
    train_x, test_x = standardise(train_x, test_x)
    pairs = zip(test_shape.tolist(), test_colour.tolist(), strict=True)
    held = torch.tensor([(SHAPES[s], COLOURS[c]) in HELDOUT_PAIRS for s, c in pairs])
    # The colour subspace: least-squares per-colour mean directions, orthonormalised.
    directions = torch.linalg.lstsq(F.one_hot(train_colour, len(COLOURS)).float(), train_x).solution
    basis, _ = torch.linalg.qr(directions.T)

    def without_colour(x: Tensor) -> Tensor:
        return x - (x @ basis) @ basis.T

    probes = [
        ("shape", train_x, test_x, train_shape, test_shape, len(SHAPES)),
        ("colour", train_x, test_x, train_colour, test_colour, len(COLOURS)),
        (
            "shape_without_colour",
            without_colour(train_x),
            without_colour(test_x),
            train_shape,
            test_shape,
            len(SHAPES),
        ),
    ]
    if colour_channels:
        form = slice(0, train_x.shape[1] - colour_channels)
        probes.append(
            ("shape_form_code", train_x[:, form], test_x[:, form], train_shape, test_shape, len(SHAPES))
        )
    results = {}
    for name, fit_x, test_input, fit_y, test_y, classes in probes:
        probe = fit_probe(fit_x, fit_y, classes, steps)
        with torch.no_grad():
            correct = probe(test_input).argmax(-1) == test_y
        results[name] = {
            "seen_pairs": float(correct[~held].float().mean()),
            "heldout_pairs": float(correct[held].float().mean()) if held.any() else float("nan"),
        }
    results["counts"] = {
        "train_cells": len(train_x),
        "heldout_cells": len(test_x),
        "heldout_pair_cells": int(held.sum()),
    }
    return results


@torch.no_grad()
def mean_token_features(
    patches_of: PatchFeatures, size: int, split: str, frames: int, grid: int, chunk: int = 250
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean token (F, C), occupied cells (F, G*G), shapes present (F, len(SHAPES)))`` of synthetic frames: the
    targets the stage-0 mean-token heads train on (:func:`~llamavid.train.stage0_vision.batch_targets`)."""
    features, occupied, present = [], [], []
    for start in range(0, frames, chunk):
        images, labels = pretraining_batch(split, 0, start, min(chunk, frames - start), size, grid)
        targets = batch_targets(labels)
        features.append(patches_of(images).mean(dim=1))
        occupied.append(targets["occupancy"])
        present.append(targets["shapes_present"])
    return torch.cat(features), torch.cat(occupied), torch.cat(present)


def mean_token_probes(
    patches_of: PatchFeatures,
    size: int,
    train_frames: int = 3000,
    heldout_frames: int = 2000,
    steps: int = 600,
    grid: int = 4,
) -> dict[str, float]:
    """Exact-match accuracy on held-out frames of linear multi-label probes on the mean token."""
    train_x, train_occupied, train_present = mean_token_features(
        patches_of, size, "train", train_frames, grid
    )
    test_x, test_occupied, test_present = mean_token_features(
        patches_of, size, "heldout", heldout_frames, grid
    )
    train_x, test_x = standardise(train_x, test_x)
    results = {}
    for name, fit_y, test_y in (
        ("occupancy_exact", train_occupied, test_occupied),
        ("shapes_present_exact", train_present, test_present),
    ):
        probe = fit_probe(train_x, fit_y, fit_y.shape[1], steps, multi_label=True)
        with torch.no_grad():
            results[name] = float(((probe(test_x) > 0) == (test_y > 0.5)).all(-1).float().mean())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=EMBEDDED_MODEL_DIR, help="llamavid model folder (default: tiny)"
    )
    parser.add_argument(
        "--train-frames", type=int, default=3000, help="train-split frames to fit the probes on"
    )
    parser.add_argument("--heldout-frames", type=int, default=2000, help="held-out-split frames to score on")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per probe (full batch)")
    parser.add_argument(
        "--tower", type=Path, default=None, help="probe a stage-0 tower folder instead of a model (see above)"
    )
    parser.add_argument(
        "--mean-token",
        action="store_true",
        help="probe the mean token's layout and shapes instead (see above)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tower is not None:
        patches_of, size, colour_channels = tower_patches(args.tower)
    else:
        model = LlamaVidForConditionalGeneration.from_pretrained(str(args.model), dtype=torch.float32).eval()
        patches_of = model_patches(model, LlamaVidProcessor.from_pretrained(args.model))
        size, colour_channels = model.config.vision_config.image_size, 0
    if args.mean_token:
        results = mean_token_probes(patches_of, size, args.train_frames, args.heldout_frames, args.steps)
    else:
        results = probe_combos(
            patches_of,
            size,
            args.train_frames,
            args.heldout_frames,
            args.steps,
            colour_channels=colour_channels,
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
