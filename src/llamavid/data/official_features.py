"""Read the official long-video feature pickles safely and convert them to safetensors + JSON.

The official release ships precomputed EVA features for movies as Python pickles (docs/architecture.md §4, §11): a dict with
``feats`` (float16 numpy array ``(T, 257, 1408)``, CLS first) and ``inputs`` (the ``"<image>sub_0<image>sub_1…"``
string). A plain ``pickle.load`` of a downloaded file can run arbitrary code, so `RestrictedFeatureUnpickler`
resolves only the handful of globals a numpy array needs and refuses everything else.

Converted form (one pair of files per video, same stem):

- ``<stem>.safetensors``: tensor ``feats`` ``(T, 1+N, C)`` as stored (float16), metadata ``{"format": "pt"}``.
- ``<stem>.json``: ``{"format": "llamavid-official-features", "version": 1, "inputs": str, "num_frames": T,
  "num_tokens": 1+N, "width": C, "source": original file name}``.

`load_features` reads the pair back and checks that the frame counts agree.
"""

from __future__ import annotations

import json
import os
import pickle  # only for the restricted unpickler below: find_class admits numpy array globals, nothing else
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamavid.errors import InvalidInputError, LlamaVidError, MissingFileError

FORMAT_NAME = "llamavid-official-features"
FORMAT_VERSION = 1


class UnsafePickleError(LlamaVidError, ValueError):
    """A pickle asked for a Python global outside the allow-list (it could run code when loaded)."""


def _numpy_core() -> Any:
    try:
        from numpy import _core as core  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy import core  # type: ignore[no-redef]
    return core


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(text, "latin1")``; accept that codec only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(
            f"refused _codecs.encode with encoding {encoding!r}; only latin1 bytes are expected."
        )
    return text.encode("latin1")


_CORE = _numpy_core()
# (module, name) -> object. Files written under numpy 1.x name `numpy.core`, under 2.x `numpy._core`.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_module, "_reconstruct")] = _CORE.multiarray._reconstruct
    _ALLOWED_GLOBALS[(_module, "scalar")] = _CORE.multiarray.scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_module, "_frombuffer")] = _CORE.numeric._frombuffer


class RestrictedFeatureUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, numbers, strings, bytes, lists, tuples and dicts.

    Numbers, strings and containers need no globals; numpy arrays need ``_reconstruct``/``ndarray``/``dtype``
    (or ``_frombuffer`` for protocol-5 files), allowed under both the numpy 1 and numpy 2 module names, and
    protocol-2 files spell raw bytes as ``_codecs.encode(text, "latin1")`` (only that codec passes). Any other
    global (``os.system``, ``builtins.eval``, torch storages, ...) raises `UnsafePickleError` before it is
    called.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to unpickle global {module}.{name}: official feature files hold only numpy arrays and "
                "strings; this file may run code when loaded. Do not use it."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            "refused a persistent id in a feature pickle; expected numpy arrays and strings only."
        )


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle `path` with `RestrictedFeatureUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found; pass an official long-video feature file (.pkl).")
    with open(path, "rb") as handle:
        return RestrictedFeatureUnpickler(handle).load()


def load_official_feature_pickle(path: str | os.PathLike) -> tuple[torch.Tensor, str]:
    """Return ``(feats (T, 1+N, C) float16, inputs str)`` from an official ``.pkl`` without running its code.

    Raises:
        UnsafePickleError: the file needs globals other than numpy arrays.
        ValueError: the content is not ``{"feats": float array (T, tokens, C), "inputs": str}`` or the number of
            ``<image>`` markers in ``inputs`` differs from T.
    """
    data = restricted_load(path)
    if not isinstance(data, dict) or "feats" not in data or "inputs" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InvalidInputError(f"{path}: expected a dict with 'feats' and 'inputs', found {found}.")
    feats, inputs = data["feats"], data["inputs"]
    if not isinstance(feats, np.ndarray) or feats.ndim != 3 or feats.dtype.kind != "f":
        raise InvalidInputError(
            f"{path}: 'feats' must be a float array (frames, tokens, width), got "
            f"{type(feats).__name__} {getattr(feats, 'shape', '')} {getattr(feats, 'dtype', '')}."
        )
    if not isinstance(inputs, str):
        raise InvalidInputError(f"{path}: 'inputs' must be a string, got {type(inputs).__name__}.")
    markers = inputs.count("<image>")
    if markers != feats.shape[0]:
        raise InvalidInputError(
            f"{path}: 'inputs' has {markers} <image> markers but 'feats' has {feats.shape[0]} frames; the file is "
            "damaged or not an official feature file."
        )
    return torch.from_numpy(np.ascontiguousarray(feats)), inputs


def save_features(
    features: torch.Tensor, inputs: str, stem: str | os.PathLike, source: str = ""
) -> tuple[Path, Path]:
    """Write the documented pair ``<stem>.safetensors`` (``feats``) + ``<stem>.json`` (``inputs``, counts)."""
    from safetensors.torch import save_file

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensor_path, sidecar_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    save_file({"feats": features.contiguous()}, str(tensor_path), metadata={"format": "pt"})
    sidecar = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "inputs": inputs,
        "num_frames": int(features.shape[0]),
        "num_tokens": int(features.shape[1]),
        "width": int(features.shape[2]),
        "source": source,
    }
    sidecar_path.write_text(json.dumps(sidecar, ensure_ascii=False, indent=2) + "\n")
    return tensor_path, sidecar_path


def load_features(stem: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a pair written by `save_features`: ``(feats (T, 1+N, C), sidecar dict)``.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: the sidecar is of another format or its frame count disagrees with the tensor.
    """
    from safetensors.torch import load_file

    stem = Path(stem)
    tensor_path, sidecar_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for path in (tensor_path, sidecar_path):
        if not path.is_file():
            raise MissingFileError(f"{path} not found; convert the .pkl with `llamavid convert-features`.")
    sidecar = json.loads(sidecar_path.read_text())
    if sidecar.get("format") != FORMAT_NAME:
        raise InvalidInputError(
            f"{sidecar_path}: format {sidecar.get('format')!r}, expected {FORMAT_NAME!r}."
        )
    feats = load_file(str(tensor_path))["feats"]
    if feats.shape[0] != sidecar["num_frames"]:
        raise InvalidInputError(
            f"{tensor_path} has {feats.shape[0]} frames but {sidecar_path} says {sidecar['num_frames']}; re-convert."
        )
    return feats, sidecar


def convert_feature_pickle(
    pkl_path: str | os.PathLike, output_stem: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Convert one official ``.pkl`` to the safetensors + JSON pair (default stem: next to the input)."""
    pkl_path = Path(pkl_path)
    feats, inputs = load_official_feature_pickle(pkl_path)
    return save_features(feats, inputs, output_stem or pkl_path.with_suffix(""), source=pkl_path.name)


__all__ = [
    "RestrictedFeatureUnpickler",
    "UnsafePickleError",
    "convert_feature_pickle",
    "load_features",
    "load_official_feature_pickle",
    "restricted_load",
    "save_features",
]
