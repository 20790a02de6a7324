"""Ingestion on a lent GPU: EVA frames/s in bf16, decode frames/s with and without CUDA decoding, file → cache.

One script for the one device run a task gets (docs/benchmarks.md, "Ingestion on a GPU"): it needs only this
repository plus torch and transformers (PyAV to generate and decode the test video, torchcodec for the decoding
rows; each row says why when its package is missing) and prints one JSON summary as its last line.

1. ``eva``: the vision tower at the released shapes (EVA ViT-g/14: 39 layers, width 1408, 224 px; random
   weights, `LlamaVidConfig`'s default vision config) in bfloat16: frames/s per batch size, and achieved
   TFLOP/s from the tower's FLOP count.
2. ``decode``: a generated 1080p H.264 clip (24 fps, keyframe every 2 s) sampled at 1 fps: llamavid's decoder
   (PyAV), llamavid's torchcodec backend (CPU), and torchcodec decoding on the GPU (``device="cuda"``).
3. ``ingest``: the same clip into a fresh feature cache through `FeatureCache.ingest` (the pipeline
   ``llamavid ingest`` runs) with the released-shape tower in bf16: wall time, frames/s per stage, the bound.

Run (on the GPU machine, from the repository root):
    PYTHONPATH=src python3 benchmarks/gpu_ingest.py [--minutes 5] [--out FILE]
Check it first on any CPU, in a few seconds, with tiny shapes:
    PYTHONPATH=src python3 benchmarks/gpu_ingest.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _environment() -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "av", "torchcodec", "PIL", "safetensors"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except Exception as error:  # reported, not fatal: the rows that need it say so
            versions[name] = f"missing ({type(error).__name__}: {str(error)[:120]})"
    versions["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    versions["cpus"] = os.cpu_count()
    return versions


TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=56,
    patch_size=14,
)


class _Core(torch.nn.Module):
    """Stand-in for ``LlamaVidModel``'s vision half where `llamavid.model` does not import (an older
    transformers): the same InstructBLIP embeddings and encoder blocks as ``LlamaVidVisionTower`` (no final
    norm), encoded `frame_chunk` frames at a time as ``get_vision_features`` does."""

    def __init__(self, vision: Any, frame_chunk: int = 64) -> None:
        from transformers.models.instructblip.modeling_instructblip import (
            InstructBlipEncoder,
            InstructBlipVisionEmbeddings,
        )

        super().__init__()
        vision._attn_implementation = "sdpa"
        self.vision_tower = torch.nn.Module()
        self.vision_tower.embeddings = InstructBlipVisionEmbeddings(vision)
        self.vision_tower.encoder = InstructBlipEncoder(vision)
        self.frame_chunk = frame_chunk

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = self.vision_tower
        weight = tower.embeddings.patch_embedding.weight
        parts = []
        for part in pixel_values.split(self.frame_chunk):
            hidden = tower.embeddings(part.to(device=weight.device, dtype=weight.dtype))
            parts.append(tower.encoder(inputs_embeds=hidden).last_hidden_state)
        return torch.cat(parts)


def build_tower_model(dry_run: bool, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any, str]:
    """``(core, vision config, processor, source)``: a random vision tower at the benchmark's shapes.

    Tiny shapes for a dry run, else the released EVA ViT-g/14 (`LlamaVidConfig`'s default vision config, which
    is InstructBLIP's). The tower comes from `llamavid.model` (with a tiny LLM beside it: ingestion uses only
    the tower) or, where that package does not import with the installed transformers, from the stand-in above.
    """
    torch.manual_seed(0)
    try:
        from llamavid.model import LlamaVidConfig, LlamaVidForConditionalGeneration
        from llamavid.testing import tiny_config_kwargs

        kwargs = tiny_config_kwargs()
        if not dry_run:
            kwargs.pop("vision_config")  # the default is the released tower
        config = LlamaVidConfig(**kwargs)
        with torch.device(device):
            model = LlamaVidForConditionalGeneration(config)
        core, vision, source = model.to(dtype).eval().model, config.vision, "llamavid.model"
    except ImportError as error:
        from transformers import InstructBlipVisionConfig

        vision = InstructBlipVisionConfig(**(TINY_VISION if dry_run else {}))
        with torch.device(device):
            core = _Core(vision)
        core, source = core.to(dtype).eval(), f"InstructBLIP blocks (llamavid.model: {error})"
    processor = argparse.Namespace(image_processor=_image_processor_class()(size=vision.image_size))
    return core, vision, processor, source


def _image_processor_class() -> Any:
    """`LlamaVidImageProcessor`, also where the `llamavid.model` package does not import (its module needs only
    numpy, torch and PIL, so it is loaded from its file then)."""
    try:
        from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor

        return LlamaVidImageProcessor
    except ImportError:
        import importlib.util

        import llamavid

        path = Path(llamavid.__file__).parent / "model" / "image_processing_llamavid.py"
        spec = importlib.util.spec_from_file_location("_llamavid_image_processing", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.LlamaVidImageProcessor


def tower_flops_per_frame(vision: Any) -> float:
    """Multiply-adds × 2 of one frame through the tower (linear layers and attention; norms ignored)."""
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    width, inner, layers = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers
    linear = tokens * (4 * width * width + 2 * width * inner)  # qkv + projection, MLP in and out
    attention = 2 * tokens * tokens * width  # scores and weighted sum
    patches = (tokens - 1) * 3 * vision.patch_size**2 * width
    return 2.0 * (layers * (linear + attention) + patches)


def bench_eva(core: Any, vision: Any, batch_sizes: list[int], iterations: int) -> dict[str, Any]:
    device = next(core.vision_tower.parameters()).device
    flops = tower_flops_per_frame(vision)
    rows = []
    for batch in batch_sizes:
        pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, device=device)
        with torch.no_grad():
            for _ in range(2):  # warm-up: kernels chosen, memory pooled
                core.get_vision_features(pixels)
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(iterations):
                core.get_vision_features(pixels)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        rate = batch * iterations / seconds
        rows.append(
            {
                "batch": batch,
                "frames_per_second": round(rate, 1),
                "tflops": round(rate * flops / 1e12, 1),
            }
        )
    return {
        "dtype": str(next(core.vision_tower.parameters()).dtype).removeprefix("torch."),
        "image_size": vision.image_size,
        "layers": vision.num_hidden_layers,
        "width": vision.hidden_size,
        "gflop_per_frame": round(flops / 1e9, 1),
        "rows": rows,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda"
        else None,
    }


def write_clip(path: Path, seconds: float, width: int, height: int, rate: int = 24) -> Path:
    """H.264 clip, a keyframe every 2 s; frames are shifted copies of one gradient, so making them is cheap."""
    import av

    base = np.add.outer(np.arange(height), np.arange(width) * 2)
    picture = np.stack([base % 256, (base // 3) % 256, (base // 7) % 256], axis=-1).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(2 * rate), "threads": "0"}
        for index in range(int(seconds * rate)):
            frame = av.VideoFrame.from_ndarray(np.roll(picture, 8 * index, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _row(name: str, run: Any) -> dict[str, Any]:
    """Run one measurement; a failure (a package missing there, no CUDA decoder) becomes the row's reason."""
    started = time.perf_counter()
    try:
        frames = run()
    except Exception as error:
        return {"path": name, "error": f"{type(error).__name__}: {str(error)[:300]}"}
    seconds = time.perf_counter() - started
    return {
        "path": name,
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 1),
    }


