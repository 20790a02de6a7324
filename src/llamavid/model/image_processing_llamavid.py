"""Frame preprocessing matching the official CLIP pipeline: PIL bicubic, centre crop, CLIP mean/std.

The official code runs transformers' slow `CLIPImageProcessor`; transformers 5 defaults to a torchvision path
whose bicubic filter differs slightly, so we implement the PIL path here and pin it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from llamavid.errors import InvalidInputError, MissingFileError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "preprocessor_config.json"


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad to a square canvas with the image centred (LLaVA's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def to_pil_rgb(image: Any) -> Image.Image:
    """Accept a PIL image or an ``(H, W)`` / ``(H, W, 3|4)`` uint8 array and return an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InvalidInputError(f"image arrays must be uint8 (0-255), got dtype {array.dtype}.")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return Image.fromarray(array).convert("RGB")
    raise InvalidInputError(f"an image must be (H, W) or (H, W, 3) uint8, got shape {array.shape}.")


class LlamaVidImageProcessor:
    """Resize the shortest edge to `size` (PIL bicubic), centre-crop `crop_size`, scale to [0, 1], normalise.

    Args:
        size: target shortest edge (224 or 336 for the released checkpoints).
        crop_size: square crop side; equals `size` in every release.
        image_aspect_ratio: ``"pad"`` pads still images to a square with the mean colour first (released
            configs); ``"square"`` resizes and crops directly (stage 1). Video frames are never padded.
        image_mean / image_std: per-channel normalisation (CLIP's).
    """

    def __init__(
        self,
        size: int = 224,
        crop_size: int | None = None,
        image_aspect_ratio: str = "pad",
        image_mean: tuple[float, ...] = CLIP_MEAN,
        image_std: tuple[float, ...] = CLIP_STD,
        rescale_factor: float = 1 / 255,
    ) -> None:
        if image_aspect_ratio not in ("pad", "square"):
            raise InvalidInputError(
                f"image_aspect_ratio must be 'pad' or 'square', got {image_aspect_ratio!r}."
            )
        self.size = int(size)
        self.crop_size = int(crop_size or size)
        self.image_aspect_ratio = image_aspect_ratio
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.rescale_factor = float(rescale_factor)

    @property
    def background(self) -> tuple[int, int, int]:
        """Padding colour: the mean in 0-255 (122, 116, 104 for CLIP)."""
        return tuple(int(value * 255) for value in self.image_mean)  # type: ignore[return-value]

    def _resize_and_crop(self, image: Image.Image) -> np.ndarray:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        # Same rounding as transformers' `get_resize_output_image_size(default_to_square=False)`.
        new_short, new_long = self.size, int(self.size * long / short)
        new_size = (new_short, new_long) if width <= height else (new_long, new_short)
        if new_size != (width, height):
            image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
        array = np.asarray(image)
        top = (array.shape[0] - self.crop_size) // 2
        left = (array.shape[1] - self.crop_size) // 2
        if top < 0 or left < 0:
            raise InvalidInputError(
                f"crop_size {self.crop_size} is larger than the resized frame {array.shape[:2]}."
            )
        return array[top : top + self.crop_size, left : left + self.crop_size]

    def preprocess(self, images: Any, is_video: bool = False) -> torch.Tensor:
        """Turn frames into normalised pixels ``(T, 3, crop, crop)`` float32.

        Args:
            images: one image (PIL or HWC uint8), a list of them, or a ``(T, H, W, 3)`` uint8 array of frames.
            is_video: frames of a video are never padded; still images follow `image_aspect_ratio`.
        """
        expected = (self.size, self.size, 3)
        if (
            isinstance(images, np.ndarray)
            and images.ndim == 4
            and len(images)
            and images.dtype == np.uint8
            and images.shape[1:] == expected
            and self.crop_size == self.size
        ):
            # Frames already square at the output size (decoded at it, or rendered): the per-frame path would
            # neither pad (square), resize (same size) nor crop, so only the scaling is left. Same pixels.
            return self._normalize(images.astype(np.float32))
        if isinstance(images, np.ndarray) and images.ndim == 4 or isinstance(images, (list, tuple)):
            frames = list(images)
        else:
            frames = [images]
        if not frames:
            raise InvalidInputError("no frames to preprocess: the image list or video is empty.")
        out = np.empty((len(frames), self.crop_size, self.crop_size, 3), dtype=np.float32)
        for index, frame in enumerate(frames):
            image = to_pil_rgb(frame)
            if not is_video and self.image_aspect_ratio == "pad":
                image = expand_to_square(image, self.background)
            out[index] = self._resize_and_crop(image)
        return self._normalize(out)

    __call__ = preprocess

    def normalize(self, frames: np.ndarray) -> torch.Tensor:
        """Frames already resized and cropped, ``(T, crop, crop, 3)`` uint8 -> pixels ``(T, 3, crop, crop)``.

        Only scales and normalises, as :meth:`preprocess` does after its resize and crop: for frames the decoder
        resized itself (``llamavid ingest --fast-resize``).
        """
        frames = np.asarray(frames)
        expected = (self.crop_size, self.crop_size, 3)
        if frames.ndim != 4 or frames.shape[1:] != expected or frames.dtype != np.uint8:
            raise InvalidInputError(
                f"normalize needs uint8 frames of shape (T, {self.crop_size}, {self.crop_size}, 3) (already "
                f"resized and cropped), got {frames.dtype} {tuple(frames.shape)}."
            )
        if not len(frames):
            raise InvalidInputError("no frames to preprocess: the image list or video is empty.")
        return self._normalize(frames.astype(np.float32))

    def _normalize(self, out: np.ndarray) -> torch.Tensor:
        """``(T, S, S, 3)`` float32 in 0-255, overwritten in place -> ``(x / 255 - mean) / std`` as
        ``(T, 3, S, S)``: the same float32 operations in the same order as NumPy's, on torch's threads."""
        pixels = torch.from_numpy(out)
        pixels.mul_(np.float32(self.rescale_factor))
        pixels.sub_(torch.tensor(self.image_mean, dtype=torch.float32))
        pixels.div_(torch.tensor(self.image_std, dtype=torch.float32))
        return pixels.permute(0, 3, 1, 2).contiguous()

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": type(self).__name__,
            "size": self.size,
            "crop_size": self.crop_size,
            "image_aspect_ratio": self.image_aspect_ratio,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "resample": "bicubic",
        }

    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LlamaVidImageProcessor:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise MissingFileError(f"{path} not found: a llamavid model folder holds its {CONFIG_NAME}.")
        data = json.loads(path.read_text())
        size = data.get("size", 224)
        if isinstance(size, dict):  # a CLIP preprocessor_config.json: {"shortest_edge": 224}
            size = size.get("shortest_edge", 224)
        crop = data.get("crop_size", size)
        if isinstance(crop, dict):
            crop = crop.get("height", size)
        return cls(
            size=size,
            crop_size=crop,
            image_aspect_ratio=data.get("image_aspect_ratio", "pad"),
            image_mean=tuple(data.get("image_mean", CLIP_MEAN)),
            image_std=tuple(data.get("image_std", CLIP_STD)),
            rescale_factor=data.get("rescale_factor", 1 / 255),
        )


__all__ = ["LlamaVidImageProcessor", "CLIP_MEAN", "CLIP_STD", "expand_to_square"]
