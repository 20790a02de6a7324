"""Tiny run configs and datasets for the training tests (imported as `train_helpers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny_helpers import tiny_config_kwargs

from llamavid.train.schema import RunConfig, load_config


def tiny_run_config(output_dir: Path, train_files: list[str], stage: int = 2, **sections: dict[str, Any]) -> RunConfig:
    """A random tiny model, fp32, no checkpointing, batch 2; `sections` update the YAML-level sections."""
    values: dict[str, Any] = {
        "model": {"init": "random", "tokenizer": "demo", "seed": 0, "random_init": tiny_config_kwargs()},
        "data": {"train_files": train_files, "model_max_length": 512, "max_frames": 4},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "train": {
            "stage": stage,
            "per_device_batch_size": 2,
            "grad_accum_steps": 1,
            "max_steps": 3,
            "precision": "fp32",
            "gradient_checkpointing": False,
            "output_dir": str(output_dir),
            "save_steps": 0,
            "progress_bar": False,
        },
    }
    for name, update in sections.items():
        values.setdefault(name, {}).update(update)
    return load_config(values)


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(records))
    return path


def fixed_records(image_rel: str) -> list[dict[str, Any]]:
    """Repeated multi-turn image records: a model can memorise them in a few steps (loss must fall)."""
    conv = [
        {"from": "human", "value": "What colour is the square?\n<image>"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Where is it?"},
        {"from": "gpt", "value": "top left"},
    ]
    return [{"id": f"r{i}", "image": image_rel, "conversations": conv} for i in range(4)]
