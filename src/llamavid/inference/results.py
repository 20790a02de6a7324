"""What an answer returns: the text with its token counts (`Answer`) and where the context tokens looked
(`AttentionResult`, drawable as a relevance strip)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

THUMBNAIL_SIDE = 96

__all__ = ["THUMBNAIL_SIDE", "Answer", "AttentionResult"]


@dataclass
class Answer:
    """A generated answer and what it cost.

    Attributes:
        text: the answer, stripped, stopped at EOS or the template's stop string.
        finish_reason: ``"stop"`` (EOS), ``"length"`` (hit max_new_tokens) or ``"cancelled"``.
        prompt_tokens: prompt length including visual tokens.
        visual_tokens: how many of those are visual (2 per video frame for the released configs).
        completion_tokens: generated tokens (EOS included when produced).
        frames: frames of the media the question was about (0 for text-only).
        seconds: wall time of the generate call this answer was part of.
        question: the question as the model read it.
        token_ids: the generated ids (EOS included when produced), for exact comparisons.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    visual_tokens: int
    completion_tokens: int
    frames: int
    seconds: float
    question: str = ""
    token_ids: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "question": self.question,
            "finish_reason": self.finish_reason,
            "frames": self.frames,
            "visual_tokens": self.visual_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class AttentionResult:
    """Where the context tokens looked, for one question about one media item.

    Attributes:
        question: the instruction the Q-Former read.
        timestamps: ``(T,)`` frame times in seconds.
        relevance: ``(T,)`` softmax over frames of the frame scores (our definition, see
            `LlamaVidModel.frame_relevance`); sums to 1.
        weights: ``(T, Q, N)`` softmax of each query over the frame's patches.
        thumbnails: ``(T, h, w, 3)`` uint8 frames the strip is drawn from.
    """

    question: str
    timestamps: np.ndarray
    relevance: np.ndarray
    weights: np.ndarray
    thumbnails: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "timestamps": [round(float(t), 3) for t in self.timestamps],
            "relevance": [round(float(r), 6) for r in self.relevance],
            "most_relevant_frame": int(np.argmax(self.relevance)),
        }

    def strip(self, tile: int = THUMBNAIL_SIDE, per_row: int = 16) -> Any:
        """A PIL image: one tile per frame (patch attention as a red overlay), relevance bars underneath.

        Drawn with PIL only so the serving extra needs no plotting library.
        """
        from PIL import Image, ImageDraw

        frames = len(self.relevance)
        columns = min(frames, per_row)
        rows = math.ceil(frames / columns)
        bar, label = 12, 12
        cell_h = tile + bar + label
        canvas = Image.new("RGB", (columns * tile, rows * cell_h), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        peak = float(self.relevance.max()) or 1.0
        patch_side = math.isqrt(self.weights.shape[-1])
        for index in range(frames):
            x, y = (index % columns) * tile, (index // columns) * cell_h
            picture = Image.fromarray(self.thumbnails[index]).convert("RGB").resize((tile, tile))
            if patch_side * patch_side == self.weights.shape[-1]:
                heat = self.weights[index].mean(axis=0).reshape(patch_side, patch_side)  # (s, s)
                # Contrast within the frame: uniform attention draws no overlay rather than a solid red tile.
                spread = float(heat.max() - heat.min())
                heat = (heat - heat.min()) / spread if spread > 1e-12 else np.zeros_like(heat)
                alpha = Image.fromarray((heat * 140).astype(np.uint8)).resize(
                    (tile, tile), Image.Resampling.BILINEAR
                )
                picture = Image.composite(Image.new("RGB", (tile, tile), (255, 0, 0)), picture, alpha)
            canvas.paste(picture, (x, y))
            width = max(1, int(round((tile - 2) * float(self.relevance[index]) / peak)))
            draw.rectangle([x + 1, y + tile + 2, x + width, y + tile + bar - 2], fill=(30, 90, 200))
            draw.text(
                (x + 2, y + tile + bar), f"{self.timestamps[index]:.0f}s {self.relevance[index]:.0%}", fill=0
            )
        return canvas

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the strip as an image (format from the suffix, e.g. ``.png``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.strip().save(path)
        return path
