"""``llamavid ingest --fast-resize``: the decoder's scaler resizes, under its own cache key (embedded tiny model)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import write_video  # noqa: E402

from llamavid.cli.main import main  # noqa: E402


def _console_script() -> list[str]:
    """The installed ``llamavid`` script next to this interpreter (the module when it is not installed)."""
    script = Path(sys.executable).parent / "llamavid"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llamavid.cli.main"]


def _blocks(index: int, width: int, height: int) -> np.ndarray:
    """Random 12-px colour blocks: any change of geometry (scale, offset, flip) changes most pixels."""
    rng = np.random.default_rng(index)
    blocks = rng.integers(0, 256, (height // 12 + 1, width // 12 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(blocks.repeat(12, axis=0).repeat(12, axis=1)[:height, :width])


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Not at the processor's size (shortest side 72 -> 56, then a 56-px crop of 74): the resize really happens.
    folder = tmp_path_factory.mktemp("fast_resize")
    return write_video(folder / "clip.mp4", rate=2, num_frames=8, size=(96, 72), picture=_blocks)


def test_fast_resize_end_to_end_own_key_close_features_and_ask_stays_faithful(
    tmp_path: Path, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llamavid.data.feature_cache import FeatureCache

    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    fast = subprocess.run(
        [*_console_script(), "ingest", str(clip), "--fast-resize", "--cache-dir", str(cache), "--json", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert fast.returncode == 0, fast.stderr
    fast_report = json.loads(fast.stdout)
    assert fast_report["fast_resize"] is True and fast_report["frames"] == 4 and not fast_report["cache_hit"]

    assert main(["ingest", str(clip), "--cache-dir", str(cache), "--json", "-q"]) == 0
    faithful_report = json.loads(capsys.readouterr().out)
    assert faithful_report["fast_resize"] is False and not faithful_report["cache_hit"]  # not the fast entry
    assert faithful_report["digest"] != fast_report["digest"]

    store = FeatureCache(cache)
    fast_entry, faithful_entry = store.open(fast_report["digest"]), store.open(faithful_report["digest"])
    assert fast_entry.meta["key"]["preprocessing_id"] != faithful_entry.meta["key"]["preprocessing_id"]
    np.testing.assert_array_equal(fast_entry.timestamps, faithful_entry.timestamps)
    a = faithful_entry.load_features().float()
    b = fast_entry.load_features().float()
    assert a.shape == b.shape
    # Tolerance: the filters differ (same geometry), which the tiny tower amplifies at the blocks' edges:
    # measured mean |Δ| 13 % of the features' spread; a 10 % zoom (wrong geometry) gives 39 %.
    spread = a.std().item()
    assert (a - b).abs().mean().item() < 0.2 * spread, ((a - b).abs().mean().item(), spread)
    assert not np.array_equal(a.numpy(), b.numpy())  # the fast path really ran

    # `ask` (faithful, no flag) reads the faithful entry, never the fast one.
    ask = ["ask", str(clip), "what?", "--cache-dir", str(cache), "--json", "-q", "--max-new-tokens", "1"]
    assert main(ask) == 0
    assert json.loads(capsys.readouterr().out)["feature_cache"] == faithful_report["digest"]


def test_default_preprocessing_id_is_unchanged_and_normalize_only_normalises() -> None:
    from llamavid.data.feature_cache import PREPROCESSING_VERSION, preprocessing_id
    from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor

    processor = LlamaVidImageProcessor(size=32, crop_size=24)
    # Entries written before the option existed keep their key.
    before = json.dumps({"processor": processor.to_dict(), "version": PREPROCESSING_VERSION}, sort_keys=True)
    assert preprocessing_id(processor) == hashlib.sha256(before.encode()).hexdigest()
    assert preprocessing_id(processor, fast_resize=True) != preprocessing_id(processor)

    frames = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    pixels = processor.normalize(frames)
    expected = (frames / np.float32(255) - np.float32(processor.image_mean)) / np.float32(processor.image_std)
    np.testing.assert_allclose(pixels.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(T, 24, 24, 3\)"):
        processor.normalize(np.zeros((2, 32, 32, 3), np.uint8))  # not cropped: refused, not resized


def test_fast_resize_help_and_manifest_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--fast-resize" in help_text and "docs/benchmarks.md" in help_text and "0.018" in help_text
    manifest = tmp_path / "videos.txt"
    manifest.write_text("a.mp4\n")
    assert main(["ingest", "--manifest", str(manifest), "--fast-resize", "--cache-dir", str(tmp_path)]) == 2
    assert "--fast-resize" in capsys.readouterr().err
