"""Official long-video feature pickles: restricted unpickling and conversion to safetensors + JSON."""

from __future__ import annotations

import os
import pickle  # only to craft the files the restricted unpickler must refuse or read
from pathlib import Path

import numpy as np
import pytest
import torch

from llamavid.data.official_features import (
    UnsafePickleError,
    convert_feature_pickle,
    load_features,
    load_official_feature_pickle,
)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _official_pickle(path: Path, frames: int = 3, protocol: int = 4) -> np.ndarray:
    feats = np.random.RandomState(0).randn(frames, 5, 8).astype(np.float16)
    inputs = "".join(f"<image>line {i}..." for i in range(frames))
    path.write_bytes(pickle.dumps({"feats": feats, "inputs": inputs}, protocol=protocol))
    return feats


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_pickle_converts_to_safetensors_and_sidecar(tmp_path, protocol):
    feats = _official_pickle(tmp_path / "movie.pkl", protocol=protocol)
    tensor_path, sidecar_path = convert_feature_pickle(tmp_path / "movie.pkl", tmp_path / "out" / "movie")
    assert tensor_path.name == "movie.safetensors" and sidecar_path.name == "movie.json"
    loaded, sidecar = load_features(tmp_path / "out" / "movie")
    assert loaded.dtype == torch.float16
    torch.testing.assert_close(loaded, torch.from_numpy(feats), rtol=0, atol=0)
    assert sidecar["num_frames"] == 3 and sidecar["inputs"].count("<image>") == 3
    assert sidecar["source"] == "movie.pkl"


def test_numpy1_module_names_are_accepted(tmp_path):
    data = pickle.dumps({"feats": np.zeros((1, 2, 3), np.float16), "inputs": "<image>"}, protocol=2)
    # Files written under numpy 1.x name numpy.core.multiarray; rewrite the module name to simulate one.
    legacy = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert legacy != data
    (tmp_path / "old.pkl").write_bytes(legacy)
    feats, inputs = load_official_feature_pickle(tmp_path / "old.pkl")
    assert feats.shape == (1, 2, 3) and inputs == "<image>"


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"feats": _Exploit(marker), "inputs": "<image>"}))
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        load_official_feature_pickle(path)
    assert not marker.exists()


def test_frame_count_mismatch_is_refused(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"feats": np.zeros((2, 3, 4), np.float16), "inputs": "<image>only one"}))
    with pytest.raises(ValueError, match="1 <image> markers but 'feats' has 2 frames"):
        load_official_feature_pickle(path)
