"""Shared fixtures: tiny seeded configs/models, an offline guard and CI-strict backend checks."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every command writes video features to the feature cache by default: keep the suite's out of ~/.cache.
os.environ.setdefault("LLAMAVID_CACHE", tempfile.mkdtemp(prefix="llamavid-test-cache-"))
torch.set_num_threads(min(2, torch.get_num_threads()))

from llamavid.assets import DEMO_TOKENIZER_DIR  # noqa: E402
from testing_utils import IN_CI, require_module  # noqa: E402,F401  (re-exported for fixtures)

# Offline guard ----------------------------------------------------------------------------------------------------
_real_connect = socket.socket.connect


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise RuntimeError(f"tests must stay offline: refused a connection to {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


# Tiny model -------------------------------------------------------------------------------------------------------
from tiny_helpers import build_tiny_model, tiny_config_kwargs  # noqa: E402


@pytest.fixture
def tiny_config():
    from llamavid import LlamaVidConfig

    return LlamaVidConfig(**tiny_config_kwargs())


@pytest.fixture
def tiny_model():
    return build_tiny_model()


@pytest.fixture(scope="session")
def llm_tokenizer():
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))


@pytest.fixture(scope="session")
def qformer_tokenizer():
    from llamavid.model.processing_llamavid import load_qformer_tokenizer

    return load_qformer_tokenizer()


@pytest.fixture
def tiny_processor(tiny_config, llm_tokenizer, qformer_tokenizer):
    from llamavid import LlamaVidProcessor

    return LlamaVidProcessor.from_config(tiny_config, llm_tokenizer, qformer_tokenizer)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Serving ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def serving_model_dir(tmp_path_factory):
    """A saved random tiny model folder, shared by the CLI, API, server and web UI tests (seconds to build)."""
    from tiny_helpers import save_serving_model

    return save_serving_model(tmp_path_factory.mktemp("serving-model"))


@pytest.fixture(scope="session")
def serving_engine(serving_model_dir):
    from llamavid.inference.engine import Engine

    return Engine.from_pretrained(serving_model_dir, device="cpu")


@pytest.fixture(scope="session")
def demo_video_path(tmp_path_factory):
    """A 4-second H.264 MP4 of a red square moving right (4 frames at 1 fps)."""
    from llamavid.demo import write_demo_video

    return write_demo_video(tmp_path_factory.mktemp("media") / "square.mp4", seconds=4)


# Accelerators -----------------------------------------------------------------------------------------------------
def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests run where CUDA or MPS exists (``make test-gpu``) and say why they skip elsewhere."""
    if _has_accelerator():
        return
    skip = pytest.mark.skip(reason="needs a CUDA or MPS device (run `make test-gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
