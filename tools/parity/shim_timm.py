"""Stand-in for the three `timm` helpers the official EVA file imports (parity venv only).

The official `eva_vit.py` imports `drop_path`, `to_2tuple`, `trunc_normal_` and `register_model` from timm; the
real timm pulls a torchvision that does not match the pinned CPU torch (``torchvision::nms does not exist``).
Parity runs in eval mode with drop-path 0, so identity/trivial versions are exact.
"""

from __future__ import annotations

import collections.abc
import importlib.machinery
import sys
import types

import torch


def to_2tuple(value):
    return tuple(value) if isinstance(value, collections.abc.Iterable) else (value, value)


def drop_path(x, drop_prob: float = 0.0, training: bool = False):
    return x


def register_model(fn):
    return fn


def install() -> None:
    names = ("timm", "timm.models", "timm.models.layers", "timm.models.registry")
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name.count(".") < 2)
        module.__path__ = []  # marks it as a package so submodule imports resolve through sys.modules
    modules["timm.models.layers"].to_2tuple = to_2tuple
    modules["timm.models.layers"].drop_path = drop_path
    modules["timm.models.layers"].trunc_normal_ = torch.nn.init.trunc_normal_
    modules["timm.models.registry"].register_model = register_model
    modules["timm"].models = modules["timm.models"]
    modules["timm.models"].layers = modules["timm.models.layers"]
    modules["timm.models"].registry = modules["timm.models.registry"]
    sys.modules.update(modules)