def bench_decode(clip: Path, duration: float) -> list[dict[str, Any]]:
    from llamavid.data.video import iter_video_frames

    def llamavid_decode(backend: str | None) -> int:
        return sum(len(chunk) for chunk in iter_video_frames(clip, fps=1.0, backend=backend))

    def torchcodec_decode(device: str) -> int:
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(str(clip), device=device, seek_mode="exact")
        seconds = [float(t) for t in np.arange(0.0, duration - 1e-6, 1.0)]
        count = 0
        for start in range(0, len(seconds), 64):
            batch = decoder.get_frames_played_at(seconds[start : start + 64])
            count += int(batch.data.shape[0])
        if device == "cuda":
            torch.cuda.synchronize()
        return count

    rows = [
        _row("llamavid decode_video (PyAV, CPU)", lambda: llamavid_decode(None)),
        _row("llamavid torchcodec backend (CPU)", lambda: llamavid_decode("torchcodec")),
    ]
    if torch.cuda.is_available():
        rows.append(_row("torchcodec on the GPU (device=cuda)", lambda: torchcodec_decode("cuda")))
    else:
        rows.append({"path": "torchcodec on the GPU (device=cuda)", "error": "no CUDA device"})
    return rows


def bench_ingest(clip: Path, core: Any, processor: Any, folder: Path, batch_size: int) -> dict[str, Any]:
    from llamavid.data.feature_cache import FeatureCache
    from llamavid.inference.media import FrameEncoder

    encoder = FrameEncoder(core, processor, encoder_id="gpu-bench")
    cache = FeatureCache(folder / "cache")
    started = time.perf_counter()
    report = cache.ingest(clip, encoder, fps=1.0, batch_size=batch_size)
    wall = time.perf_counter() - started
    assert report.stages is not None
    return {
        "frames": report.entry.num_frames,
        "wall_seconds": round(wall, 2),
        "frames_per_second": round(report.entry.num_frames / wall, 1),
        "pinned_memory": encoder.device.type == "cuda",
        "autocast": None if encoder.autocast_dtype is None else str(encoder.autocast_dtype),
        "stages": report.stages.to_dict(),
        "summary": report.stages.describe(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shapes and a short small clip, on any device"
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the generated 1080p clip")
    parser.add_argument("--iterations", type=int, default=5, help="timed EVA calls per batch size")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per encoder call when ingesting")
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" or not args.dry_run else torch.float32
    summary: dict[str, Any] = {"environment": _environment(), "dry_run": args.dry_run, "device": str(device)}
    if device.type != "cuda" and not args.dry_run:
        summary["error"] = "no CUDA device: run with --dry-run to check the script on a CPU"
        print(json.dumps(summary))
        return 2
    seconds = 8.0 if args.dry_run else args.minutes * 60
    width, height = (320, 180) if args.dry_run else (1920, 1080)
    batch_sizes = [4] if args.dry_run else [16, 64, 128]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        try:
            core, vision, processor, source = build_tower_model(args.dry_run, device, dtype)
            summary["eva"] = bench_eva(core, vision, batch_sizes, 2 if args.dry_run else args.iterations)
            summary["eva"]["tower"] = source
            print(f"eva: {json.dumps(summary['eva'])}", file=sys.stderr, flush=True)
            clip_started = time.perf_counter()
            clip = write_clip(Path(folder) / "clip.mp4", seconds, width, height)
            summary["clip"] = {
                "seconds": seconds,
                "size": f"{width}x{height}",
                "fps": 24,
                "gop_seconds": 2,
                "bytes": clip.stat().st_size,
                "generated_in_seconds": round(time.perf_counter() - clip_started, 1),
            }
            summary["decode"] = bench_decode(clip, seconds)
            print(f"decode: {json.dumps(summary['decode'])}", file=sys.stderr, flush=True)
            summary["ingest"] = bench_ingest(
                clip, core, processor, Path(folder), 4 if args.dry_run else args.batch_size
            )
        except Exception as error:  # the summary still comes out with what was measured
            summary["error"] = f"{type(error).__name__}: {error}"
            summary["traceback"] = traceback.format_exc()[-2000:]
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(summary)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 1 if "error" in summary else 0


if __name__ == "__main__":
    sys.exit(main())
