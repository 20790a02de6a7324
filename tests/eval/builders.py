"""Tiny benchmark folders in each benchmark's published format, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int = 0, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_frame_folder(path: Path, frames: int = 2, seed: int = 0) -> Path:
    """A video as a folder of frames (decoded at 1 fps by ``load_media``): the cheapest valid video."""
    for index in range(frames):
        write_image(path / f"{index:04d}.png", seed + index)
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def msvd_dataset(root: Path, answers: list[str], missing_video: int | None = None) -> Path:
    """LLaMA-VID's ``test_qa.json`` layout with one frame-folder video per question."""
    rows = []
    for index, answer in enumerate(answers):
        name = f"vid{index}"
        if index != missing_video:
            write_frame_folder(root / "videos" / name, seed=index)
        rows.append(
            {
                "video_id": name,
                "question": f"what is shown in clip {index}?",
                "id": f"q{index}",
                "answer": answer,
            }
        )
    write_json(root / "test_qa.json", rows)
    return root
