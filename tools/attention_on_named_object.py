"""Where an image question's context attention goes, and what the answer probe reads there.

For the dev image questions that name one object (shape, colour, size and position questions;
:func:`llamavid.train.losses.named_object_cell`), split by whether the object is a (shape, colour) pair the train
split never renders, this prints:

* ``mass``: the share of the context attention (averaged over the text queries) on the named object's grid cell;
* ``probe``: the training-only answer probe (a run's ``final/auxiliary_heads.safetensors``) on the model's own
  context token;
* ``oracle``: the same probe on the context token the model would make if its attention were spread evenly over
  the named object's cell (the value projection of that cell's mean patch).

A gap between ``probe`` and ``oracle`` on held-out pairs is what the attention costs; a gap between ``oracle`` and
the seen pairs is what the features and the probe cost (docs/tiny-model.md, "After v5.5"). Needs a run folder
(with the probe); the exported model has no probe, so only ``mass`` is printed for it.

    python tools/attention_on_named_object.py build/tiny-model/runs/fresh/final --items 2100 --seed 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch


@torch.no_grad()
def measure(model_dir: Path, items_per_set: int, seed: int, batch_size: int = 32) -> dict[str, Any]:
    """``{type: {"seen" | "heldout": {"count", "mass", "probe", "oracle"}}}`` on ``items_per_set`` dev images."""
    from safetensors.torch import load_file

    from llamavid.cli.eval_synth import check_seed
    from llamavid.data.feature_cache import FeatureCache, module_sha256
    from llamavid.inference.loading import load_model
    from llamavid.model.modeling_llamavid import VISUAL_INPUT_NAMES
    from llamavid.synth import generate_items
    from llamavid.train.losses import AuxiliaryHeads, answer_index, named_object_cell
    from llamavid.train.stage0_vision import patch_cell_index
    from llamavid.train.tiny import make_batch
    from llamavid.train.tiny_phase import cached_features

    check_seed(seed, sealed=False)
    loaded = load_model(model_dir, device="cpu", dtype="float32")
    model, processor = loaded.model.eval(), loaded.processor
    items = [
        item
        for item in generate_items("heldout", items_per_set, seed=seed, kind="image_qa", phrasing="varied")
        if named_object_cell(item) is not None
    ]
    tower = model.model.vision_tower
    size = model.config.vision_config.image_size
    with tempfile.TemporaryDirectory() as cache_dir:
        features = cached_features(FeatureCache(cache_dir), items, tower, size, module_sha256(tower))
    heads_file = model_dir / "auxiliary_heads.safetensors"
    heads = None
    if heads_file.exists():
        heads = AuxiliaryHeads(model.config.text_config.hidden_size)
        heads.load_state_dict(load_file(heads_file))
    patches, _ = model.model.split_vision_features(features["features"].float(), False)
    cells = patch_cell_index(patches.shape[1], 4)
    rows: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for start in range(0, len(items), batch_size):
        index = list(range(start, min(start + batch_size, len(items))))
        batch = make_batch(items, features, index, processor, train=False)
        inputs = {key: batch[key] for key in VISUAL_INPUT_NAMES if key in batch}
        visual = model.model.get_visual_tokens(**inputs, from_pixels=False, output_attentions=True)
        attention = visual.attention_weights.float().mean(1)  # (B, N)
        for row, i in enumerate(index):
            item, cell = items[i], named_object_cell(items[i])
            bucket = rows[(item.question_type, "heldout" if item.meta["heldout_combo"] else "seen")]
            bucket["mass"].append(float(attention[row][cells == cell].sum()))
            if heads is None:
                continue
            kind, answer = answer_index(item)
            own = heads.answer_logits(visual.context_tokens[row : row + 1].float(), torch.tensor([kind]))
            patch_rows = patches[int(features["offsets"][i])][cells == cell]
            oracle_token = model.model.vlm_att_val_projector(patch_rows.mean(0, keepdim=True))
            oracle = heads.answer_logits(oracle_token, torch.tensor([kind]))
            bucket["probe"].append(float(own.argmax(-1).item() == answer))
            bucket["oracle"].append(float(oracle.argmax(-1).item() == answer))
    table: dict[str, Any] = defaultdict(dict)
    for (kind, split), values in sorted(rows.items()):
        table[kind][split] = {"count": len(values["mass"])} | {
            name: sum(v) / len(v) for name, v in values.items() if v
        }
    return dict(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a run's final/ folder (with auxiliary_heads.safetensors)")
    parser.add_argument(
        "--items", type=int, default=2100, help="dev image questions generated (types rotate)"
    )
    parser.add_argument("--seed", type=int, default=2, help="dev seed (sealed test seeds are refused)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = measure(args.model, args.items, args.seed)
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    print("| type | pairs | n | attention on the object's cell | probe | probe, attention on the cell |")
    print("|---|---|---|---|---|---|")
    for kind, splits in table.items():
        for split, row in splits.items():
            cells = [f"{row[name]:.3f}" if name in row else "-" for name in ("mass", "probe", "oracle")]
            print(f"| {kind} | {split} | {row['count']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
