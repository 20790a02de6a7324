"""One tiny-model training step (forward + backward) as `llamavid train` runs it, against the step before the
shared Q-Former path and the causal LLM mask were used in training, with the committed tiny model on the CPU.

Two workloads from the v5 curriculum's training data (train split, seed 0, `phrasing="varied"`):

* ``clips``: 32 clips of 5-60 frames in 1-3-turn conversations (a `videos` / `mix` / `clips` batch);
* ``episodes``: 2 long-video episodes of 1,200 frames with subtitles (a `long1200` / `long1200b` batch).

Frame features come from the model's own vision tower once, outside the timing (training reads them from the
feature cache); batches are built by `llamavid.train.tiny.make_batch`, exactly what the phases feed the model.
The baseline runs the Q-Former per (frame, question) pair through its layers' own forward
(`pairwise_context_tokens`) and the LLM once on the whole batch with its padding mask; the current step (what
`TinyLoss` runs) shares each item's question work across its frames (`get_context_tokens`) and runs the LLM once
per group of rows of similar length (`logits_by_length`), without the padding mask, so SDPA takes its causal
kernel and short rows are not padded to the longest. The report gives the median of ``--repeats``
steps, the ratio baseline / current, and the largest differences of the loss and of any gradient.

Usage: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_step.py [--repeats 5] [--json out.json]``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from timing import median_seconds, parse_arguments

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSET = REPO_ROOT / "src" / "llamavid" / "assets" / "tiny-llamavid"


def _batch(model: Any, processor: Any, items: list[Any]) -> dict[str, torch.Tensor]:
    from llamavid.train.tiny import encode_frames, item_frames, make_batch

    size = model.config.vision_config.image_size
    features, offsets, counts = [], [], []
    start = 0
    for item in items:
        frames = item_frames(item, size)
        encoded = encode_frames(model.model.vision_tower, frames)
        features.append(encoded)
        offsets.append(start)
        counts.append(len(encoded))
        start += len(encoded)
    cache = {
        "features": torch.cat(features),
        "offsets": torch.tensor(offsets),
        "counts": torch.tensor(counts),
    }
    return make_batch(items, cache, range(len(items)), processor)


def _step(
    model: Any, batch: dict[str, torch.Tensor], baseline: bool
) -> tuple[float, dict[str, torch.Tensor]]:
    from llamavid.train.tiny_phase import logits_by_length

    core = model.model
    model.zero_grad(set_to_none=True)
    if baseline:  # one padded call with its mask, the Q-Former per (frame, question) pair
        core.get_context_tokens = core.pairwise_context_tokens
        try:
            loss = model(**batch).loss
        finally:
            core.__dict__.pop("get_context_tokens", None)
    else:  # what TinyLoss runs: shared Q-Former work, the LLM per length group without a padding mask
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        loss = model.lm_loss(logits_by_length(model, inputs, batch["labels"])[0], batch["labels"])
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])

    from llamavid.inference.loading import load_model
    from llamavid.synth import generate_items

    loaded = load_model(ASSET, device="cpu", dtype="float32")
    model, processor = loaded.model, loaded.processor
    if model.model._qformer_dropout():
        raise SystemExit("the benchmark needs a Q-Former without dropout (the tiny model has none)")
    model.train()
    clips = generate_items(
        "train", 32, seed=0, kind="video_qa", phrasing="varied", clip_frames=(5, 60), turns=(1, 3)
    )
    episodes = generate_items(
        "train", 2, seed=0, kind="long_qa", episode_frames=1200, phrasing="varied", balanced_needles=True
    )
    workloads = {"clips": clips, "episodes": episodes}
    report: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats}
    for name, items in workloads.items():
        batch = _batch(model, processor, items)
        padded = batch["attention_mask"].numel()
        before, (loss_before, grads_before) = median_seconds(
            lambda b=batch: _step(model, b, True), args.repeats
        )
        after, (loss_after, grads_after) = median_seconds(
            lambda b=batch: _step(model, b, False), args.repeats
        )
        grad_diff = max(float((grads_after[k] - g).abs().max()) for k, g in grads_before.items())
        grad_scale = max(float(g.abs().max()) for g in grads_before.values())
        report[name] = {
            "items": len(items),
            "frames": int(batch["frame_counts"].sum()),
            "llm_tokens": list(batch["input_ids"].shape),
            "real_token_share": round(int(batch["attention_mask"].sum()) / padded, 3),
            "baseline_s": round(before, 3),
            "current_s": round(after, 3),
            "ratio": round(before / after, 2),
            "loss_diff": abs(loss_after - loss_before),
            "max_grad_diff": grad_diff,
            "max_grad": grad_scale,
            "same_gradients": grads_before.keys() == grads_after.keys(),
        }
        row = report[name]
        print(
            f"{name:9s} {row['items']:3d} items, {row['frames']:5d} frames, LLM {row['llm_tokens']} "
            f"({row['real_token_share']:.0%} real): baseline {before:.3f} s, current {after:.3f} s, "
            f"{row['ratio']:.2f}x; |loss diff| {row['loss_diff']:.1e}, max |grad diff| {grad_diff:.1e} "
            f"(max |grad| {grad_scale:.1e})"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
